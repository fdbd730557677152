# Shared by the scripts of bench/; sourced, not run.
#
# Every server listens on 127.0.0.1 only. Every process started here is
# recorded and stopped by its id when the script exits (trap EXIT), and each
# also stops by itself: the upstream after -lifetime, Caddy under timeout(1).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# The secret the gateway verifies with and the load generator signs with.
# Default: the public demo/test secret (internal/webhooktest.Secret).
export OPENAI_WEBHOOK_SECRET=${OPENAI_WEBHOOK_SECRET:-whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c=}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/openai-webhook-bench.XXXXXX")
STARTED=()     # ids of the processes this script started
KEEP_WORK=0    # set to 1 to keep $WORK (logs) after a failure

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; KEEP_WORK=1; exit 1; }

cleanup() {
	local status=$?
	local pid
	for pid in "${STARTED[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${STARTED[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [[ $status -ne 0 || $KEEP_WORK -eq 1 ]]; then
		for f in "$WORK"/*.log; do
			[[ -s $f ]] || continue
			log "last lines of $f:"
			tail -n 15 "$f" >&2
		done
		log "logs kept in $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v jq >/dev/null || die "jq is required (apt-get install jq)"

# CPU pinning: Caddy on CADDY_CPUS, the load generator and the upstream on
# LOAD_CPUS, so that they do not take each other's core.
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc --all)
PIN_NOTE=
if ! command -v taskset >/dev/null; then
	CADDY_CPUS= LOAD_CPUS=
	PIN_NOTE="taskset not found (util-linux): processes are NOT pinned"
elif [[ $NCPU -lt 2 ]]; then
	CADDY_CPUS= LOAD_CPUS=
	PIN_NOTE="only $NCPU CPU: processes are NOT pinned"
else
	CADDY_CPUS=${CADDY_CPUS:-0}
	LOAD_CPUS=${LOAD_CPUS:-1}
	PIN_NOTE="Caddy pinned to CPU $CADDY_CPUS; load generator and upstream pinned to CPU $LOAD_CPUS (taskset)"
fi

# pinned CPUS CMD...: runs CMD on CPUS if pinning is on.
pinned() {
	local cpus=$1
	shift
	if [[ -n $cpus ]]; then
		exec taskset -c "$cpus" "$@"
	else
		exec "$@"
	fi
}

# build_tools: the Caddy binary ($CADDY, default: the cached xcaddy build of
# this checkout) and the load generator and upstream, built once into $WORK
# so that they can be pinned and their start is not a compilation.
build_tools() {
	if [[ -z ${CADDY:-} ]]; then
		log "building/getting Caddy: go run ./internal/cmd/buildcaddy"
		CADDY=$(go run ./internal/cmd/buildcaddy 2>"$WORK/buildcaddy.log") || die "buildcaddy failed (see $WORK/buildcaddy.log)"
	fi
	[[ -x $CADDY ]] || die "CADDY=$CADDY is not an executable"
	log "Caddy: $CADDY ($("$CADDY" version | cut -d' ' -f1))"
	go build -o "$WORK/loadgen" ./bench/loadgen || die "building bench/loadgen"
	go build -o "$WORK/upstream" ./bench/upstream || die "building bench/upstream"
}

# free_port: prints a TCP port of 127.0.0.1 that nothing listens on, below
# the ephemeral range so that client connections never take it meanwhile.
USED_PORTS=" "
free_port() {
	local p i
	for i in $(seq 1 200); do
		p=$((20000 + RANDOM % 12000))
		[[ $USED_PORTS == *" $p "* ]] && continue
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			USED_PORTS+="$p "
			echo "$p"
			return
		fi
	done
	die "no free port found"
}

# wait_port PORT PID: waits until 127.0.0.1:PORT accepts connections, while
# PID is alive.
wait_port() {
	local port=$1 pid=$2 i
	for i in $(seq 1 300); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			return 0
		fi
		kill -0 "$pid" 2>/dev/null || die "process $pid exited before listening on 127.0.0.1:$port"
		sleep 0.1
	done
	die "nothing listens on 127.0.0.1:$port after 30s"
}

# start_upstream PORT LIFETIME_S: starts bench/upstream; sets UPSTREAM_PID.
start_upstream() {
	local port=$1 lifetime=$2
	(pinned "$LOAD_CPUS" "$WORK/upstream" -addr "127.0.0.1:$port" -lifetime "${lifetime}s") >"$WORK/upstream.log" 2>&1 &
	UPSTREAM_PID=$!
	STARTED+=("$UPSTREAM_PID")
	wait_port "$port" "$UPSTREAM_PID"
}

# start_caddy NAME CADDYFILE LIFETIME_S PORT...: runs Caddy on CADDYFILE under
# timeout(1) and waits for PORTs; sets CADDY_PID to Caddy's own process id
# (for /proc) and CADDY_TPID to timeout's, which forwards a stop signal to it.
start_caddy() {
	local name=$1 caddyfile=$2 lifetime=$3
	shift 3
	local pin=()
	[[ -n $CADDY_CPUS ]] && pin=(taskset -c "$CADDY_CPUS")
	mkdir -p "$WORK/$name"
	XDG_CONFIG_HOME="$WORK/$name/config" XDG_DATA_HOME="$WORK/$name/data" \
		timeout -s TERM -k 5 "$lifetime" "${pin[@]}" "$CADDY" run --config "$caddyfile" --adapter caddyfile \
		>"$WORK/$name.log" 2>&1 &
	local tpid=$!
	STARTED+=("$tpid")
	CADDY_TPID=$tpid
	local i
	CADDY_PID=
	for i in $(seq 1 100); do
		CADDY_PID=$(pgrep -P "$tpid" || true)
		[[ -n $CADDY_PID ]] && break
		sleep 0.05
	done
	[[ -n $CADDY_PID ]] || die "Caddy ($name) did not start"
	local port
	for port in "$@"; do
		wait_port "$port" "$CADDY_PID"
	done
	# taskset exec'd Caddy: timeout's child is Caddy itself.
	case $(cat "/proc/$CADDY_PID/comm") in
	timeout | taskset) die "process $CADDY_PID is not Caddy yet" ;;
	esac
}

# stop_pid PID: stops one process this script started, waits for it and
# forgets it (its id may be reused afterwards).
stop_pid() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	local keep=() pid
	for pid in "${STARTED[@]}"; do
		[[ $pid == "$1" ]] || keep+=("$pid")
	done
	STARTED=("${keep[@]}")
}

# /proc readings of a process.
vm_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; } # vm_kib PID VmRSS|VmHWM
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }            # utime+stime, in 1/CLK_TCK s
rchar() { awk '$1 == "rchar:" { print $2 }' "/proc/$1/io"; }             # bytes read by read(2)-like calls, sockets included
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }             # KiB → MiB

# run_loadgen OUT ARGS...: runs the pinned load generator with -json, its
# result in OUT; returns its exit status (1 when one of its checks failed).
run_loadgen() {
	local out=$1
	shift
	local status=0
	(pinned "$LOAD_CPUS" "$WORK/loadgen" -json "$@") >"$out" 2>>"$WORK/loadgen.log" || status=$?
	[[ $status -le 1 && -s $out ]] || die "loadgen failed to run (status $status): $(tail -n 3 "$WORK/loadgen.log")"
	return "$status"
}

# max_requests SIZE SECONDS: the bound (and pre-signed count) of one
# measurement of SIZE bodies (bytes, or with KiB or MiB), above what the
# gateway serves in SECONDS on one core, so that the measurement lasts its
# time; one that exhausts it still reports a correct rate.
max_requests() {
	local bytes
	case $1 in
	*MiB) bytes=$((${1%MiB} << 20)) ;;
	*KiB) bytes=$((${1%KiB} << 10)) ;;
	*) bytes=$1 ;;
	esac
	if ((bytes <= 4096)); then
		echo $(($2 * 25000))
	elif ((bytes <= 65536)); then
		echo $(($2 * 7000))
	else
		echo $(($2 * 1000))
	fi
}

# global_options ADMIN [LINES]: the global options block each script's
# Caddyfile starts with: the admin endpoint on 127.0.0.1:ADMIN, no config
# persisted, a short grace period, every site bound to 127.0.0.1; LINES
# (tab-indented options) go inside it too.
global_options() {
	printf '{\n\tadmin 127.0.0.1:%s\n\tpersist_config off\n\tgrace_period 5s\n\tdefault_bind 127.0.0.1\n' "$1"
	[[ -z ${2:-} ]] || printf '%s\n' "$2"
	printf '}\n'
}

# AWK_MEDIAN: an awk function for the reports, median(list) of a list of
# numbers separated by spaces. Put it before the program: awk "$AWK_MEDIAN"'...'
AWK_MEDIAN='
	function median(list,   a, n, i, j, t) {
		n = split(list, a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}'

# The commands measured and the failures seen, for the scripts' reports.
FAILED=()
COMMANDS=()
# measured RESULT_JSON CMD...: runs loadgen with CMD's arguments, reading
# Caddy's CPU ticks and rchar around it; appends "ticks rchar" to the
# result as .caddy.
measured() {
	local out=$1
	shift
	local t0 r0 t1 r1 status=0
	local q
	printf -v q '%q ' "$@"
	COMMANDS+=("${q% }")
	log "running: ${q% }"
	t0=$(cpu_ticks "$CADDY_PID")
	r0=$(rchar "$CADDY_PID")
	run_loadgen "$out.raw" "${@:2}" || status=$?
	t1=$(cpu_ticks "$CADDY_PID")
	r1=$(rchar "$CADDY_PID")
	jq --argjson ticks $((t1 - t0)) --argjson rchar $((r1 - r0)) --argjson hz "$CLK_TCK" \
		'. + {caddy: {cpu_s: ($ticks / $hz), rchar: $rchar}}' "$out.raw" >"$out"
	if [[ $status -ne 0 ]]; then
		FAILED+=("$(jq -r '"\(.mode) \(.label // "") \(.size) B: \(.failures | join("; "))"' "$out")")
	fi
}

