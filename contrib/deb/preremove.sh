#!/bin/sh
# Stop the services before their files go. The key store in /var/lib/lacre
# and the user stay: removing a package must not lose users' keys.
set -e
if [ -d /run/systemd/system ]; then
	systemctl disable --now lacre-milter.service lacre-web.service || true
fi
