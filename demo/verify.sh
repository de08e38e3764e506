#!/usr/bin/env bash
# demo/verify.sh — checks the demo stack end to end, without an image
# registry: it makes a Debian base image with debootstrap and docker import
# and a Go image from the host's Go, builds the demo's images from the
# same docker-compose.yml a newcomer uses, starts it with host networking
# (docker-compose.hostnet.yml) and plays the newcomer's scenario:
#
#   register a fresh key for alice@example.org through the web form,
#   read the confirmation mail over IMAP, decrypt it, follow its link and
#   press the button; send a mail to alice with swaks and check over IMAP
#   that it arrived as PGP/MIME and decrypts to exactly what was sent;
#   send one to bob (no key) and check it arrived in clear.
#
# and, with the profile "pg" (LACRE_DEMO_PG=0 leaves it out), the
# several-hosts setup: PostgreSQL, two MX hosts each with its own milter,
# and a registration service, on one shared key store:
#
#   register a fresh key for carol@example.org through that service; send
#   carol a mail through MX 1 and one through MX 2 before confirming
#   (both arrive in clear, and both milters now hold "no key" in their
#   one-hour cache); confirm, and half a second later send through both
#   at once: both arrive encrypted and decrypt to what was sent (the
#   change was pushed to both milters: LISTEN/NOTIFY); remove the key with
#   the CLI, and half a second later mail through both arrives in clear.
#
# Runs as root on Debian 12 with no stdin (CI); installs what it needs
# (docker.io, docker-compose, debootstrap, swaks, curl, gnupg) if missing.
# Uses the Docker engine at $DOCKER_HOST (or the default socket) if one
# answers, else starts its own dockerd (no bridge, no iptables) and stops
# it at the end. Every wait has a time limit; the stack is removed on exit.
#
# Environment (all optional):
#   LACRE_SMTP_PORT=12525 LACRE_IMAP_PORT=11143 LACRE_WEB_PORT=18080
#   LACRE_MILTER_PORT=18891 LACRE_METRICS_PORT=19191 LACRE_LMTP_PORT=12424
#   LACRE_PG_WEB_PORT=18081 LACRE_MX1_SMTP_PORT=12526 LACRE_MX2_SMTP_PORT=12527
#   LACRE_MX1_MILTER_PORT=18892 LACRE_MX1_METRICS_PORT=19192
#   LACRE_MX2_MILTER_PORT=18893 LACRE_MX2_METRICS_PORT=19193
#   LACRE_PG_PORT=15432
#                              ports on 127.0.0.1; they must be free
#   LACRE_DEMO_PG=0            leave out the profile "pg"
#   LACRE_DEMO_BASE=lacre-demo/base:bookworm   base image: made from
#                              lacre-demo/rootfs:bookworm (debootstrap) and
#                              the host's /usr/local/share/ca-certificates
#   LACRE_DEMO_GO_IMAGE=lacre-demo/go:local    Go image: the base plus the
#                              host's Go; remade when either changes
#   LACRE_DEMO_MIRROR=http://deb.debian.org/debian   for debootstrap
#   LACRE_DEMO_REBUILD=1       run debootstrap again
#   LACRE_DEMO_KEEP=1          leave the stack running after the run
#   LACRE_DEMO_NETWORK=bridge  run the stack as "docker compose up" does
#                              (docker-compose.override.yml: a bridge
#                              network, ports published on 127.0.0.1)
#                              instead of with host networking; the images
#                              are built with host networking either way
set -euo pipefail
cd "$(dirname "$0")"
export PATH="/usr/local/go/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

export LACRE_SMTP_PORT="${LACRE_SMTP_PORT:-12525}"
export LACRE_IMAP_PORT="${LACRE_IMAP_PORT:-11143}"
export LACRE_WEB_PORT="${LACRE_WEB_PORT:-18080}"
export LACRE_MILTER_PORT="${LACRE_MILTER_PORT:-18891}"
export LACRE_METRICS_PORT="${LACRE_METRICS_PORT:-19191}"
export LACRE_LMTP_PORT="${LACRE_LMTP_PORT:-12424}"
export LACRE_PG_WEB_PORT="${LACRE_PG_WEB_PORT:-18081}"
export LACRE_MX1_SMTP_PORT="${LACRE_MX1_SMTP_PORT:-12526}"
export LACRE_MX2_SMTP_PORT="${LACRE_MX2_SMTP_PORT:-12527}"
export LACRE_MX1_MILTER_PORT="${LACRE_MX1_MILTER_PORT:-18892}"
export LACRE_MX1_METRICS_PORT="${LACRE_MX1_METRICS_PORT:-19192}"
export LACRE_MX2_MILTER_PORT="${LACRE_MX2_MILTER_PORT:-18893}"
export LACRE_MX2_METRICS_PORT="${LACRE_MX2_METRICS_PORT:-19193}"
export LACRE_PG_PORT="${LACRE_PG_PORT:-15432}"
PG=1
[ "${LACRE_DEMO_PG:-1}" != 0 ] || PG=""
export LACRE_DEMO_BASE="${LACRE_DEMO_BASE:-lacre-demo/base:bookworm}"
export LACRE_DEMO_GO_IMAGE="${LACRE_DEMO_GO_IMAGE:-lacre-demo/go:local}"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-lacre-demo-verify}"
# The web service's links must point where this script reaches it.
export LACRE_WEB_URL="http://localhost:${LACRE_WEB_PORT}"
export LACRE_PG_WEB_URL="http://localhost:${LACRE_PG_WEB_PORT}"
MIRROR="${LACRE_DEMO_MIRROR:-http://deb.debian.org/debian}"

WEB="http://localhost:${LACRE_WEB_PORT}"
PG_WEB="$LACRE_PG_WEB_URL"
IMAP="imap://127.0.0.1:${LACRE_IMAP_PORT}"

T0=$(date +%s)
TMP=$(mktemp -d /tmp/lacre-demo-verify.XXXXXX)
export GNUPGHOME="$TMP/gnupg"
STEP="start"
DOCKERD_PID=""
STACK_UP=""       # compose may have made containers: remove them at exit
STACK_STARTED=""  # "up" ran: show the logs if the run fails
COMPOSE=()
TIMINGS=()
CHECKS=()

say() { printf '\n== %s\n' "$*"; STEP="$*"; }
info() { printf '   %s\n' "$*"; }
die() { printf '   FAIL: %s\n' "$*" >&2; exit 1; }
pass() { CHECKS+=("PASS  $*"); printf '   ok: %s\n' "$*"; }
phase_start() { PHASE_T=$(date +%s); }
phase_end() { TIMINGS+=("$(printf '%-28s %4ss' "$1" $(( $(date +%s) - PHASE_T )))"); }

# compose SECONDS ARGS...: docker compose on both files, with a time limit.
# The stack runs with docker-compose.hostnet.yml (host networking) or, with
# LACRE_DEMO_NETWORK=bridge, docker-compose.override.yml (what "docker
# compose up" reads); images are built with host networking.
case "${LACRE_DEMO_NETWORK:-host}" in
	host) RUN_FILES=(-f docker-compose.yml -f docker-compose.hostnet.yml) ;;
	bridge) RUN_FILES=(-f docker-compose.yml -f docker-compose.override.yml) ;;
	*) echo "LACRE_DEMO_NETWORK must be host or bridge" >&2; exit 2 ;;
esac
BUILD_FILES=(-f docker-compose.yml -f docker-compose.hostnet.yml)
if [ -n "$PG" ]; then
	RUN_FILES+=(--profile pg)
	BUILD_FILES+=(--profile pg)
fi
compose() { local t=$1; shift; timeout "$t" "${COMPOSE[@]}" "${RUN_FILES[@]}" "$@"; }

cleanup() {
	local rc=$?
	set +e
	if [ "$rc" != 0 ] && [ -n "$STACK_STARTED" ]; then
		printf '\n== logs of the stack (last 40 lines per service)\n'
		compose 60 logs --no-color --tail 40 2>&1
	fi
	if [ -n "$STACK_UP" ] && [ -z "${LACRE_DEMO_KEEP:-}" ]; then
		compose 120 down -v --remove-orphans >/dev/null 2>&1
	fi
	if [ -n "$DOCKERD_PID" ]; then
		if [ -n "${LACRE_DEMO_KEEP:-}" ]; then
			printf '   the dockerd this script started keeps running (pid %s, DOCKER_HOST=%s)\n' "$DOCKERD_PID" "$DOCKER_HOST"
		else
			kill "$DOCKERD_PID" 2>/dev/null
			for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
			# dockerd leaves its network namespace mounted.
			for m in /run/lacre-demo-docker/netns/*; do
				mountpoint -q "$m" && umount "$m"
			done
		fi
	fi
	for h in "$GNUPGHOME" "$TMP/gnupg-pg"; do
		[ -d "$h" ] && GNUPGHOME="$h" gpgconf --kill gpg-agent >/dev/null 2>&1
	done
	rm -rf "$TMP"
	printf '\n== summary\n'
	for c in "${CHECKS[@]}"; do printf '   %s\n' "$c"; done
	for t in "${TIMINGS[@]}"; do printf '   time: %s\n' "$t"; done
	printf '   time: %-28s %4ss\n' "total" $(( $(date +%s) - T0 ))
	if [ "$rc" = 0 ]; then
		printf '\nPASS: the demo stack works end to end\n'
	else
		printf '\nFAIL: at step "%s" (exit %s)\n' "$STEP" "$rc"
	fi
	exit "$rc"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
say "tools"
phase_start
engine_ok() { timeout 20 docker info >/dev/null 2>&1; }
missing=()
command -v timeout >/dev/null || missing+=(coreutils)
command -v curl >/dev/null || missing+=(curl)
command -v gpg >/dev/null || missing+=(gnupg)
command -v swaks >/dev/null || missing+=(swaks)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v docker >/dev/null || missing+=(docker.io)
if ! command -v docker >/dev/null || ! docker compose version >/dev/null 2>&1; then
	command -v docker-compose >/dev/null || missing+=(docker-compose)
fi
if ! engine_ok && ! command -v dockerd >/dev/null; then
	missing+=(docker.io)
fi
if [ "${#missing[@]}" -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing ${missing[*]}; run as root or install them"
	info "installing ${missing[*]}"
	timeout 300 apt-get update -qq
	timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if docker compose version >/dev/null 2>&1; then
	COMPOSE=(docker compose)
else
	COMPOSE=(docker-compose)
fi
info "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version 2>/dev/null | head -n 1))"
phase_end "tools"

# ---------------------------------------------------------------------------
say "docker engine"
phase_start
if engine_ok; then
	info "using the engine at ${DOCKER_HOST:-the default socket}"
else
	[ "$(id -u)" = 0 ] || die "no Docker engine answers at ${DOCKER_HOST:-the default socket}, and starting one needs root"
	own=/run/lacre-demo-docker
	export DOCKER_HOST="unix://$own.sock"
	info "no engine answers; starting dockerd at $DOCKER_HOST (log: $own.log)"
	mkdir -p "$own"
	# No bridge and no iptables: the containers use host networking.
	dockerd --host "$DOCKER_HOST" --data-root /var/lib/lacre-demo-docker --exec-root "$own" \
		--pidfile "$own.pid" --iptables=false --ip6tables=false --bridge=none \
		</dev/null >"$own.log" 2>&1 &
	DOCKERD_PID=$!
	for _ in $(seq 60); do
		engine_ok && break
		kill -0 "$DOCKERD_PID" 2>/dev/null || die "dockerd exited; see $own.log"
		sleep 1
	done
	engine_ok || die "dockerd did not answer within 60 s; see $own.log"
fi
info "$(docker version --format 'engine {{.Server.Version}}, API {{.Server.APIVersion}}')"
phase_end "docker engine"

# ---------------------------------------------------------------------------
say "base images (no registry)"
phase_start
image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
image_label() { docker image inspect --format "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true; }
# build_stdin IMAGE TAR-ARGS...: docker build with the context (a Dockerfile
# and what it copies) sent as a tar made with TAR-ARGS; no network needed.
build_stdin() {
	local image=$1; shift
	tar -c "$@" | DOCKER_BUILDKIT=0 timeout 600 docker build --network none -q -t "$image" - >"$TMP/build.log" 2>&1 ||
		{ cat "$TMP/build.log"; die "could not make $image"; }
}
ROOTFS=lacre-demo/rootfs:bookworm
if [ "$LACRE_DEMO_BASE" = lacre-demo/base:bookworm ]; then
	# 1. Debian 12 minbase, imported: the equivalent of debian:bookworm-slim.
	# The recipe's version: changing what follows must change it.
	recipe=2
	if [ -n "${LACRE_DEMO_REBUILD:-}" ] || [ "$(image_label "$ROOTFS" org.lacre.demo.recipe)" != "$recipe" ]; then
		[ "$(id -u)" = 0 ] || die "making the base image with debootstrap needs root"
		root="$TMP/rootfs"
		info "debootstrap --variant=minbase bookworm from $MIRROR"
		timeout 900 debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$MIRROR" >"$TMP/debootstrap.log" 2>&1 ||
			{ tail -n 20 "$TMP/debootstrap.log"; die "debootstrap failed"; }
		# Like the debian:bookworm-slim image: updates and security too.
		cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
		# Slim like debian:bookworm-slim: no documentation, manuals or
		# translations, no apt caches (what Debian's image build does).
		cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<EOF
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
EOF
		cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
		find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
		find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
		rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/groff/* \
			"$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
		tar -C "$root" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . |
			docker import --change 'CMD ["bash"]' --change "LABEL org.lacre.demo.recipe=$recipe" - "$ROOTFS" >/dev/null
		rm -rf "$root"
		info "made $ROOTFS"
	else
		info "$ROOTFS exists"
	fi
	# 2. Plus this machine's own CA certificates (/usr/local/share/ca-certificates),
	# so that builds behind a TLS-inspecting proxy reach the Go module proxy.
	mkdir -p "$TMP/basectx/cas"
	cp /usr/local/share/ca-certificates/*.crt "$TMP/basectx/cas/" 2>/dev/null || true
	cas=$(cat "$TMP"/basectx/cas/*.crt 2>/dev/null | sha256sum | cut -c1-16)
	from=$(image_id "$ROOTFS")
	if [ "$(image_label "$LACRE_DEMO_BASE" org.lacre.demo.from)" != "$from" ] || [ "$(image_label "$LACRE_DEMO_BASE" org.lacre.demo.cas)" != "$cas" ]; then
		info "making $LACRE_DEMO_BASE ($(find "$TMP/basectx/cas" -name '*.crt' | wc -l) local CA certificates)"
		cat >"$TMP/basectx/Dockerfile" <<EOF
FROM $ROOTFS
COPY cas/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
LABEL org.lacre.demo.from=$from org.lacre.demo.cas=$cas
EOF
		build_stdin "$LACRE_DEMO_BASE" -C "$TMP/basectx" .
	else
		info "$LACRE_DEMO_BASE is up to date"
	fi
elif [ -z "$(image_id "$LACRE_DEMO_BASE")" ]; then
	info "$LACRE_DEMO_BASE is not here: the build pulls it"
fi
if [ "$LACRE_DEMO_GO_IMAGE" = lacre-demo/go:local ]; then
	# 3. The base plus the host's Go tree: the equivalent of golang:1.26-bookworm.
	command -v go >/dev/null || die "no Go on this machine to make $LACRE_DEMO_GO_IMAGE; set LACRE_DEMO_GO_IMAGE to an image with Go 1.26"
	gover=$(go env GOVERSION)
	goroot=$(go env GOROOT)
	from=$(image_id "$LACRE_DEMO_BASE")
	if [ "$(image_label "$LACRE_DEMO_GO_IMAGE" org.lacre.demo.go)" != "$gover" ] || [ "$(image_label "$LACRE_DEMO_GO_IMAGE" org.lacre.demo.from)" != "$from" ]; then
		info "making $LACRE_DEMO_GO_IMAGE from $LACRE_DEMO_BASE and $goroot ($gover)"
		mkdir -p "$TMP/goctx"
		cat >"$TMP/goctx/Dockerfile" <<EOF
FROM $LACRE_DEMO_BASE
COPY go /usr/local/go
ENV PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin GOTOOLCHAIN=local
LABEL org.lacre.demo.go=$gover org.lacre.demo.from=$from
EOF
		build_stdin "$LACRE_DEMO_GO_IMAGE" -C "$TMP/goctx" Dockerfile \
			-C "$(dirname "$goroot")" --transform "s,^$(basename "$goroot"),go," "$(basename "$goroot")"
	else
		info "$LACRE_DEMO_GO_IMAGE is up to date ($gover)"
	fi
fi
phase_end "base images"

# ---------------------------------------------------------------------------
say "build the demo images (docker-compose.yml + docker-compose.hostnet.yml)"
phase_start
# web has the same build as milter (one image, lacre-demo/lacre), so
# building it again would only redo milter's work; "up" uses the image.
# (docker-compose 1.29 would keep the container of a failed step.)
build_opts=()
[ "${COMPOSE[0]}" != docker-compose ] || build_opts=(--force-rm)
# The "pg" profile's services use these images too, plus lacre-demo/postgres.
build_svcs=(dovecot milter postfix)
[ -z "$PG" ] || build_svcs+=(postgres)
info "building lacre-demo/dovecot, lacre-demo/lacre, lacre-demo/postfix${PG:+, lacre-demo/postgres}"
timeout 1800 "${COMPOSE[@]}" "${BUILD_FILES[@]}" build "${build_opts[@]}" "${build_svcs[@]}" >"$TMP/compose-build.log" 2>&1 ||
	{ tail -n 60 "$TMP/compose-build.log"; die "the build failed"; }
phase_end "build"

# ---------------------------------------------------------------------------
say "start the stack"
phase_start
# A stack left over from an earlier run would hold the ports.
STACK_UP=1
compose 120 down -v --remove-orphans >/dev/null 2>&1 || true
busy=()
ports=("$LACRE_SMTP_PORT" "$LACRE_IMAP_PORT" "$LACRE_WEB_PORT")
[ "${LACRE_DEMO_NETWORK:-host}" = bridge ] || ports+=("$LACRE_MILTER_PORT" "$LACRE_METRICS_PORT" "$LACRE_LMTP_PORT")
if [ -n "$PG" ]; then
	ports+=("$LACRE_PG_WEB_PORT" "$LACRE_MX1_SMTP_PORT" "$LACRE_MX2_SMTP_PORT")
	[ "${LACRE_DEMO_NETWORK:-host}" = bridge ] || ports+=("$LACRE_MX1_MILTER_PORT" "$LACRE_MX1_METRICS_PORT" \
		"$LACRE_MX2_MILTER_PORT" "$LACRE_MX2_METRICS_PORT" "$LACRE_PG_PORT")
fi
for p in "${ports[@]}"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then busy+=("$p"); fi
done
[ "${#busy[@]}" = 0 ] || die "ports in use on 127.0.0.1: ${busy[*]} (choose others with LACRE_*_PORT)"
STACK_STARTED=1
compose 300 up -d
info "compose up returned after $(( $(date +%s) - PHASE_T )) s"
# cid SERVICE: its container, by compose's labels (the docker CLI answers
# faster than compose, which matters with a dozen services on a busy machine).
cid() {
	local id
	id=$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
		--filter "label=com.docker.compose.service=$1" | head -n 1)
	[ -n "$id" ] || id=$(compose 60 ps -q "$1")
	echo "$id"
}
# cexec SERVICE COMMAND...: compose exec -T, through the docker CLI.
cexec() { local id; id=$(cid "$1"); shift; timeout 60 docker exec -i "$id" "$@" </dev/null; }
deadline=$(( $(date +%s) + 120 ))
svcs=(dovecot milter postfix web)
[ -z "$PG" ] || svcs+=(postgres mx1-milter mx1 mx2-milter mx2 pg-web)
for svc in "${svcs[@]}"; do
	id=$(cid "$svc")
	[ -n "$id" ] || die "service $svc has no container"
	while :; do
		st=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")
		[ "$st" = "running healthy" ] && break
		case "$st" in running*) ;; *) die "$svc is $st" ;; esac
		[ "$(date +%s)" -lt "$deadline" ] || die "$svc not healthy within 120 s ($st)"
		sleep 1
	done
	info "$svc healthy"
done
if [ -n "$PG" ]; then
	st=$(docker inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$(cid pg-init)")
	[ "$st" = "exited 0" ] || die "pg-init (store init) is $st"
fi
pass "stack up: ${svcs[*]} healthy (${LACRE_DEMO_NETWORK:-host} networking)"
phase_end "start"

# ---------------------------------------------------------------------------
phase_start
say "register a fresh key for alice@example.org through the web form"
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
	--quick-gen-key 'Alice Demo <alice@example.org>' future-default default never 2>/dev/null
fpr=$(gpg --batch --with-colons --list-keys alice@example.org 2>/dev/null | awk -F: '$1 == "fpr" { print $10; exit }')
gpg --batch --armor --export alice@example.org >"$TMP/alice.asc"
info "key $fpr (GNUPGHOME in $TMP, removed at the end)"

jar="$TMP/cookies"
web() { curl -sS --max-time 30 -b "$jar" -c "$jar" "$@"; }
field() { sed -n "s/.*name=\"$1\" value=\"\([^\"]*\)\".*/\1/p" "$2" | head -n 1; }

# register BASE ADDRESS KEYFILE: the registration form at BASE, as a browser
# fills it in.
register() {
	local base=$1 addr=$2 keyfile=$3 code csrf
	code=$(web -o "$TMP/index.html" -w '%{http_code}' "$base/")
	[ "$code" = 200 ] || die "GET $base/ answered $code"
	grep -q 'Register your OpenPGP key' "$TMP/index.html" || die "GET $base/ is not the registration page"
	csrf=$(field csrf "$TMP/index.html")
	[ -n "$csrf" ] || die "no CSRF token in the form"
	grep -q lacre_csrf "$jar" || die "no CSRF cookie"
	# As a browser posts the form: multipart, the key pasted into the text area.
	code=$(web -o "$TMP/pending.html" -w '%{http_code}' \
		-F "csrf=$csrf" -F "address=$addr" -F "key=<$keyfile" \
		"$base/submit")
	[ "$code" = 202 ] || { sed -e 's/<[^>]*>//g' "$TMP/pending.html" | grep -v '^\s*$' | head -n 20; die "POST $base/submit answered $code"; }
	grep -q 'Check your mailbox' "$TMP/pending.html" || die "POST /submit did not show the pending page"
	grep -q 'encrypted to' "$TMP/pending.html" || die "the pending page does not say the confirmation is encrypted"
}
register "$WEB" alice@example.org "$TMP/alice.asc"
pass "web form: key submitted (202, confirmation pending)"

# IMAP helpers: the demo mailboxes' passwords are the local parts.
imap() { local user=$1 path=$2; shift 2; curl -sS --max-time 20 --user "$user:${user%@*}" "$IMAP/$path" "$@"; }
# wait_mail USER SUBJECT → the UID of the first message whose Subject contains SUBJECT.
wait_mail() {
	local user=$1 subject=$2 deadline uid
	deadline=$(( $(date +%s) + 60 ))
	while :; do
		uid=$(imap "$user" INBOX -X "UID SEARCH SUBJECT \"$subject\"" 2>/dev/null | tr -d '\r' |
			sed -n 's/^\* SEARCH \([0-9][0-9]*\).*/\1/p')
		[ -n "$uid" ] && { echo "$uid"; return 0; }
		[ "$(date +%s)" -lt "$deadline" ] || return 1
		sleep 1
	done
}
fetch() { imap "$1" "INBOX;UID=$2" | tr -d '\r' >"$3"; [ -s "$3" ]; }
# header FILE NAME → the unfolded value of the first top-level field NAME.
header() {
	awk '/^$/ { exit } /^[ \t]/ { sub(/^[ \t]+/, " "); h = h $0; next } { if (h != "") print h; h = $0 } END { if (h != "") print h }' "$1" |
		grep -i -m 1 "^$2:" | sed 's/^[^:]*:[ \t]*//' || true
}
body() { awk 'b { print } /^$/ && !b { b = 1 }' "$1"; }
# check_pgp_mime FILE: RFC 3156 structure, one armoured message.
check_pgp_mime() {
	local ct
	ct=$(header "$1" Content-Type)
	case "$ct" in
		multipart/encrypted*protocol=\"application/pgp-encrypted\"*) ;;
		*) die "$1: Content-Type is \"$ct\", not multipart/encrypted with protocol application/pgp-encrypted" ;;
	esac
	grep -qi '^Content-Type: application/pgp-encrypted' "$1" || die "$1: no application/pgp-encrypted part"
	grep -qx 'Version: 1' "$1" || die "$1: no \"Version: 1\" part"
	[ "$(grep -cx -- '-----BEGIN PGP MESSAGE-----' "$1")" = 1 ] || die "$1: not exactly one PGP message"
}
decrypt() {
	sed -n '/^-----BEGIN PGP MESSAGE-----$/,/^-----END PGP MESSAGE-----$/p' "$1" |
		gpg --batch --quiet --status-file "$2.status" --decrypt >"$2" 2>"$2.err" ||
		{ cat "$2.err" >&2; die "gpg could not decrypt $1"; }
	grep -q '^\[GNUPG:\] DECRYPTION_OKAY' "$2.status" || die "gpg did not report DECRYPTION_OKAY for $1"
	tr -d '\r' <"$2" >"$2.lf" && mv "$2.lf" "$2"
}

say "read the confirmation mail over IMAP, decrypt it, confirm"
uid=$(wait_mail alice@example.org "Please confirm your request") || die "no confirmation mail in alice's INBOX within 60 s"
fetch alice@example.org "$uid" "$TMP/confirm.eml" || die "could not fetch the confirmation mail"
check_pgp_mime "$TMP/confirm.eml"
decrypt "$TMP/confirm.eml" "$TMP/confirm.txt"
link=$(grep -o "$WEB/confirm?token=[A-Za-z0-9%_=-]*" "$TMP/confirm.txt" | head -n 1)
[ -n "$link" ] || { cat "$TMP/confirm.txt"; die "no confirmation link in the decrypted mail"; }
pass "confirmation mail: in alice's INBOX over IMAP, PGP/MIME, decrypts, has the link"
# confirm BASE LINK: open the link and press the button.
confirm() {
	local base=$1 link=$2 code csrf token
	code=$(web -o "$TMP/confirm.html" -w '%{http_code}' "$link")
	[ "$code" = 200 ] || die "GET the confirmation link answered $code"
	csrf=$(field csrf "$TMP/confirm.html")
	token=$(field token "$TMP/confirm.html")
	{ [ -n "$csrf" ] && [ -n "$token" ]; } || die "the confirmation page has no form"
	code=$(web -o "$TMP/done.html" -w '%{http_code}' --data-urlencode "csrf=$csrf" --data-urlencode "token=$token" "$base/confirm")
	[ "$code" = 200 ] || die "POST $base/confirm answered $code"
	grep -q 'Your key is active' "$TMP/done.html" || die "POST /confirm did not show the done page"
}
confirm "$WEB" "$link"
cexec milter lacre-milter keys show alice@example.org >"$TMP/keys-show.txt" 2>&1 || true
grep -q "$fpr" "$TMP/keys-show.txt" || { cat "$TMP/keys-show.txt"; die "the milter's key store has no key $fpr for alice"; }
pass "confirmed: the key store has alice's key $fpr"
# A lookup made before the confirmation ("no key", when the confirmation
# mail passed) is cached for [store] cache_ttl, 1 s in the demo.
sleep 2

# message FROM TO SUBJECT BODYFILE → a message, as a mail client writes it.
message() {
	printf 'From: %s\nTo: %s\nSubject: %s\nDate: %s\nMessage-ID: <%s@demo.example.org>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n' \
		"$1" "$2" "$3" "$(date -R)" "$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
	cat "$4"
}
# send FROM TO FILE [PORT]: swaks sends FILE as the message to the Postfix
# at PORT (the demo's). swaks ends the data with CRLF "." CRLF after the
# text, so the file's last newline is left off: the body on the wire is
# then exactly the file's.
send() {
	printf '%s' "$(cat "$3")" >"$3.data"
	timeout 60 swaks --server "127.0.0.1:${4:-$LACRE_SMTP_PORT}" --helo verify.example.org \
		--from "$1" --to "$2" --data "$3.data" --timeout 30 </dev/null >"$3.swaks" 2>&1 ||
		{ cat "$3.swaks"; die "swaks could not send to $2"; }
}
nonce=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')

say "send a mail to alice with swaks, read it over IMAP, decrypt it"
printf 'Hello Alice,\n\nthis is the lacre demo, run %s.\nGrüße — the secret word is %s.\n\n-- \nBob\n' "$nonce" "secret-$nonce" >"$TMP/alice.body"
message 'Bob <bob@example.org>' 'Alice <alice@example.org>' "lacre demo for alice $nonce" "$TMP/alice.body" >"$TMP/alice.eml"
send bob@example.org alice@example.org "$TMP/alice.eml"
uid=$(wait_mail alice@example.org "lacre demo for alice $nonce") || die "alice's mail did not arrive within 60 s"
fetch alice@example.org "$uid" "$TMP/alice.got" || die "could not fetch alice's mail"
check_pgp_mime "$TMP/alice.got"
[ "$(header "$TMP/alice.got" X-Lacre)" = encrypted ] || die "no X-Lacre: encrypted header"
! grep -q "secret-$nonce" "$TMP/alice.got" || die "the stored mail contains the plain text"
pass "alice's mail: stored as PGP/MIME (multipart/encrypted, X-Lacre: encrypted), no plain text"
decrypt "$TMP/alice.got" "$TMP/alice.dec"
# What decrypts: the original Content-* fields, an empty line, the body
# byte for byte (docs/encryption.md).
{ printf 'Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n'; cat "$TMP/alice.body"; } >"$TMP/alice.want"
if ! cmp -s "$TMP/alice.want" "$TMP/alice.dec"; then
	diff -u "$TMP/alice.want" "$TMP/alice.dec" || true
	die "alice's mail does not decrypt to what was sent"
fi
pass "alice's mail: decrypts with gpg to exactly the text sent"

say "send a mail to bob (no key): it arrives in clear"
printf 'Hello Bob,\n\nno key, no encryption: run %s.\nGrüße, Alice\n' "$nonce" >"$TMP/bob.body"
message 'Alice <alice@example.org>' 'Bob <bob@example.org>' "lacre demo for bob $nonce" "$TMP/bob.body" >"$TMP/bob.eml"
send alice@example.org bob@example.org "$TMP/bob.eml"
uid=$(wait_mail bob@example.org "lacre demo for bob $nonce") || die "bob's mail did not arrive within 60 s"
fetch bob@example.org "$uid" "$TMP/bob.got" || die "could not fetch bob's mail"
[ "$(header "$TMP/bob.got" Content-Type)" = "text/plain; charset=utf-8" ] || die "bob's mail has Content-Type \"$(header "$TMP/bob.got" Content-Type)\""
[ -z "$(header "$TMP/bob.got" X-Lacre)" ] || die "bob's mail has an X-Lacre header"
if ! body "$TMP/bob.got" | cmp -s "$TMP/bob.body" -; then
	body "$TMP/bob.got" | diff -u "$TMP/bob.body" - || true
	die "bob's mail body is not what was sent"
fi
pass "bob's mail: in clear, body exactly as sent"

say "mail for another domain is refused (the demo relays nothing)"
if timeout 60 swaks --server "127.0.0.1:$LACRE_SMTP_PORT" --from bob@example.org --to someone@example.net \
	--timeout 30 </dev/null >"$TMP/relay.swaks" 2>&1; then
	die "the demo Postfix accepted mail for someone@example.net"
fi
grep -q '<\*\* *554.*Relay access denied' "$TMP/relay.swaks" || { cat "$TMP/relay.swaks"; die "no \"554 Relay access denied\" for someone@example.net"; }
pass "someone@example.net: 554 Relay access denied"
phase_end "scenario"
STEP="done"
[ -n "$PG" ] || exit 0

# ---------------------------------------------------------------------------
# Profile "pg": PostgreSQL, MX 1 and MX 2, the registration service.
phase_start
say "pg: the milters use the shared PostgreSQL store with the read-only role"
for m in mx1-milter mx2-milter; do
	cexec "$m" lacre-milter check-config >"$TMP/$m.check" 2>&1 || { cat "$TMP/$m.check"; die "$m: check-config failed"; }
	grep -q 'postgres lacre_milter@.*schema version [0-9]* (connected)' "$TMP/$m.check" ||
		{ cat "$TMP/$m.check"; die "$m: check-config does not report a connected PostgreSQL store"; }
done
info "$(grep -m 1 'postgres lacre_milter@' "$TMP/mx1-milter.check" | sed 's/^[ \t]*//')"
pass "pg: mx1-milter and mx2-milter: check-config connects to PostgreSQL as lacre_milter"

say "pg: register a fresh key for carol@example.org through the registration service on PostgreSQL"
PG_GNUPG="$TMP/gnupg-pg"
mkdir -m 700 "$PG_GNUPG"
GNUPGHOME="$PG_GNUPG" gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
	--quick-gen-key 'Carol Demo <carol@example.org>' future-default default never 2>/dev/null
cfpr=$(GNUPGHOME="$PG_GNUPG" gpg --batch --with-colons --list-keys carol@example.org 2>/dev/null | awk -F: '$1 == "fpr" { print $10; exit }')
GNUPGHOME="$PG_GNUPG" gpg --batch --armor --export carol@example.org >"$TMP/carol.asc"
info "key $cfpr (its own GNUPGHOME: only this key decrypts carol's mail)"
register "$PG_WEB" carol@example.org "$TMP/carol.asc"
uid=$(wait_mail carol@example.org "Please confirm your request") || die "no confirmation mail in carol's INBOX within 60 s"
fetch carol@example.org "$uid" "$TMP/carol-confirm.eml" || die "could not fetch carol's confirmation mail"
check_pgp_mime "$TMP/carol-confirm.eml"
# headers FILE: the header section, folded lines joined.
headers() { awk '/^$/ { exit } /^[ \t]/ { sub(/^[ \t]+/, " "); h = h $0; next } { if (h != "") print h; h = $0 } END { if (h != "") print h }' "$1"; }
headers "$TMP/carol-confirm.eml" | grep -q '^Received: .* by mx1\.example\.org (Postfix)' ||
	{ headers "$TMP/carol-confirm.eml" | grep '^Received:'; die "carol's confirmation mail did not go through MX 1"; }
GNUPGHOME="$PG_GNUPG" decrypt "$TMP/carol-confirm.eml" "$TMP/carol-confirm.txt"
clink=$(grep -o "$PG_WEB/confirm?token=[A-Za-z0-9%_=-]*" "$TMP/carol-confirm.txt" | head -n 1)
[ -n "$clink" ] || { cat "$TMP/carol-confirm.txt"; die "no confirmation link in carol's decrypted mail"; }
pass "pg: key submitted; the confirmation mail came through MX 1, decrypts, has the link"

# pg_send MX N TAG: a mail to carol through MX (mx1 or mx2, Postfix on
# port N) with a fresh body; the files are $TMP/carol-TAG.*.
pg_send() {
	local mx=$1 port=$2 tag=$3
	printf 'Hello Carol,\n\nthrough %s, run %s, %s.\nGrüße — the secret word is %s.\n' "$mx" "$nonce" "$tag" "secret-$tag-$nonce" >"$TMP/carol-$tag.body"
	message 'Bob <bob@example.org>' 'Carol <carol@example.org>' "lacre demo for carol $tag $nonce" "$TMP/carol-$tag.body" >"$TMP/carol-$tag.eml"
	send bob@example.org carol@example.org "$TMP/carol-$tag.eml" "$port"
	date +%s.%N >"$TMP/carol-$tag.sent"
}
# pg_send_both TAG: pg_send through MX 1 (TAG1) and MX 2 (TAG2) at once.
pg_send_both() {
	local p1 p2
	pg_send mx1 "$LACRE_MX1_SMTP_PORT" "${1}1" & p1=$!
	pg_send mx2 "$LACRE_MX2_SMTP_PORT" "${1}2" & p2=$!
	wait "$p1" || die "could not send carol's mail ${1}1 through MX 1"
	wait "$p2" || die "could not send carol's mail ${1}2 through MX 2"
}
# since T TAG: seconds from T until the mail TAG was accepted.
since() { awk -v a="$1" -v b="$(cat "$TMP/carol-$2.sent")" 'BEGIN { printf "%.2f", b - a }'; }
# pg_fetch MX TAG: wait for that mail, fetch it to $TMP/carol-TAG.got, check
# it went through MX.
pg_fetch() {
	local mx=$1 tag=$2 uid
	uid=$(wait_mail carol@example.org "lacre demo for carol $tag $nonce") || die "carol's mail $tag did not arrive within 60 s"
	fetch carol@example.org "$uid" "$TMP/carol-$tag.got" || die "could not fetch carol's mail $tag"
	headers "$TMP/carol-$tag.got" | grep -q "^Received: .* by $mx\.example\.org (Postfix)" ||
		{ headers "$TMP/carol-$tag.got" | grep '^Received:'; die "carol's mail $tag did not go through $mx"; }
}
# pg_clear TAG: the mail arrived unchanged, not encrypted.
pg_clear() {
	local f="$TMP/carol-$1.got"
	[ "$(header "$f" Content-Type)" = "text/plain; charset=utf-8" ] || die "carol's mail $1 has Content-Type \"$(header "$f" Content-Type)\""
	[ -z "$(header "$f" X-Lacre)" ] || die "carol's mail $1 has an X-Lacre header"
	if ! body "$f" | cmp -s "$TMP/carol-$1.body" -; then
		body "$f" | diff -u "$TMP/carol-$1.body" - || true
		die "carol's mail $1: body is not what was sent"
	fi
}
# pg_encrypted TAG: the mail is PGP/MIME, has no plain text, and decrypts
# with carol's key to exactly what was sent.
pg_encrypted() {
	local f="$TMP/carol-$1.got"
	check_pgp_mime "$f"
	[ "$(header "$f" X-Lacre)" = encrypted ] || die "carol's mail $1: no X-Lacre: encrypted header"
	! grep -q "secret-$1-$nonce" "$f" || die "carol's mail $1: the stored mail contains the plain text"
	GNUPGHOME="$PG_GNUPG" decrypt "$f" "$TMP/carol-$1.dec"
	{ printf 'Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n'; cat "$TMP/carol-$1.body"; } >"$TMP/carol-$1.want"
	if ! cmp -s "$TMP/carol-$1.want" "$TMP/carol-$1.dec"; then
		diff -u "$TMP/carol-$1.want" "$TMP/carol-$1.dec" || true
		die "carol's mail $1 does not decrypt to what was sent"
	fi
}

say "pg: before the confirmation, mail to carol through MX 1 and MX 2 arrives in clear"
# Each milter now keeps "no key" for carol for its cache_ttl, one hour.
pg_send_both before
pg_fetch mx1 before1; pg_clear before1
pg_fetch mx2 before2; pg_clear before2
pass "pg: carol has no key yet: her mail through MX 1 and MX 2 arrived in clear (both milters cache \"no key\" for 1h)"

say "pg: confirm carol's key; within 1 s mail through MX 1 and MX 2 is encrypted"
confirm "$PG_WEB" "$clink"
tc=$(date +%s.%N)
# Half a second after the confirmation page came back, a mail through each
# MX at once: their recipients are looked up before swaks is done.
sleep 0.5
pg_send_both after
info "accepted by MX 1 $(since "$tc" after1) s and by MX 2 $(since "$tc" after2) s after the confirmation page came back (swaks done)"
pg_fetch mx1 after1; pg_encrypted after1
pg_fetch mx2 after2; pg_encrypted after2
pass "pg: key confirmed on the web reached both milters (cache_ttl 1h) within $(since "$tc" after1) s and $(since "$tc" after2) s: carol's mail through MX 1 and MX 2 is PGP/MIME and decrypts to exactly the text sent"

say "pg: the milters' role cannot change the store"
if cexec mx1-milter lacre-milter keys remove carol@example.org >"$TMP/ro.txt" 2>&1; then
	die "lacre_milter (mx1-milter) could remove a key"
fi
grep -qi 'permission denied' "$TMP/ro.txt" || { cat "$TMP/ro.txt"; die "keys remove as lacre_milter failed, but not with \"permission denied\""; }
pass "pg: keys remove as lacre_milter: permission denied"

say "pg: remove carol's key with the CLI (read-write role); within 1 s mail through MX 1 and MX 2 is in clear"
cexec pg-web lacre-milter keys remove carol@example.org >"$TMP/rm.txt" 2>&1 || { cat "$TMP/rm.txt"; die "keys remove carol@example.org failed"; }
tc=$(date +%s.%N)
sleep 0.5
pg_send_both removed
info "accepted by MX 1 $(since "$tc" removed1) s and by MX 2 $(since "$tc" removed2) s after keys remove returned (swaks done)"
pg_fetch mx1 removed1; pg_clear removed1
pg_fetch mx2 removed2; pg_clear removed2
pass "pg: key removed with the CLI reached both milters within $(since "$tc" removed1) s and $(since "$tc" removed2) s: carol's mail through MX 1 and MX 2 arrived in clear"
phase_end "pg scenario"
STEP="done"
