#!/usr/bin/env bash
# Queue mode (issue 11), in one run; each setup on a Caddy and a store of
# its own:
#
# 1. What the sender waits for when the app takes 1 s per delivery
#    (bench/upstream -delay 1s): forwarding (openai_webhook +
#    reverse_proxy) against queue mode (file engine), SLOW_CONCURRENCY
#    senders each sending back to back.
# 2. The sustained enqueue rate of each engine: queue mode with the file
#    engine, and with the Redis engine on a local redis-server set up as
#    docs/queue.md requires (appendonly yes, appendfsync always), in front
#    of a fast app that the workers deliver to meanwhile; CONCURRENCY
#    senders. Reported with what the workers delivered during the run and
#    the backlog left at its end (the admin API's counts).
#
# Every delivery is valid, with its own webhook-id, SIZE bytes; the replay
# store is the memory one throughout. ROUNDS rounds, DURATION seconds per
# setup, in turning order.
#
#   bench/queue.sh                      # DURATION=20 ROUNDS=2: about 4 minutes
#   DURATION=3 ROUNDS=1 bench/queue.sh  # a short check
#
# Environment: DURATION (s per run, default 20), ROUNDS (2), CONCURRENCY
# (64), SLOW_CONCURRENCY (16), SIZE (1KiB), WORKERS (the queue's workers;
# the handler's default when unset), CADDY (a Caddy binary to use
# instead of building), CADDY_CPUS / LOAD_CPUS (pinning, default 0 / 1),
# OPENAI_WEBHOOK_SECRET. Needs redis-server and redis-cli (Debian:
# redis-server, redis-tools).

source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-2}
CONCURRENCY=${CONCURRENCY:-64}
SLOW_CONCURRENCY=${SLOW_CONCURRENCY:-16}
SIZE=${SIZE:-1KiB}
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 600 ]] || die "DURATION=$DURATION: want 1 to 600 seconds"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le 10 ]] || die "ROUNDS=$ROUNDS: want 1 to 10"
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || die "redis-server and redis-cli are required (apt-get install redis-server redis-tools)"
command -v curl >/dev/null || die "curl is required"

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
build_tools
log "$PIN_NOTE"

FAST=$(free_port)
SLOW=$(free_port)
SITE=$(free_port)
REDIS=$(free_port)
ADMIN=$(free_port)
LIFETIME=$((ROUNDS * 4 * (DURATION + 30) + 300))

# Redis on the load generator's CPU, like the upstreams: Caddy keeps its own.
(pinned "$LOAD_CPUS" redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --dir "$WORK" \
	--appendonly yes --appendfsync always --maxmemory-policy noeviction) >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
STARTED+=("$REDIS_PID")
wait_port "$REDIS" "$REDIS_PID"

start_upstream "$FAST" "$LIFETIME"
(pinned "$LOAD_CPUS" "$WORK/upstream" -addr "127.0.0.1:$SLOW" -lifetime "${LIFETIME}s" -delay 1s) >"$WORK/upstream-slow.log" 2>&1 &
STARTED+=("$!")
wait_port "$SLOW" "$!"

# site SETUP: the site's handlers for a setup.
site() {
	case $1 in
	forward) printf '\topenai_webhook {env.OPENAI_WEBHOOK_SECRET}\n\treverse_proxy 127.0.0.1:%s\n' "$SLOW" ;;
	queue-slow) queue_site "http://127.0.0.1:$SLOW/" "store file $WORK/$round-slow.queue" ;;
	queue-file) queue_site "http://127.0.0.1:$FAST/" "store file $WORK/$round-file.queue" ;;
	queue-redis) queue_site "http://127.0.0.1:$FAST/" "store redis {
				address 127.0.0.1:$REDIS
			}" ;;
	esac
}
queue_site() {
	cat <<EOF
	openai_webhook {env.OPENAI_WEBHOOK_SECRET}
	webhook_queue {
		to $1
		$2
		max_pending 1000000${WORKERS:+
		workers $WORKERS}
	}
EOF
}

delivered() { curl -fsS "http://127.0.0.1:$FAST/__stats" | jq '.requests'; }
# backlog: the messages of the running queue not yet delivered.
backlog() {
	curl -fsS "http://127.0.0.1:$ADMIN/webhook-queue/queues" | jq '[.[].counts | .pending + .scheduled + .in_flight] | add // 0'
}

# Each run has a Caddy of its own and a store of its own (a new file, an
# emptied Redis): what an earlier run queued is not delivered during it.
: >"$WORK/queue.tsv"
for round in $(seq 1 "$ROUNDS"); do
	order="forward queue-slow queue-file queue-redis"
	((round % 2 == 0)) && order="queue-redis queue-file queue-slow forward"
	for setup in $order; do
		queued=(-queued)
		concurrency=$CONCURRENCY
		case $setup in
		forward) queued=() concurrency=$SLOW_CONCURRENCY ;;
		queue-slow) concurrency=$SLOW_CONCURRENCY ;;
		esac
		redis-cli -p "$REDIS" FLUSHALL >/dev/null
		cat >"$WORK/Caddyfile" <<EOF
$(global_options "$ADMIN")

http://127.0.0.1:$SITE {
$(site "$setup")
}
EOF
		start_caddy "caddy-$round-$setup" "$WORK/Caddyfile" "$((DURATION + 120))" "$SITE" "$ADMIN"
		sleep 1
		out="$WORK/queue-$round-$setup.json"
		before=$(delivered)
		measured "$out" loadgen -mode throughput -label "$setup" -url "http://127.0.0.1:$SITE/webhooks/openai" "${queued[@]}" \
			-duration "${DURATION}s" -max-requests "$((DURATION * 25000))" -concurrency "$concurrency" -size "$SIZE"
		after=$(delivered)
		left=0
		[[ $setup == forward ]] || left=$(backlog)
		stop_pid "$CADDY_TPID"
		jq -r --arg round "$round" --argjson c "$concurrency" --argjson d $((after - before)) --argjson left "$left" --argjson secs "$DURATION" \
			'[.label, $round, $c, .requests_per_s, .latency_ms.p50, .latency_ms.p99,
			(if .responses > 0 then .caddy.cpu_s * 1e6 / .responses else 0 end), ($d / $secs), $left, .errors] | @tsv' "$out" >>"$WORK/queue.tsv"
	done
done

echo
echo "== bench/queue.sh: DURATION=$DURATION ROUNDS=$ROUNDS CONCURRENCY=$CONCURRENCY SLOW_CONCURRENCY=$SLOW_CONCURRENCY SIZE=$SIZE"
echo "Caddy: $CADDY"
echo "pinning: $PIN_NOTE"
echo "machine: $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), load average at the start: $LOADAVG"
echo "queue file and AOF on: $(df -T "$WORK" | awk 'NR == 2 { print $2 " (" $1 ")" }')"
echo "redis-server: $(redis-server --version | cut -d' ' -f3), appendonly yes, appendfsync always, pinned with the load generator"
echo "commands (loadgen = go run ./bench/loadgen, built once and pinned):"
printf '  %s\n' "${COMMANDS[@]}"
echo
echo "   per run (setup, round, senders, answered/s, p50 ms, p99 ms, Caddy CPU µs/request, delivered to the fast app/s, backlog at the end, errors):"
awk -F'\t' '{ printf "   %-11s %s  %3d  %8.0f  %9.3f  %9.3f  %7.1f  %7.0f  %7d  %d\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' "$WORK/queue.tsv"
echo
awk -F'\t' '
	{ n[$1]++; c[$1] = $3; rps[$1] += $4; p50[$1] += $5; p99[$1] += $6; cpu[$1] += $7; dps[$1] += $8 }
	END {
		printf "%-12s | %7s | %10s | %10s | %10s | %12s | %12s\n", "setup", "senders", "answered/s", "p50 ms", "p99 ms", "Caddy µs/req", "delivered/s"
		printf "%-12s-+-%7s-+-%10s-+-%10s-+-%10s-+-%12s-+-%12s\n", "------------", "-------", "----------", "----------", "----------", "------------", "------------"
		split("forward queue-slow queue-file queue-redis", S, " ")
		for (i = 1; i <= 4; i++) {
			s = S[i]
			if (!n[s]) continue
			d = (s == "queue-file" || s == "queue-redis") ? sprintf("%12.0f", dps[s]/n[s]) : sprintf("%12s", "-")
			printf "%-12s | %7d | %10.0f | %10.3f | %10.3f | %12.1f | %s\n", s, c[s], rps[s]/n[s], p50[s]/n[s], p99[s]/n[s], cpu[s]/n[s], d
		}
	}' "$WORK/queue.tsv"
echo
echo "forward and queue-slow: the app takes 1 s per delivery; queue-file and queue-redis: the app answers at once."
if ((${#FAILED[@]} > 0)); then
	printf 'FAILED: %s\n' "${FAILED[@]}"
	exit 1
fi
echo "RESULT: OK (no transport error, every delivery answered 200 as its mode says)"
