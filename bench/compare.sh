#!/usr/bin/env bash
# End-to-end cost of openai_webhook (issue 4). One Caddy binary serves the
# same upstream (bench/upstream) twice in the same run: through a plain
# reverse_proxy on one port, and through openai_webhook + reverse_proxy on
# another. The same load generator, concurrency and body size drive both.
#
#   1. throughput: for each size (1KiB, 64KiB), ROUNDS rounds of plain and
#      webhook (ABBA order, to average out drift), DURATION seconds each.
#      Every request is a valid delivery with its own webhook-id, so replay
#      refusal never short-circuits; plain reverse_proxy gets the same signed
#      requests and ignores the headers.
#   2. refuse: floods of unsigned and of stale requests declaring a 1 MiB
#      body (Content-Length) against the webhook port: requests/s, Caddy CPU
#      time per refusal (/proc/PID/stat utime+stime), bytes Caddy read per
#      refusal (/proc/PID/io rchar), bytes the client wrote, and what the
#      upstream received (must be 0).
#   3. memory: a fresh Caddy with max_size 2MiB, 64 concurrent valid 1 MiB
#      deliveries (MEM_REQUESTS in all, default 512): baseline VmRSS and peak
#      VmHWM, and whether peak < baseline + 1.5 × 64 MiB.
#
#   bench/compare.sh                      # DURATION=30: about 6 minutes
#   DURATION=3 ROUNDS=1 bench/compare.sh  # a short check
#
# Environment: DURATION (s per run, default 30), ROUNDS (2), CONCURRENCY
# (32), SIZES ("1KiB 64KiB"), REFUSE_SIZE (1MiB), MEM_REQUESTS (512),
# MEM_CONCURRENCY (64), PARTS ("throughput refuse memory"), CADDY (a Caddy
# binary to use instead of building), CADDY_CPUS / LOAD_CPUS (pinning,
# default 0 / 1), OPENAI_WEBHOOK_SECRET (default: the public test secret).

source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-30}
ROUNDS=${ROUNDS:-2}
CONCURRENCY=${CONCURRENCY:-32}
SIZES=${SIZES:-1KiB 64KiB}
REFUSE_SIZE=${REFUSE_SIZE:-1MiB}
MEM_REQUESTS=${MEM_REQUESTS:-512}
MEM_CONCURRENCY=${MEM_CONCURRENCY:-64}
PARTS=${PARTS:-throughput refuse memory}
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 600 ]] || die "DURATION=$DURATION: want 1 to 600 seconds"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le 10 ]] || die "ROUNDS=$ROUNDS: want 1 to 10"

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
build_tools
log "$PIN_NOTE"

UP=$(free_port)
PLAIN=$(free_port)
HOOK=$(free_port)
DIAG=$(free_port)
ADMIN=$(free_port)
RUNS=$(( $(wc -w <<<"$SIZES") * ROUNDS * 2 + 3 ))
LIFETIME=$((RUNS * (DURATION + 60) + 600))
cat >"$WORK/Caddyfile" <<EOF
$(global_options "$ADMIN" "	# Diagnostic server for the refuse part only: without Caddy's default
	# body idle timeout, net/http does not drain unread request bodies.
	servers 127.0.0.1:$DIAG {
		timeouts {
			read_body_idle -1s
		}
	}")

# plain: the same upstream, no verification
http://127.0.0.1:$PLAIN {
	reverse_proxy 127.0.0.1:$UP
}

# webhook: verification, then the same reverse_proxy
http://127.0.0.1:$HOOK {
	openai_webhook {env.OPENAI_WEBHOOK_SECRET}
	reverse_proxy 127.0.0.1:$UP
}

# webhook-diag: the webhook site on a server with read_body_idle off
http://127.0.0.1:$DIAG {
	openai_webhook {env.OPENAI_WEBHOOK_SECRET}
	reverse_proxy 127.0.0.1:$UP
}
EOF

start_upstream "$UP" "$LIFETIME"
start_caddy caddy "$WORK/Caddyfile" "$LIFETIME" "$PLAIN" "$HOOK" "$DIAG" "$ADMIN"
log "Caddy pid $CADDY_PID: plain 127.0.0.1:$PLAIN, webhook 127.0.0.1:$HOOK; upstream pid $UPSTREAM_PID on 127.0.0.1:$UP"
sleep 1

# ---- 1. throughput -----------------------------------------------------
if [[ " $PARTS " == *" throughput "* ]]; then
	: >"$WORK/throughput.tsv"
	for size in $SIZES; do
		max=$(max_requests "$size" "$DURATION")
		for round in $(seq 1 "$ROUNDS"); do
			order="plain webhook"
			((round % 2 == 0)) && order="webhook plain"
			for setup in $order; do
				port=$PLAIN
				[[ $setup == webhook ]] && port=$HOOK
				out="$WORK/tp-$size-$round-$setup.json"
				measured "$out" loadgen -mode throughput -label "$setup" -url "http://127.0.0.1:$port/webhooks/openai" \
					-upstream-stats "http://127.0.0.1:$UP/__stats" \
					-duration "${DURATION}s" -max-requests "$max" -concurrency "$CONCURRENCY" -size "$size"
				jq -r --arg size "$size" --arg round "$round" \
					'[$size, .label, $round, .requests_per_s, .latency_ms.p50, .latency_ms.p99, .latency_ms.max,
					  (.caddy.cpu_s / .elapsed_s * 100), (if .responses > 0 then .caddy.cpu_s * 1e6 / .responses else 0 end),
					  .errors, .stop_reason] | @tsv' "$out" >>"$WORK/throughput.tsv"
			done
		done
	done
fi

# ---- 2. refuse ---------------------------------------------------------
if [[ " $PARTS " == *" refuse "* ]]; then
	: >"$WORK/refuse.tsv"
	for row in unsigned:$HOOK stale:$HOOK unsigned:$DIAG; do
		kind=${row%%:*} port=${row#*:} label=$kind
		[[ $port == "$DIAG" ]] && label="$kind/read_body_idle-off(diagnostic)"
		out="$WORK/refuse-$kind-$port.json"
		measured "$out" loadgen -mode refuse -refuse-kind "$kind" -label "$label" -url "http://127.0.0.1:$port/webhooks/openai" \
			-upstream-stats "http://127.0.0.1:$UP/__stats" \
			-duration "${DURATION}s" -max-requests "$((DURATION * 20000))" -concurrency "$CONCURRENCY" -size "$REFUSE_SIZE"
		# Per request refused: answered, or reset because the refusal closed the
		# connection while the client was still writing the body it announced.
		jq -r --arg kind "$kind" '(.responses + .errors) as $n | [.label, $n, .requests_per_s,
			((.kinds[$kind].outcomes | to_entries | map("\(.key): \(.value)")) + ["reset: \(.errors)"] | join(" ")),
			(if $n > 0 then .caddy.cpu_s * 1e6 / $n else 0 end),
			(if $n > 0 then .caddy.rchar / $n else 0 end),
			.client.written_per_request_kib, .client.dials, .upstream.requests, .upstream.bytes, .errors] | @tsv' "$out" >>"$WORK/refuse.tsv"
	done
fi

stop_pid "$CADDY_TPID"

# ---- 3. memory ---------------------------------------------------------
if [[ " $PARTS " == *" memory "* ]]; then
	MEM=$(free_port)
	MEM_ADMIN=$(free_port)
	cat >"$WORK/Caddyfile.memory" <<EOF
$(global_options "$MEM_ADMIN")

http://127.0.0.1:$MEM {
	openai_webhook {env.OPENAI_WEBHOOK_SECRET} {
		max_size 2MiB
	}
	reverse_proxy 127.0.0.1:$UP
}
EOF
	start_caddy caddy-memory "$WORK/Caddyfile.memory" 900 "$MEM" "$MEM_ADMIN"
	sleep 1
	BASE_RSS=$(vm_kib "$CADDY_PID" VmRSS)
	BASE_HWM=$(vm_kib "$CADDY_PID" VmHWM)
	out="$WORK/memory.json"
	measured "$out" loadgen -mode throughput -label memory -url "http://127.0.0.1:$MEM/webhooks/openai" \
		-upstream-stats "http://127.0.0.1:$UP/__stats" \
		-duration 120s -max-requests "$MEM_REQUESTS" -concurrency "$MEM_CONCURRENCY" -size 1MiB -timeout 60s
	PEAK=$(vm_kib "$CADDY_PID" VmHWM)
	AFTER_RSS=$(vm_kib "$CADDY_PID" VmRSS)
fi

# ---- report ------------------------------------------------------------
echo
echo "== bench/compare.sh: DURATION=$DURATION ROUNDS=$ROUNDS CONCURRENCY=$CONCURRENCY SIZES=\"$SIZES\" REFUSE_SIZE=$REFUSE_SIZE PARTS=\"$PARTS\""
echo "Caddy: $CADDY"
echo "pinning: $PIN_NOTE"
echo "machine: $(nproc --all) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load average at the start: $LOADAVG"
echo "commands (loadgen = go run ./bench/loadgen, built once and pinned):"
printf '  %s\n' "${COMMANDS[@]}"

if [[ " $PARTS " == *" throughput "* ]]; then
	echo
	echo "-- throughput: every request a valid, uniquely signed delivery; concurrency $CONCURRENCY; mean of $ROUNDS round(s)"
	echo "   per run (size, setup, round, requests/s, p50 ms, p99 ms, max ms, Caddy CPU %, Caddy CPU µs/request, errors, stopped by):"
	awk -F'\t' '{ printf "   %-6s %-8s %s  %8.0f  %7.3f  %7.3f  %8.3f  %5.1f%%  %7.1f  %d  %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }' "$WORK/throughput.tsv"
	echo
	awk -F'\t' -v sizes="$SIZES" '
		{ k = $1 SUBSEP $2; n[k]++; rps[k] += $4; p50[k] += $5; p99[k] += $6; cpu[k] += $9 }
		END {
			printf "%-6s | %-24s | %11s | %8s | %8s | %13s\n", "size", "setup", "requests/s", "p50 ms", "p99 ms", "Caddy µs/req"
			printf "%-6s-+-%-24s-+-%11s-+-%8s-+-%8s-+-%13s\n", "------", "------------------------", "-----------", "--------", "--------", "-------------"
			ns = split(sizes, S, " ")
			for (i = 1; i <= ns; i++) {
				s = S[i]; a = s SUBSEP "plain"; b = s SUBSEP "webhook"
				if (!n[a] || !n[b]) continue
				printf "%-6s | %-24s | %11.0f | %8.3f | %8.3f | %13.1f\n", s, "reverse_proxy", rps[a]/n[a], p50[a]/n[a], p99[a]/n[a], cpu[a]/n[a]
				printf "%-6s | %-24s | %11.0f | %8.3f | %8.3f | %13.1f\n", s, "openai_webhook+rev_proxy", rps[b]/n[b], p50[b]/n[b], p99[b]/n[b], cpu[b]/n[b]
				printf "%-6s | %-24s | %11.3f | %8.3f | %8.3f | %13.3f\n", s, "ratio webhook/plain", (rps[b]/n[b])/(rps[a]/n[a]), (p50[b]/n[b])/(p50[a]/n[a]), (p99[b]/n[b])/(p99[a]/n[a]), (cpu[b]/n[b])/(cpu[a]/n[a])
			}
		}' "$WORK/throughput.tsv"
fi

if [[ " $PARTS " == *" refuse "* ]]; then
	echo
	echo "-- refuse: $REFUSE_SIZE declared by Content-Length, against the webhook port; concurrency $CONCURRENCY"
	printf '%-44s | %9s | %10s | %-12s | %12s | %12s | %16s | %6s | %s\n' kind requests requests/s statuses "Caddy µs CPU" "Caddy read B" "client wrote KiB" dials "upstream got"
	awk -F'\t' '{ printf "%-44s | %9d | %10.0f | %-12s | %12.1f | %12.0f | %16.1f | %6d | %d requests, %d bytes\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' "$WORK/refuse.tsv"
	echo "   (reset: the connection was reset before the client, still writing its body, read the 401)"
	echo "   (per request: Caddy CPU from /proc/PID/stat utime+stime at ${CLK_TCK} Hz; Caddy read = /proc/PID/io rchar, all read(2)s of"
	echo "    the process; client wrote = bytes the load generator's sockets accepted, kernel buffers included, not what Caddy read)"
	echo "   (the diagnostic row runs on a server with read_body_idle -1s, without Caddy's default 1m body idle timeout)"
fi

if [[ " $PARTS " == *" memory "* ]]; then
	LIMIT=$((BASE_RSS + 3 * 64 * 1024 / 2))
	echo
	echo "-- memory: fresh Caddy, max_size 2MiB, $MEM_CONCURRENCY concurrent valid 1 MiB deliveries, $MEM_REQUESTS in all"
	jq -r '"   \(.responses) responses (\(.kinds.valid.expected_verdict) accepted, \(.errors) errors) in \(.elapsed_s*100|round/100) s; upstream received \(.upstream.requests) requests, \(.upstream.bytes) bytes"' "$WORK/memory.json"
	echo "   baseline VmRSS $(mib "$BASE_RSS") MiB (VmHWM $(mib "$BASE_HWM") MiB); after VmRSS $(mib "$AFTER_RSS") MiB"
	echo "   peak VmHWM $(mib "$PEAK") MiB = baseline + $(mib $((PEAK - BASE_RSS))) MiB; limit baseline + 1.5 × 64 MiB = $(mib "$LIMIT") MiB"
	if ((PEAK < LIMIT)); then
		echo "   peak < baseline + 96 MiB: yes"
	else
		echo "   peak < baseline + 96 MiB: NO"
		FAILED+=("memory: peak VmHWM $(mib "$PEAK") MiB >= $(mib "$LIMIT") MiB")
	fi
fi

echo
if ((${#FAILED[@]} > 0)); then
	printf 'FAILED: %s\n' "${FAILED[@]}"
	exit 1
fi
echo "RESULT: OK (no transport error, no wrong status, forwarding matched in every run)"
