#!/bin/bash
# Makes the cluster in the volume on first start, runs PostgreSQL, and does
# what docs/operations.md asks of the database administrator: the roles
# lacre_owner (tables), lacre_milter (read-only, the MX hosts) and
# lacre_web (read-write, the registration service and the CLI), the
# database, and, once the pg-init service has run "lacre-milter store
# init" as lacre_owner, the grants on its tables. Healthy (the health check)
# when the grants are in place. DEMO ONLY: the passwords come from the
# environment, no TLS.
set -euo pipefail

data=/var/lib/lacre-pg/data
port="${LACRE_PG_PORT:-5432}"
bind="${LACRE_BIND:-0.0.0.0}"                  # 127.0.0.1 with host networking
listen="$bind"
[ "$bind" != 0.0.0.0 ] || listen='*'
ready=/var/run/postgresql/lacre-demo-ready
rm -f "$ready"

if [ ! -s "$data/PG_VERSION" ]; then
	# Local (socket) logins only as the postgres user itself; over TCP a
	# password (SCRAM) from any address (the bridge network's too).
	initdb -D "$data" -U postgres --encoding=UTF8 --no-locale \
		--auth-local=peer --auth-host=scram-sha-256 >/dev/null
	echo "host all all all scram-sha-256" >>"$data/pg_hba.conf"
fi

sql() { psql -X -q -h /var/run/postgresql -p "$port" -U postgres -v ON_ERROR_STOP=1 "$@"; }

# First the roles and the database, with PostgreSQL on its socket only, so
# that nobody logs in over TCP before the roles have their passwords.
pg_ctl -D "$data" -w -t 60 -l /dev/stderr \
	-o "-c listen_addresses='' -c port=$port -c unix_socket_directories=/var/run/postgresql" start >/dev/null
sql -d postgres \
	-v owner_pw="${LACRE_PG_OWNER_PASSWORD:?}" \
	-v milter_pw="${LACRE_PG_MILTER_PASSWORD:?}" \
	-v web_pw="${LACRE_PG_WEB_PASSWORD:?}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', r)
  FROM unnest(ARRAY['lacre_owner', 'lacre_milter', 'lacre_web']) AS r
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec
ALTER ROLE lacre_owner PASSWORD :'owner_pw';
ALTER ROLE lacre_milter PASSWORD :'milter_pw';
ALTER ROLE lacre_web PASSWORD :'web_pw';
SELECT 'CREATE DATABASE lacre OWNER lacre_owner ENCODING ''UTF8'''
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'lacre') \gexec
REVOKE ALL ON DATABASE lacre FROM PUBLIC;
GRANT CONNECT ON DATABASE lacre TO lacre_milter, lacre_web;
SQL
pg_ctl -D "$data" -w -t 60 -m fast stop >/dev/null

postgres -D "$data" -c listen_addresses="$listen" -c port="$port" \
	-c unix_socket_directories=/var/run/postgresql &
pid=$!
# docker stop: a fast shutdown (roll back open transactions, no waiting
# for clients).
trap 'kill -INT "$pid" 2>/dev/null' TERM INT
for _ in $(seq 120); do
	sql -d postgres -c 'SELECT 1' >/dev/null 2>&1 && break
	kill -0 "$pid" 2>/dev/null || exit 1
	sleep 0.5
done
echo "postgres: roles and database lacre ready; waiting for \"store init\" (the pg-init service)"

# The grants of docs/operations.md, once "store init" made the tables.
tables="SELECT count(to_regclass('public.' || t)) FROM unnest(ARRAY['keys', 'bindings', 'prefs', 'requests', 'schema_version']) AS t"
until [ "$(sql -d lacre -tA -c "$tables" 2>/dev/null)" = 5 ] && sql -d lacre >/dev/null <<'SQL'
GRANT USAGE ON SCHEMA public TO lacre_milter, lacre_web;
GRANT SELECT ON keys, bindings, prefs, schema_version TO lacre_milter;
GRANT SELECT, INSERT, UPDATE, DELETE ON keys, bindings, prefs, requests TO lacre_web;
GRANT SELECT ON schema_version TO lacre_web;
SQL
do
	kill -0 "$pid" 2>/dev/null || exit 1
	sleep 0.5
done
touch "$ready"
echo "postgres: lacre key store ready (tables granted to lacre_milter and lacre_web)"

# Until PostgreSQL ends (wait returns early when the trap runs).
rc=0
wait "$pid" || rc=$?
kill -0 "$pid" 2>/dev/null && { wait "$pid" || rc=$?; }
exit "$rc"
