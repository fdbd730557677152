#!/usr/bin/env bash
# The queue through an outage and a backlog (issue 18), for each engine
# (file; Redis on a local redis-server set up as docs/queue.md requires),
# each on a Caddy and a store of its own:
#
# 1. drain: COUNT deliveries of SIZE stored while the app is down (nothing
#    listens on its port), then the app (bench/upstream) started: the rate
#    at which the workers deliver the backlog, from the app's first
#    request to its last, against the rate of forwarding (openai_webhook +
#    reverse_proxy) the same deliveries to the same app through the same
#    Caddy, CONCURRENCY senders. Reported as drain/forward.
# 2. idle: with the queue empty, the fsync and fdatasync calls Caddy makes
#    in IDLE seconds (strace -f -c on its process), and the bytes it
#    writes (/proc/PID/io wchar).
#
#   bench/drain.sh                      # COUNT=5000: about 2 minutes
#   COUNT=1000 IDLE=2 bench/drain.sh    # a short check
#
# Environment: COUNT (5000), SIZE (1KiB), CONCURRENCY (32), WORKERS (the
# handler's default when unset), IDLE (5 s), CADDY, CADDY_CPUS / LOAD_CPUS,
# OPENAI_WEBHOOK_SECRET. Needs redis-server, redis-cli and strace (Debian:
# redis-server, redis-tools, strace).

source "$(dirname "$0")/lib.sh"

COUNT=${COUNT:-5000}
SIZE=${SIZE:-1KiB}
CONCURRENCY=${CONCURRENCY:-32}
WORKERS=${WORKERS:-}
IDLE=${IDLE:-5}
[[ $COUNT =~ ^[0-9]+$ && $COUNT -ge 100 && $COUNT -le 1000000 ]] || die "COUNT=$COUNT: want 100 to 1000000"
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || die "redis-server and redis-cli are required (apt-get install redis-server redis-tools)"
command -v strace >/dev/null || die "strace is required (apt-get install strace)"

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
build_tools
log "$PIN_NOTE"

APP=$(free_port)
SITE=$(free_port)
REDIS=$(free_port)
ADMIN=$(free_port)
LIFETIME=1800

(pinned "$LOAD_CPUS" redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --dir "$WORK" \
	--appendonly yes --appendfsync always --maxmemory-policy noeviction) >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
STARTED+=("$REDIS_PID")
wait_port "$REDIS" "$REDIS_PID"

# site SETUP: the site's handlers.
site() {
	local workers=""
	[[ -n $WORKERS ]] && workers="workers $WORKERS"
	case $1 in
	forward) printf '\topenai_webhook {env.OPENAI_WEBHOOK_SECRET}\n\treverse_proxy 127.0.0.1:%s\n' "$APP" ;;
	file) printf '\topenai_webhook {env.OPENAI_WEBHOOK_SECRET}\n\twebhook_queue {\n\t\tto http://127.0.0.1:%s/\n\t\tstore file %s\n\t\tmax_pending 1000000\n\t\t%s\n\t}\n' "$APP" "$WORK/drain.queue" "$workers" ;;
	redis) printf '\topenai_webhook {env.OPENAI_WEBHOOK_SECRET}\n\twebhook_queue {\n\t\tto http://127.0.0.1:%s/\n\t\tstore redis {\n\t\t\taddress 127.0.0.1:%s\n\t\t}\n\t\tmax_pending 1000000\n\t\t%s\n\t}\n' "$APP" "$REDIS" "$workers" ;;
	esac
}

start_gateway() {
	cat >"$WORK/Caddyfile" <<EOF
$(global_options "$ADMIN")

http://127.0.0.1:$SITE {
$(site "$1")
}
EOF
	start_caddy "caddy-$1" "$WORK/Caddyfile" "$LIFETIME" "$SITE" "$ADMIN"
	# The queue opens once Caddy has started the whole config.
	if [[ $1 != forward ]]; then
		local i
		for i in $(seq 1 100); do
			[[ $(curl -fsS "http://127.0.0.1:$ADMIN/webhook-queue/queues" | jq length) -gt 0 ]] && return
			sleep 0.05
		done
		die "the queue did not open"
	fi
}

requests() { curl -fsS "http://127.0.0.1:$APP/__stats" | jq '.requests'; }
backlog() { curl -fsS "http://127.0.0.1:$ADMIN/webhook-queue/queues" | jq '[.[].counts | .pending + .scheduled + .in_flight] | add // 0'; }

# drain_rate SETUP: stores COUNT deliveries with the app down, starts it,
# and prints the app's requests/s from its first to its last.
: >"$WORK/drain.tsv"
for setup in forward file redis; do
	redis-cli -p "$REDIS" FLUSHALL >/dev/null
	rm -f "$WORK/drain.queue"
	if [[ $setup == forward ]]; then
		start_upstream "$APP" "$LIFETIME"
		APP_PID=$UPSTREAM_PID
		start_gateway forward
		out="$WORK/forward.json"
		measured "$out" loadgen -mode throughput -label forward -url "http://127.0.0.1:$SITE/webhooks/openai" \
			-duration 120s -max-requests "$COUNT" -concurrency "$CONCURRENCY" -size "$SIZE"
		rate=$(jq '.requests_per_s' "$out")
		printf 'forward\t%s\t%s\n' "$rate" "$(jq '.elapsed_s' "$out")" >>"$WORK/drain.tsv"
		stop_pid "$CADDY_TPID"
		stop_pid "$APP_PID"
		continue
	fi
	start_gateway "$setup"
	measured "$WORK/$setup-store.json" loadgen -mode throughput -label "$setup" -queued -url "http://127.0.0.1:$SITE/webhooks/openai" \
		-duration 300s -max-requests "$COUNT" -concurrency "$CONCURRENCY" -size "$SIZE"
	start_upstream "$APP" "$LIFETIME"
	APP_PID=$UPSTREAM_PID
	first= last=
	for i in $(seq 1 6000); do
		n=$(requests)
		now=$(date +%s.%N)
		[[ -z $first && $n -gt 0 ]] && first=$now
		if [[ $n -ge $COUNT && $(backlog) -eq 0 ]]; then
			last=$now
			break
		fi
		sleep 0.02
	done
	[[ -n $last ]] || die "$setup: the backlog did not drain in 120 s"
	n=$(requests)
	rate=$(awk -v n="$n" -v a="$first" -v b="$last" 'BEGIN { printf "%.0f", n / (b - a) }')
	secs=$(awk -v a="$first" -v b="$last" 'BEGIN { printf "%.2f", b - a }')
	# Idle: the queue is empty now.
	sleep 1
	w0=$(awk '$1 == "wchar:" { print $2 }' "/proc/$CADDY_PID/io")
	timeout -s INT "$IDLE" strace -f -c -e trace=fsync,fdatasync,pwrite64,write -p "$CADDY_PID" -o "$WORK/$setup-strace.txt" 2>/dev/null || true
	w1=$(awk '$1 == "wchar:" { print $2 }' "/proc/$CADDY_PID/io")
	syncs=$(awk '$NF == "fsync" || $NF == "fdatasync" { s += $4 } END { print s + 0 }' "$WORK/$setup-strace.txt")
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$setup" "$rate" "$secs" "$n" "$syncs" "$((w1 - w0))" >>"$WORK/drain.tsv"
	stop_pid "$CADDY_TPID"
	stop_pid "$APP_PID"
done

echo
echo "== bench/drain.sh: COUNT=$COUNT SIZE=$SIZE CONCURRENCY=$CONCURRENCY WORKERS=${WORKERS:-default} IDLE=$IDLE"
echo "Caddy: $CADDY"
echo "pinning: $PIN_NOTE"
echo "machine: $(nproc --all) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load average at the start: $LOADAVG"
echo "commands (loadgen = go run ./bench/loadgen, built once and pinned):"
printf '  %s\n' "${COMMANDS[@]}"
echo
forward=$(awk -F'\t' '$1 == "forward" { print $2 }' "$WORK/drain.tsv")
printf '%-8s | %12s | %9s | %14s | %17s | %s\n' setup "requests/s" seconds "drain/forward" "idle fsyncs (${IDLE}s)" "idle bytes written"
awk -F'\t' -v f="$forward" '
	$1 == "forward" { printf "%-8s | %12.0f | %9.2f | %14s | %17s | %s\n", "forward", $2, $3, "", "", "" }
	$1 != "forward" { printf "%-8s | %12.0f | %9.2f | %14.3f | %17d | %d\n", $1, $2, $3, $2 / f, $5, $6 }' "$WORK/drain.tsv"
echo "(drain: the app's requests from its first to its last while the backlog of $COUNT drained; idle: strace -f -c of Caddy, /proc/PID/io wchar)"
