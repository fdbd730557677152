#!/usr/bin/env bash
# Replay stores under load (issue 8): one Caddy, three sites on the same
# upstream (bench/upstream), the same load generator at 1 KiB and 64
# concurrent senders:
#
#   plain    reverse_proxy alone
#   memory   openai_webhook (the default memory store) + reverse_proxy
#   redis    openai_webhook with replay_store redis (a local redis-server
#            this script starts) + reverse_proxy
#
# ROUNDS rounds of the three, DURATION seconds each, in turning order
# (plain memory redis, then redis memory plain, ...), every request a valid
# delivery with its own webhook-id. Reports requests/s, latency and Caddy
# CPU per request per setup, the ratio redis/memory, and the Redis round
# trips per delivery (INFO commandstats: the EVAL and EVALSHA calls the
# gateway made; the GETs and SETs the scripts run inside Redis are counted
# apart).
#
#   bench/stores.sh                      # DURATION=20 ROUNDS=2: about 2.5 minutes
#   DURATION=3 ROUNDS=1 bench/stores.sh  # a short check
#
# Environment: DURATION (s per run, default 20), ROUNDS (2), CONCURRENCY
# (64), SIZE (1KiB), CADDY (a Caddy binary to use instead of building),
# CADDY_CPUS / LOAD_CPUS (pinning, default 0 / 1), OPENAI_WEBHOOK_SECRET.
# Needs redis-server and redis-cli (Debian: redis-server, redis-tools).

source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-2}
CONCURRENCY=${CONCURRENCY:-64}
SIZE=${SIZE:-1KiB}
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 600 ]] || die "DURATION=$DURATION: want 1 to 600 seconds"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le 10 ]] || die "ROUNDS=$ROUNDS: want 1 to 10"
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || die "redis-server and redis-cli are required (apt-get install redis-server redis-tools)"

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
build_tools
log "$PIN_NOTE"

UP=$(free_port)
PLAIN=$(free_port)
MEMORY=$(free_port)
REDIS_SITE=$(free_port)
REDIS=$(free_port)
ADMIN=$(free_port)
LIFETIME=$((ROUNDS * 3 * (DURATION + 30) + 300))

# Redis on the load generator's CPU, like the upstream: Caddy keeps its own.
(pinned "$LOAD_CPUS" redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK") >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
STARTED+=("$REDIS_PID")
wait_port "$REDIS" "$REDIS_PID"

cat >"$WORK/Caddyfile" <<EOF
$(global_options "$ADMIN")

http://127.0.0.1:$PLAIN {
	reverse_proxy 127.0.0.1:$UP
}

http://127.0.0.1:$MEMORY {
	openai_webhook {env.OPENAI_WEBHOOK_SECRET}
	reverse_proxy 127.0.0.1:$UP
}

http://127.0.0.1:$REDIS_SITE {
	openai_webhook {env.OPENAI_WEBHOOK_SECRET} {
		replay_store redis {
			address 127.0.0.1:$REDIS
		}
	}
	reverse_proxy 127.0.0.1:$UP
}
EOF
start_upstream "$UP" "$LIFETIME"
start_caddy caddy "$WORK/Caddyfile" "$LIFETIME" "$PLAIN" "$MEMORY" "$REDIS_SITE" "$ADMIN"
sleep 1

# redis_calls: the script calls (EVAL, EVALSHA) Redis has served so far,
# and every command, those run by scripts included.
redis_calls() {
	redis-cli -p "$REDIS" INFO commandstats | awk -F'[=,:]' '
		/^cmdstat_/ { all += $3 }
		/^cmdstat_eval(sha)?:/ { calls += $3 }
		END { print calls + 0, all + 0 }'
}

: >"$WORK/stores.tsv"
REDIS_CALLS=0 REDIS_COMMANDS=0 REDIS_DELIVERIES=0
for round in $(seq 1 "$ROUNDS"); do
	order="plain memory redis"
	((round % 2 == 0)) && order="redis memory plain"
	for setup in $order; do
		case $setup in
		plain) port=$PLAIN ;;
		memory) port=$MEMORY ;;
		redis) port=$REDIS_SITE ;;
		esac
		out="$WORK/stores-$round-$setup.json"
		read -r calls_before commands_before < <(redis_calls)
		measured "$out" loadgen -mode throughput -label "$setup" -url "http://127.0.0.1:$port/webhooks/openai" \
			-upstream-stats "http://127.0.0.1:$UP/__stats" \
			-duration "${DURATION}s" -max-requests "$((DURATION * 25000))" -concurrency "$CONCURRENCY" -size "$SIZE"
		if [[ $setup == redis ]]; then
			read -r calls_after commands_after < <(redis_calls)
			REDIS_CALLS=$((REDIS_CALLS + calls_after - calls_before))
			REDIS_COMMANDS=$((REDIS_COMMANDS + commands_after - commands_before))
			REDIS_DELIVERIES=$((REDIS_DELIVERIES + $(jq '.responses' "$out")))
		fi
		jq -r --arg round "$round" '[.label, $round, .requests_per_s, .latency_ms.p50, .latency_ms.p99,
			(if .responses > 0 then .caddy.cpu_s * 1e6 / .responses else 0 end), .errors] | @tsv' "$out" >>"$WORK/stores.tsv"
	done
done
stop_pid "$CADDY_TPID"

echo
echo "== bench/stores.sh: DURATION=$DURATION ROUNDS=$ROUNDS CONCURRENCY=$CONCURRENCY SIZE=$SIZE"
echo "Caddy: $CADDY"
echo "pinning: $PIN_NOTE"
echo "machine: $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), load average at the start: $LOADAVG"
echo "redis-server: $(redis-server --version | cut -d' ' -f3), pinned with the load generator"
echo "commands (loadgen = go run ./bench/loadgen, built once and pinned):"
printf '  %s\n' "${COMMANDS[@]}"
echo
echo "   per run (setup, round, requests/s, p50 ms, p99 ms, Caddy CPU µs/request, errors):"
awk -F'\t' '{ printf "   %-7s %s  %8.0f  %7.3f  %7.3f  %7.1f  %d\n", $1, $2, $3, $4, $5, $6, $7 }' "$WORK/stores.tsv"
echo
awk -F'\t' '
	{ n[$1]++; rps[$1] += $3; p50[$1] += $4; p99[$1] += $5; cpu[$1] += $6 }
	END {
		printf "%-30s | %11s | %8s | %8s | %13s\n", "setup", "requests/s", "p50 ms", "p99 ms", "Caddy µs/req"
		printf "%-30s-+-%11s-+-%8s-+-%8s-+-%13s\n", "------------------------------", "-----------", "--------", "--------", "-------------"
		split("plain memory redis", S, " ")
		for (i = 1; i <= 3; i++) {
			s = S[i]
			if (n[s]) printf "%-30s | %11.0f | %8.3f | %8.3f | %13.1f\n", s, rps[s]/n[s], p50[s]/n[s], p99[s]/n[s], cpu[s]/n[s]
		}
		if (n["memory"] && n["redis"])
			printf "%-30s | %11.3f | %8.3f | %8.3f | %13.3f\n", "ratio redis/memory", (rps["redis"]/n["redis"])/(rps["memory"]/n["memory"]),
				(p50["redis"]/n["redis"])/(p50["memory"]/n["memory"]), (p99["redis"]/n["redis"])/(p99["memory"]/n["memory"]), (cpu["redis"]/n["redis"])/(cpu["memory"]/n["memory"])
	}' "$WORK/stores.tsv"
echo
per_delivery() { awk -v c="$1" -v d="$REDIS_DELIVERIES" 'BEGIN { printf "%.3f", d ? c / d : 0 }'; }
echo "Redis round trips per delivery (EVAL/EVALSHA calls during the redis runs): $REDIS_CALLS / $REDIS_DELIVERIES = $(per_delivery "$REDIS_CALLS")"
echo "Redis commands per delivery, those the scripts run included: $REDIS_COMMANDS / $REDIS_DELIVERIES = $(per_delivery "$REDIS_COMMANDS")"
echo
if ((${#FAILED[@]} > 0)); then
	printf 'FAILED: %s\n' "${FAILED[@]}"
	exit 1
fi
echo "RESULT: OK (no transport error, no wrong status, forwarding matched in every run)"
