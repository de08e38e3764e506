#!/usr/bin/env bash
# Throughput of one Postfix with and without milters, side by side, and the
# milter's peak memory with large messages: the figures of
# docs/performance.md, "Against plain Postfix".
#
#   sudo bench/throughput.sh                 # everything, N=5000, 5 rounds
#   sudo N=2000 ROUNDS=3 bench/throughput.sh
#   sudo MODE=memory bench/throughput.sh     # only the memory test
#
# What it does (as root, on 127.0.0.1 only; every process it starts is
# stopped at exit):
#
#   * builds lacre-milter and bench/nullmilter;
#   * generates an X25519 recipient key with gpg in a temporary GNUPGHOME
#     (kept nowhere) and binds it with "lacre-milter keys add" to
#     bob@bench.test; carol@bench.test has no key;
#   * starts smtp-sink (the destination, counting messages with -c), one
#     private Postfix in $WORK/pf relaying everything to it, lacre-milter
#     serve, and nullmilter four times (-mode replace, accept-rcpt,
#     accept-header, accept-data). The Postfix has one smtpd per case, each on its own
#     port with its own smtpd_milters, so the cases share one queue, qmgr
#     and delivery agent and need no restart in between;
#   * checks one message per case, dumped at the sink (b replaced by the
#     null milter, c PGP/MIME, d-g unchanged);
#   * sends N messages with "smtp-source -s 20 -l 4096 -m N -r 1" (20
#     parallel sessions, one message per SMTP session, one recipient,
#     4096-byte body) through each case:
#       a  no milter                                      to bob (keyed)
#       b  nullmilter -mode replace                       to bob
#       c  lacre-milter, encrypting                       to bob
#       d  nullmilter -mode accept-rcpt                   to carol (no key)
#       e  lacre-milter, clear mail                       to carol
#       f  nullmilter -mode accept-header                 to carol
#       g  nullmilter -mode accept-data                   to carol
#       h  lacre-milter, clear mail, recipients spread     over the aliases
#       i  nullmilter -mode accept-rcpt, the same recipients
#     (f and g only if CASES names them: g shows what accepting at DATA,
#     where lacre accepts clear mail, costs in itself; f is where lacre
#     accepted it while it spoke milter protocol 2), first once with
#     WARMUP_N messages each (warm-up, not counted), then ROUNDS times,
#     odd rounds in the order of CASES and even rounds in reverse order;
#   * msg/s is end to end: N divided by the time from the start of
#     smtp-source until smtp-sink has counted N more messages (its -c
#     counter, read from its output; smtp-sink -M would exit before
#     answering the last message). It prints the median and range per
#     case, the CPU time per message of the milter and of Postfix (all its
#     processes, from /proc), and the ratios with their targets;
#   * alias resolution (issue 14): Postfix has a 10,000-entry hash
#     virtual_alias_maps table (uNNNNN@alias.bench.test ->
#     mbNNNNN@bench.test, no keys), and lacre-milter expands recipients
#     with it ([aliases] source = "postfix"; ALIASES=0 switches it off).
#     Cases h and i send each message to the next alias of the table
#     (bench/spread, since smtp-source has one recipient), from a
#     different offset each round; before each run of h lacre-milter is
#     restarted, so that every recipient is a cold lookup: key store,
#     expansion (its first lookup dumps the table) and the mailbox's key
#     store lookup. h/i is the target (>= 95 %);
#   * memory: a fresh lacre-milter (so VmHWM is this test's) gets 16
#     concurrent 10 MiB messages to bob (smtp-source -s 16 -m 16
#     -l 10485760); its peak RSS is VmHWM from /proc/PID/status. MEM_ROUNDS
#     times, each with a fresh process.
#
# STORE=postgres puts the key store in a private PostgreSQL cluster
# ($WORK/pg: Debian's initdb and pg_ctl, run as user postgres, on a free
# loopback port, stopped at exit) instead of the SQLite file, to compare
# the two stores (docs/performance.md, "The key store in PostgreSQL").
#
# PROFILE=1 records a CPU profile of lacre-milter during every counted run
# of case h with perf(1) (perf record -g, 999 Hz; Go binaries carry frame
# pointers and symbols) into $WORK/perf-h-ROUND.data; read it with
# "perf report -i FILE --no-children". Each results.txt row ends with the
# 1-minute load average when the run ended.
#
# PERFSTAT=1 counts, with perf stat, the milter's CPU time (task-clock),
# context switches and system calls during every counted run of a case
# with a milter, and appends them per message to its results.txt row: they
# scatter far less than msg/s, and show the thread wake-ups that a milter
# on a small machine pays for (docs/performance.md).
#
# Environment: CASES ("a b c d e h i"), ALIASES (1), COLD (1), PROFILE (0), PERFSTAT (0), STORE (sqlite), N (5000), ROUNDS (5), WARMUP_N (1000),
# MEM_ROUNDS (3), MEM_SESSIONS (16), MEM_SIZE (10485760), RUN_TIMEOUT
# seconds per run (600), MODE (all|throughput|memory), WORK
# (/tmp/lacre-bench: binaries, configuration, logs, results.txt),
# LACRE_ENV (e.g. "GOMEMLIMIT=1GiB", passed to lacre-milter only),
# LACRE_BIN (a lacre-milter binary to use instead of building one: to
# compare two versions of the code with the same script), KEEP=1
# (keep the Postfix queue directory too).
set -euo pipefail

CASES=${CASES:-a b c d e h i}
ALIASES=${ALIASES:-1}
COLD=${COLD:-1}
PROFILE=${PROFILE:-0}
PERFSTAT=${PERFSTAT:-0}
ALIAS_ENTRIES=10000
N=${N:-5000}
ROUNDS=${ROUNDS:-5}
WARMUP_N=${WARMUP_N:-1000}
MEM_ROUNDS=${MEM_ROUNDS:-3}
MEM_SESSIONS=${MEM_SESSIONS:-16}
MEM_SIZE=${MEM_SIZE:-10485760}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
MODE=${MODE:-all}
WORK=${WORK:-/tmp/lacre-bench}
LACRE_ENV=${LACRE_ENV:-}
LACRE_BIN=${LACRE_BIN:-}
STORE=${STORE:-sqlite}
SESSIONS=20
SIZE=4096
KEYED=bob@bench.test
CLEAR=carol@bench.test
SENDER=sender@client.test

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/usr/lib/postfix/sbin

die() { echo "throughput.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

[[ $(id -u) == 0 ]] || die "run as root (Postfix's master must start as root)"
[[ $PROFILE == 0 && $PERFSTAT == 0 ]] || command -v perf >/dev/null || die "PROFILE=1: perf not found (apt-get install linux-perf)"
for c in go postfix postconf smtp-source smtp-sink gpg gpgconf ss timeout; do
	command -v "$c" >/dev/null || die "$c not found (apt-get install postfix gnupg; Go at /usr/local/go)"
done
case $MODE in all | throughput | memory) ;; *) die "MODE must be all, throughput or memory" ;; esac
case $STORE in sqlite | postgres) ;; *) die "STORE must be sqlite or postgres" ;; esac
PG_BIN=""
if [[ $STORE == postgres ]]; then
	PG_BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -1)")
	[[ -x $PG_BIN/pg_ctl ]] || die "STORE=postgres: PostgreSQL server binaries not found (apt-get install postgresql)"
fi

PF=$WORK/pf
PIDS=()       # processes to stop at exit: sink, milters
GNUPG_TMP=""

cleanup() {
	set +e
	[[ -f $PF/etc/main.cf ]] && postfix -c "$PF/etc" stop >/dev/null 2>&1
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null
	done
	if [[ -n $GNUPG_TMP ]]; then
		gpgconf --homedir "$GNUPG_TMP" --kill gpg-agent 2>/dev/null
		rm -rf "$GNUPG_TMP"
	fi
	[[ ${KEEP:-} == 1 ]] || rm -rf "$PF/queue"
	[[ -f $WORK/pg/data/postmaster.pid ]] && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w stop >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port VAR sets VAR to a loopback TCP port that no socket uses now,
# below Linux's range of ephemeral ports (32768-60999 by default), which
# outgoing connections take, and not handed out before.
USED_PORTS=()
free_port() {
	local p
	for _ in $(seq 100); do
		p=$((12000 + RANDOM % 20000))
		if [[ -z $(ss -Htan "sport = :$p") ]] && [[ " ${USED_PORTS[*]} " != *" $p "* ]]; then
			USED_PORTS+=("$p")
			printf -v "$1" %s "$p"
			return
		fi
	done
	die "no free port"
}

# wait_port waits (10 s at most) until something accepts on 127.0.0.1:$1.
wait_port() {
	for _ in $(seq 200); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.05
	done
	die "nothing listens on 127.0.0.1:$1"
}

now_ns() { date +%s%N; }

# ---------------------------------------------------------------------
# Build, key, configuration

mkdir -p "$WORK/bin" "$WORK/lacre"
chmod 755 "$WORK"
log "building lacre-milter and nullmilter"
if [[ -n $LACRE_BIN ]]; then
	cp "$LACRE_BIN" "$WORK/bin/lacre-milter"
else
	(cd "$REPO" && go build -o "$WORK/bin/lacre-milter" ./cmd/lacre-milter)
fi
(cd "$REPO" && go build -o "$WORK/bin/nullmilter" ./bench/nullmilter && go build -o "$WORK/bin/spread" ./bench/spread)

SINK_PORT="" LACRE_PORT="" NULLR_PORT="" NULLA_PORT="" NULLH_PORT="" NULLD_PORT=""
free_port SINK_PORT
free_port LACRE_PORT
free_port NULLR_PORT
free_port NULLA_PORT
free_port NULLH_PORT
free_port NULLD_PORT
declare -A SMTP_PORT
for c in a b c d f g; do free_port "SMTP_PORT[$c]"; done
SMTP_PORT[e]=${SMTP_PORT[c]} # the same smtpd: lacre-milter, another recipient
SMTP_PORT[h]=${SMTP_PORT[c]} # lacre-milter, recipients spread over the aliases
SMTP_PORT[i]=${SMTP_PORT[d]} # nullmilter accept-rcpt, the same recipients

if [[ $STORE == postgres ]]; then
	log "starting a private PostgreSQL cluster in $WORK/pg"
	PG_PORT=""
	free_port PG_PORT
	rm -rf "$WORK/pg"
	mkdir -p "$WORK/pg"
	head -c 24 /dev/urandom | base64 >"$WORK/pg/admin.pw"
	chown -R postgres: "$WORK/pg"
	chmod 700 "$WORK/pg"
	runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/pg/data" -U lacre_admin --pwfile "$WORK/pg/admin.pw" \
		--auth-host=scram-sha-256 --auth-local=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
	printf "listen_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\n" "$PG_PORT" "$WORK/pg" >>"$WORK/pg/data/postgresql.conf"
	runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/server.log" -w start >/dev/null
	PGPASSWORD=$(cat "$WORK/pg/admin.pw") psql -q -h 127.0.0.1 -p "$PG_PORT" -U lacre_admin -d postgres -c "CREATE DATABASE lacre" >/dev/null
	STORE_TOML="database = \"postgres://lacre_admin@127.0.0.1:$PG_PORT/lacre?sslmode=disable\"
password_file = \"$WORK/pg/admin.pw\""
else
	STORE_TOML="database = \"$WORK/lacre/keys.db\""
fi
cat >"$WORK/lacre/lacre.toml" <<EOF
# Written by bench/throughput.sh.
[milter]
listen = "inet:127.0.0.1:$LACRE_PORT"

[store]
$STORE_TOML

[aliases]
source = "$( ((ALIASES)) && echo postfix || echo none)"
postfix_config_dir = "$WORK/pf/etc"
service = "127.0.0.1:${SMTP_PORT[c]}/inet"
mixed = "defer"
EOF
rm -f "$WORK/lacre/keys.db"

log "generating the recipient key (gpg, temporary GNUPGHOME)"
GNUPG_TMP=$(mktemp -d)
gpg --homedir "$GNUPG_TMP" --batch --quiet --passphrase '' --quick-gen-key "Bench <$KEYED>" future-default default never 2>/dev/null
gpg --homedir "$GNUPG_TMP" --batch --armor --export "$KEYED" >"$WORK/lacre/bob.asc"
gpgconf --homedir "$GNUPG_TMP" --kill gpg-agent
rm -rf "$GNUPG_TMP"
GNUPG_TMP=""
"$WORK/bin/lacre-milter" -config "$WORK/lacre/lacre.toml" store init >/dev/null
"$WORK/bin/lacre-milter" -config "$WORK/lacre/lacre.toml" keys add "$KEYED" "$WORK/lacre/bob.asc" >/dev/null

# Postfix: the integration harness's instance (integration/harness_test.go),
# tuned so that Postfix itself is not the throttle.
rm -rf "$PF"
mkdir -p "$PF/etc" "$PF/queue" "$PF/data"
chmod 755 "$PF" "$PF/etc" "$PF/queue"
chown postfix:postfix "$PF/data"
chmod 700 "$PF/data"
cat >"$PF/etc/main.cf" <<EOF
# Written by bench/throughput.sh.
compatibility_level = 3.6
queue_directory = $PF/queue
data_directory = $PF/data
maillog_file = $PF/maillog
maillog_file_prefixes = $WORK
syslog_name = lacre-bench
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.bench.test
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
relayhost = [127.0.0.1]:$SINK_PORT
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
milter_default_action = tempfail
milter_protocol = 6
smtpd_milters =
non_smtpd_milters =
# 10,000 aliases to mailboxes without keys (cases h and i).
virtual_alias_maps = hash:$PF/etc/virtual
# Not throttled: no inflow delay, enough processes, 20 parallel deliveries
# from the start.
in_flow_delay = 0
default_process_limit = 200
default_destination_concurrency_limit = 20
smtp_destination_concurrency_limit = 20
initial_destination_concurrency = 20
# 10 MiB messages, encrypted (+40 %), for the memory test.
message_size_limit = 52428800
biff = no
append_dot_mydomain = no
readme_directory = no
smtpd_banner = \$myhostname ESMTP
EOF
cat >"$PF/etc/master.cf" <<EOF
# Written by bench/throughput.sh: one smtpd per case.
127.0.0.1:${SMTP_PORT[a]} inet n - n - - smtpd
127.0.0.1:${SMTP_PORT[b]} inet n - n - - smtpd -o smtpd_milters=inet:127.0.0.1:$NULLR_PORT
127.0.0.1:${SMTP_PORT[c]} inet n - n - - smtpd -o smtpd_milters=inet:127.0.0.1:$LACRE_PORT
127.0.0.1:${SMTP_PORT[d]} inet n - n - - smtpd -o smtpd_milters=inet:127.0.0.1:$NULLA_PORT
127.0.0.1:${SMTP_PORT[f]} inet n - n - - smtpd -o smtpd_milters=inet:127.0.0.1:$NULLH_PORT
127.0.0.1:${SMTP_PORT[g]} inet n - n - - smtpd -o smtpd_milters=inet:127.0.0.1:$NULLD_PORT
EOF
cat "$REPO/contrib/postfix/master-services.cf" >>"$PF/etc/master.cf"
awk -v n="$ALIAS_ENTRIES" 'BEGIN { for (i = 1; i <= n; i++) printf "u%05d@alias.bench.test mb%05d@bench.test\n", i, i }' >"$PF/etc/virtual"
postmap -c "$PF/etc" "hash:$PF/etc/virtual"
cut -d' ' -f1 "$PF/etc/virtual" >"$WORK/aliases.txt"
# Postfix re-reads a configuration file changed in the last second.
touch -d '-1 minute' "$PF/etc/main.cf" "$PF/etc/master.cf" "$PF/etc/virtual" "$PF/etc/virtual.db"

# ---------------------------------------------------------------------
# Processes

SINK_OUT=$WORK/sink.out
SINK_PID=""
# start_sink [ARGS...]: smtp-sink on SINK_PORT, counting (-c) into SINK_OUT.
start_sink() {
	: >"$SINK_OUT"
	smtp-sink -u nobody -c "$@" "127.0.0.1:$SINK_PORT" 1024 >"$SINK_OUT" 2>&1 &
	SINK_PID=$!
	PIDS+=("$SINK_PID")
	wait_port "$SINK_PORT"
}
stop_sink() {
	kill "$SINK_PID" 2>/dev/null || true
	wait "$SINK_PID" 2>/dev/null || true
}
# sink_count prints how many messages the sink has received ("." counted).
sink_count() {
	local s
	s=$(tail -c 120 "$SINK_OUT")
	[[ $s == *mesg=* ]] || { echo 0; return; }
	s=${s##*mesg=}
	echo "${s%%[!0-9]*}"
}

LACRE_PID=""
start_lacre() {
	# env -C: no subshell, so that $! is lacre-milter's pid (VmHWM, CPU).
	# shellcheck disable=SC2086 # LACRE_ENV is a list of NAME=VALUE words
	env -C "$WORK/lacre" $LACRE_ENV "$WORK/bin/lacre-milter" -config "$WORK/lacre/lacre.toml" serve >>"$WORK/lacre/lacre.log" 2>&1 &
	LACRE_PID=$!
	PIDS+=("$LACRE_PID")
	wait_port "$LACRE_PORT"
	[[ $(cat "/proc/$LACRE_PID/comm") == lacre-milter ]] || die "pid $LACRE_PID is not lacre-milter"
}
stop_lacre() {
	kill "$LACRE_PID" 2>/dev/null || true
	wait "$LACRE_PID" 2>/dev/null || true
}

start_null() { # PORT MODE
	"$WORK/bin/nullmilter" -listen "127.0.0.1:$1" -mode "$2" >>"$WORK/nullmilter-$2.log" 2>&1 &
	PIDS+=("$!")
	NULL_PID[$2]=$!
	wait_port "$1"
}
declare -A NULL_PID

# cpu_ticks PID: user+system clock ticks the process has used.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# postfix_ticks: clock ticks used by the whole Postfix instance: its
# master's process group (master calls setsid), including the children
# the master has reaped.
postfix_ticks() {
	local pg
	pg=$(tr -d ' ' <"$PF/queue/pid/master.pid")
	# (processes may end between the glob and the read)
	{ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pg="$pg" '$5 == pg { t += $14 + $15; if ($1 == pg) t += $16 + $17 } END { print t + 0 }'
}

queue_files() { find "$PF/queue/incoming" "$PF/queue/active" "$PF/queue/deferred" "$PF/queue/hold" -type f 2>/dev/null | wc -l; }

rm -f "$WORK/lacre/lacre.log" "$WORK"/nullmilter-*.log
start_sink
start_lacre
start_null "$NULLR_PORT" replace
start_null "$NULLA_PORT" accept-rcpt
start_null "$NULLH_PORT" accept-header
start_null "$NULLD_PORT" accept-data
postfix -c "$PF/etc" start >/dev/null 2>&1 || { tail -n 20 "$PF/maillog" >&2; die "postfix start failed"; }
for c in a b c d f g; do wait_port "${SMTP_PORT[$c]}"; done

rcpt_of() { case $1 in a | b | c) echo "$KEYED" ;; d | e | f | g) echo "$CLEAR" ;; esac; }
milter_of() {
	case $1 in
	a) echo "" ;;
	b) echo "${NULL_PID[replace]}" ;;
	c | e | h) echo "$LACRE_PID" ;;
	d | i) echo "${NULL_PID[accept-rcpt]}" ;;
	f) echo "${NULL_PID[accept-header]}" ;;
	g) echo "${NULL_PID[accept-data]}" ;;
	esac
}

# source_cmd CASE COUNT SESSIONS SIZE OFFSET sets SRC to the SMTP client
# of a run (h and i: bench/spread over the aliases, from OFFSET).
SRC=()
source_cmd() {
	local c=$1 n=$2 s=$3 l=$4 off=$5
	case $c in
	h | i) SRC=("$WORK/bin/spread" -addr "127.0.0.1:${SMTP_PORT[$c]}" -rcpts "$WORK/aliases.txt" -offset "$off" -n "$n" -s "$s" -l "$l" -from "$SENDER") ;;
	*) SRC=(smtp-source -s "$s" -l "$l" -m "$n" -r 1 -f "$SENDER" -t "$(rcpt_of "$c")" "127.0.0.1:${SMTP_PORT[$c]}") ;;
	esac
}

# cold CASE: case h starts with a fresh lacre-milter (cold caches), unless
# COLD=0 (then only its recipients are new to it: no two runs of h share
# one within 10,000 messages). In the main shell, not in run's $(…), so
# that LACRE_PID is the new one.
cold() {
	if [[ $1 == h && $COLD == 1 ]]; then
		stop_lacre
		start_lacre
	fi
}

# run CASE COUNT SESSIONS SIZE [OFFSET [PROFILE_FILE]]: one timed run;
# prints "CASE COUNT end_to_end_seconds inject_seconds msg/s milter_ticks
# postfix_ticks load1".
run() {
	local c=$1 n=$2 s=$3 l=$4 off=${5:-0} prof=${6:-} base t0 t1 t2 rc=0 mpid cpu0=0 cpu1=0 pf0 pf1 got deadline perf_pid=""
	base=$(sink_count)
	mpid=$(milter_of "$c")
	if [[ -n $prof && -n $mpid ]]; then
		perf record -q -F 999 -g -p "$mpid" -o "$prof" >/dev/null 2>&1 &
		perf_pid=$!
		sleep 0.5
	fi
	local stat_pid="" stat_out=$WORK/perfstat.out
	if [[ $PERFSTAT != 0 && -n $mpid ]]; then
		perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter -p "$mpid" -o "$stat_out" &
		stat_pid=$!
		sleep 0.2
	fi
	[[ -n $mpid ]] && cpu0=$(cpu_ticks "$mpid")
	pf0=$(postfix_ticks)
	source_cmd "$c" "$n" "$s" "$l" "$off"
	t0=$(now_ns)
	timeout "$RUN_TIMEOUT" "${SRC[@]}" >"$WORK/source.out" 2>&1 || rc=$?
	t1=$(now_ns)
	if [[ $rc != 0 ]]; then
		echo "case $c: smtp-source failed (exit $rc): $(head -c 300 "$WORK/source.out")" >&2
	fi
	deadline=$((t0 + RUN_TIMEOUT * 1000000000))
	while got=$(sink_count); ((got < base + n)); do
		if (($(now_ns) > deadline)); then
			echo "case $c: only $((got - base)) of $n messages arrived within ${RUN_TIMEOUT}s" >&2
			[[ -n $perf_pid ]] && kill -INT "$perf_pid" 2>/dev/null
			echo "$c $n FAIL FAIL 0 0 0"
			return
		fi
		sleep 0.01
	done
	t2=$(now_ns)
	[[ -n $mpid ]] && cpu1=$(cpu_ticks "$mpid")
	pf1=$(postfix_ticks)
	if [[ -n $perf_pid ]]; then
		kill -INT "$perf_pid" 2>/dev/null || true
		wait "$perf_pid" 2>/dev/null || true
	fi
	local per=""
	if [[ -n $stat_pid ]]; then
		kill -INT "$stat_pid" 2>/dev/null || true
		wait "$stat_pid" 2>/dev/null || true
		# task-clock ms, context switches and system calls per message
		per=$(awk -F, -v n="$n" '$3 == "task-clock" { t = $1 } $3 == "context-switches" { cs = $1 } $3 ~ /sys_enter/ { sc = $1 }
			END { printf " perf: %.3f ms %.1f cs %.1f syscalls", t / n, cs / n, sc / n }' "$stat_out")
	fi
	awk -v c="$c" -v n="$n" -v e="$((t2 - t0))" -v i="$((t1 - t0))" -v cpu="$((cpu1 - cpu0))" -v pf="$((pf1 - pf0))" -v ld="$(cut -d' ' -f1 /proc/loadavg)" -v per="$per" \
		'BEGIN { printf "%s %d %.3f %.3f %.1f %d %d %s%s\n", c, n, e / 1e9, i / 1e9, n / (e / 1e9), cpu, pf, ld, per }'
	# Let the last deliveries' bookkeeping (qmgr, log) finish.
	for _ in $(seq 100); do (($(queue_files) == 0)) && break; sleep 0.05; done
}

# check: one message through each case, dumped, to show that each case
# does what it should (b: replaced, c: encrypted, d to g: unchanged).
check() {
	log "check: one message per case, dumped"
	local dump=$WORK/check.dump c got
	stop_sink
	rm -f "$dump"
	install -d -o nobody "$WORK/checkdir"
	start_sink -D "$WORK/checkdir/dump"
	for c in a b c d e f g h i; do
		got=$(sink_count)
		source_cmd "$c" 1 1 "$SIZE" 0
		"${SRC[@]}" >/dev/null 2>&1 ||
			die "check: case $c: the SMTP client failed; see $PF/maillog"
		for _ in $(seq 500); do (($(sink_count) > got)) && break; sleep 0.02; done
		(($(sink_count) > got)) || die "check: case $c: the message did not arrive; see $PF/maillog"
		sleep 0.2
		awk -v c="$c" 'BEGIN { RS = "X-Client-Addr: " } NR > 1 { m = $0 } END {
			enc = (m ~ /Content-Type: multipart\/encrypted/ && m ~ /BEGIN PGP MESSAGE/)
			trace = (m ~ /\nX-Lacre: /); repl = (m ~ /\nX-Lacre: null-milter/)
			ok = (c == "a" && !trace) || (c == "b" && repl && !enc) || (c == "c" && enc && trace) || ((c == "d" || c == "e" || c == "f" || c == "g" || c == "h" || c == "i") && !trace)
			printf "  case %s: %s (%d bytes delivered%s%s)\n", c, ok ? "ok" : "WRONG", length(m), enc ? ", PGP/MIME" : "", repl ? ", replaced by nullmilter" : ""
			exit !ok }' "$WORK/checkdir/dump" >&2 || die "check: case $c delivered the wrong thing; see $WORK/checkdir/dump"
	done
	# Let Postfix's cached connections to this sink expire
	# (smtp_connection_cache_time_limit, 2 s) before it goes away.
	sleep 3
	stop_sink
	rm -rf "$WORK/checkdir"
	start_sink
}

median_range() { # numbers on stdin → "median min max"
	sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "- - -"; exit }
		m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.0f %.0f %.0f\n", m, v[1], v[NR] }'
}

RESULTS=$WORK/results.txt
echo "# $(date -u +%FT%TZ) N=$N ROUNDS=$ROUNDS STORE=$STORE load: $(cut -d' ' -f1-3 /proc/loadavg)" >"$RESULTS"

throughput() {
	check
	log "warm-up: $WARMUP_N messages per case"
	for c in $CASES; do
		cold "$c"
		run "$c" "$WARMUP_N" "$SESSIONS" "$SIZE" 0 >/dev/null
	done
	local order reversed=""
	for c in $CASES; do reversed="$c $reversed"; done
	for r in $(seq "$ROUNDS"); do
		# Odd rounds in the order of CASES, even rounds reversed: a case
		# that runs first in every round gains (or loses) whatever the
		# one before it leaves behind (Postfix's delivery of the previous
		# case, the host's other guests), by 5 - 10 % in a ratio here.
		order=$CASES
		((r % 2 == 0)) && order=$reversed
		for c in $order; do
			log "round $r/$ROUNDS, case $c: $N messages, $SESSIONS sessions, load $(cut -d' ' -f1 /proc/loadavg)"
			# h and i: the same recipients, a new stretch of the table each round.
			cold "$c"
			local prof=""
			[[ $PROFILE != 0 && $c == h ]] && prof=$WORK/perf-h-$r.data
			echo "$r $(run "$c" "$N" "$SESSIONS" "$SIZE" $(((WARMUP_N + (r - 1) * N) % ALIAS_ENTRIES)) "$prof")" | tee -a "$RESULTS" >&2
		done
	done
	echo "# end load: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS"

	local tck desc
	tck=$(getconf CLK_TCK)
	echo
	echo "Throughput: smtp-source -s $SESSIONS -l $SIZE -m $N -r 1, end to end (until smtp-sink has all $N), $ROUNDS rounds"
	echo
	echo "| case | msg/s median | range | CPU ms/msg: milter | Postfix |"
	echo "|---|---|---|---|---|"
	declare -gA MED
	for c in $CASES; do
		case $c in
		a) desc="a: no milter" ;;
		b) desc="b: nullmilter, replace (body and headers)" ;;
		c) desc="c: lacre-milter, encrypting" ;;
		d) desc="d: nullmilter, accept at RCPT (unkeyed rcpt)" ;;
		e) desc="e: lacre-milter, clear mail (unkeyed rcpt)" ;;
		f) desc="f: nullmilter, accept at first header (unkeyed rcpt)" ;;
		g) desc="g: nullmilter, accept at DATA (unkeyed rcpt)" ;;
		h) desc="h: lacre-milter, clear mail, rcpts spread over 10,000 aliases, cold" ;;
		i) desc="i: nullmilter, accept at RCPT, the same rcpts" ;;
		esac
		read -r med lo hi < <(awk -v c="$c" '$1 !~ /^#/ && $2 == c && $4 != "FAIL" { print $6 }' "$RESULTS" | median_range)
		MED[$c]=$med
		local cpu
		cpu=$(awk -v c="$c" -v t="$tck" '$1 !~ /^#/ && $2 == c && $4 != "FAIL" { m += $7; p += $8; n += $3 }
			END { if (!n) { print "- | -"; exit }
				printf "%s | %.2f\n", c == "a" ? "-" : sprintf("%.2f", m * 1000 / t / n), p * 1000 / t / n }' "$RESULTS")
		echo "| $desc | $med | $lo – $hi | $cpu |"
	done
	echo
	ratio() { # X Y [TARGET%]
		awk -v x="$1" -v y="$2" -v t="${3:-}" 'BEGIN {
			if (y + 0 == 0 || x + 0 == 0) { print "n/a"; exit }
			r = 100 * x / y
			if (t == "") printf "%.0f %%\n", r
			else printf "%.0f %% (target >= %d %%: %s)\n", r, t, (r >= t ? "PASS" : "FAIL") }'
	}
	echo "c/b (encrypting vs do-nothing replacing milter): $(ratio "${MED[c]:-}" "${MED[b]:-}" 90)"
	echo "c/a (encrypting vs no milter):                   $(ratio "${MED[c]:-}" "${MED[a]:-}")"
	echo "b/a (do-nothing replacing milter vs no milter):  $(ratio "${MED[b]:-}" "${MED[a]:-}")"
	echo "e/d (clear mail vs do-nothing accept at RCPT):   $(ratio "${MED[e]:-}" "${MED[d]:-}" 95)"
	echo "e/a (clear mail vs no milter):                   $(ratio "${MED[e]:-}" "${MED[a]:-}")"
	if [[ -n ${MED[h]:-} ]]; then
		echo "h/i (clear, aliases spread, cold, vs accept at RCPT): $(ratio "${MED[h]:-}" "${MED[i]:-}" 95)"
	fi
	if [[ -n ${MED[f]:-} ]]; then
		echo "e/f (clear mail vs do-nothing accept at header): $(ratio "${MED[e]:-}" "${MED[f]:-}")"
		echo "f/d (accept at first header vs at RCPT):         $(ratio "${MED[f]:-}" "${MED[d]:-}")"
	fi
	if [[ -n ${MED[g]:-} ]]; then
		echo "e/g (clear mail vs do-nothing accept at DATA):   $(ratio "${MED[e]:-}" "${MED[g]:-}")"
		echo "g/d (accept at DATA vs at RCPT):                 $(ratio "${MED[g]:-}" "${MED[d]:-}")"
	fi
	echo
	# Deliveries that did not go straight through would distort the figures.
	local bad
	bad=$(grep -cE 'status=(deferred|bounced)|milter-reject|warning: .*milter' "$PF/maillog" || true)
	echo "Postfix log: $(grep -c 'status=sent' "$PF/maillog" || true) sent, $bad deferred/bounced/milter problems"
}

memory() {
	local mib=$((MEM_SIZE / 1048576)) limit r hwm peak=0 all=""
	limit=$((MEM_SESSIONS * 3 * mib + 64))
	echo
	echo "Memory: $MEM_SESSIONS concurrent $mib MiB messages to $KEYED (smtp-source -s $MEM_SESSIONS -m $MEM_SESSIONS -l $MEM_SIZE), fresh lacre-milter each time${LACRE_ENV:+, $LACRE_ENV}"
	for r in $(seq "$MEM_ROUNDS"); do
		stop_lacre
		start_lacre
		log "memory $r/$MEM_ROUNDS"
		run c "$MEM_SESSIONS" "$MEM_SESSIONS" "$MEM_SIZE" >&2
		hwm=$(awk '/^VmHWM:/ { printf "%d", $2 / 1024 }' "/proc/$LACRE_PID/status")
		all="$all $hwm"
		((hwm > peak)) && peak=$hwm
	done
	echo "peak RSS (VmHWM) MiB:$all; highest $peak MiB (target < $MEM_SESSIONS × 3 × $mib + 64 = $limit MiB: $( ((peak < limit)) && echo PASS || echo FAIL))"
	grep -o 'gogc=[0-9]* gomemlimit_mib=[0-9-]*' "$WORK/lacre/lacre.log" | tail -n 1
}

echo "source: $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]] && echo " + uncommitted changes")"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(go version | cut -d' ' -f3-4); Postfix $(postconf -h mail_version); $(date -u +%F)"
[[ $MODE == memory ]] || throughput
[[ $MODE == throughput ]] || memory
