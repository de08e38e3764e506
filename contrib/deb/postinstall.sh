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
# The key store: brought up to date when it exists (an upgrade, or a new
# installation over the store an earlier one left: removing, even purging,
# the package keeps /var/lib/lacre and so users' keys), created only when
# it does not ("store migrate" never creates one, so that a store deleted
# by accident is noticed instead of replaced by an empty one). Run as
# root, "store init" gives the new file the owner of /var/lib/lacre.
# debconf/dpkg call postinst with "configure" and the old version, if any.
if [ "${1:-}" = configure ]; then
	if out=$(lacre-milter -config /etc/lacre/lacre.toml store migrate 2>&1); then
		echo "$out"
	elif [ -z "${2:-}" ] && ! [ -e /var/lib/lacre/lacre.db ]; then
		lacre-milter -config /etc/lacre/lacre.toml store init
	else
		echo "$out" >&2
		echo "lacre-milter: the key store was not migrated; see above, then run: lacre-milter store migrate" >&2
	fi
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	systemctl enable --now lacre-milter.service || true
fi
