#!/bin/sh
# Create the dedicated system user (never "nobody": no other service's
# files are its files) and the state directory, then enable the milter.
set -e
if ! getent group lacre >/dev/null; then
	addgroup --system lacre
fi
if ! getent passwd lacre >/dev/null; then
	adduser --system --ingroup lacre --home /var/lib/lacre --no-create-home \
		--shell /usr/sbin/nologin --gecos "Lacre OpenPGP milter" lacre
fi
install -d -o lacre -g lacre -m 0750 /var/lib/lacre
chown root:lacre /etc/lacre /etc/lacre/lacre.toml
chmod 0750 /etc/lacre
chmod 0640 /etc/lacre/lacre.toml
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	systemctl enable --now lacre-milter.service || true
fi
