#!/usr/bin/env bash
# Bounded mixed load against a real Caddy (issue 3): concurrent clients send
# valid, tampered, stale and replayed deliveries to openai_webhook in front
# of bench/upstream; every response is checked against the verdict its kind
# must get, the upstream's counters must show exactly the valid deliveries
# accepted (replays and refusals never forwarded), and Caddy's memory is read
# from /proc before and after.
#
#   bench/mix.sh                      # 30 s
#   DURATION=3 bench/mix.sh           # a short check
#
# Environment: DURATION (s, default 30), CONCURRENCY (32), SIZE (1KiB),
# MAX_REQUESTS (bound and pre-signed count, default 20000 per second of
# DURATION), MIX (loadgen -mix weights), CADDY (a Caddy binary to use
# instead of building), CADDY_CPUS / LOAD_CPUS (pinning, default 0 / 1),
# OPENAI_WEBHOOK_SECRET (default: the public test secret).
# Exit status: 0 when every verdict was right and the forwarding check held.

source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-30}
CONCURRENCY=${CONCURRENCY:-32}
SIZE=${SIZE:-1KiB}
MAX_REQUESTS=${MAX_REQUESTS:-$((DURATION * 20000))}
MIX=${MIX:-valid=55,tampered=15,stale=15,replay=15}
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 600 ]] || die "DURATION=$DURATION: want 1 to 600 seconds"

build_tools
log "$PIN_NOTE"

UP=$(free_port)
HOOK=$(free_port)
ADMIN=$(free_port)
LIFETIME=$((DURATION + 300))
cat >"$WORK/Caddyfile" <<EOF
$(global_options "$ADMIN")

http://127.0.0.1:$HOOK {
	openai_webhook {env.OPENAI_WEBHOOK_SECRET}
	reverse_proxy 127.0.0.1:$UP
}
EOF

start_upstream "$UP" "$LIFETIME"
start_caddy caddy "$WORK/Caddyfile" "$LIFETIME" "$HOOK" "$ADMIN"
log "Caddy pid $CADDY_PID on 127.0.0.1:$HOOK (admin $ADMIN), upstream pid $UPSTREAM_PID on 127.0.0.1:$UP"

metrics() {
	curl -fsS "http://127.0.0.1:$ADMIN/metrics" | grep '^caddy_openai_webhook_requests_total' || true
}

sleep 1
RSS0=$(vm_kib "$CADDY_PID" VmRSS)
HWM0=$(vm_kib "$CADDY_PID" VmHWM)
M0=$(metrics)

CMD=(loadgen -mode mix -url "http://127.0.0.1:$HOOK/webhooks/openai"
	-upstream-stats "http://127.0.0.1:$UP/__stats"
	-duration "${DURATION}s" -max-requests "$MAX_REQUESTS"
	-concurrency "$CONCURRENCY" -size "$SIZE" -mix "$MIX")
printf -v CMDLINE '%q ' "${CMD[@]}"
CMDLINE=${CMDLINE% }
log "running: $CMDLINE"
STATUS=0
run_loadgen "$WORK/mix.json" "${CMD[@]:1}" || STATUS=$?

RSS1=$(vm_kib "$CADDY_PID" VmRSS)
HWM1=$(vm_kib "$CADDY_PID" VmHWM)
M1=$(metrics)

R="$WORK/mix.json"
echo
echo "== bench/mix.sh: DURATION=$DURATION CONCURRENCY=$CONCURRENCY SIZE=$SIZE MAX_REQUESTS=$MAX_REQUESTS"
echo "command (loadgen = go run ./bench/loadgen, built once and pinned): $CMDLINE"
echo "pinning: $PIN_NOTE"
jq -r '"timed phase: \(.elapsed_s*100|round/100) s (stopped by \(.stop_reason)), \(.sent) sent, \(.responses) responses, \(.errors) transport errors, \(.requests_per_s|round) requests/s",
	"latency ms: p50 \(.latency_ms.p50) p99 \(.latency_ms.p99) max \(.latency_ms.max)",
	"signed beforehand: \(.presigned) requests in \(.sign_s*100|round/100) s; \(.client.dials) connections dialed"' "$R"
echo
printf '%-9s %8s %9s %6s %7s  %s\n' kind sent expected wrong errors outcomes
jq -r '.kinds | to_entries[] | [.key, .value.sent, .value.expected_verdict, .value.wrong_verdict, .value.errors,
	((.value.outcomes | to_entries | map("\(.key): \(.value)") | join(", ")) + (if (.value.skipped // 0) > 0 then "; \(.value.skipped) skipped (nothing delivered yet)" else "" end))] | @tsv' "$R" |
	while IFS=$'\t' read -r k s e w x o; do printf '%-9s %8s %9s %6s %7s  %s\n' "$k" "$s" "$e" "$w" "$x" "$o"; done
echo
jq -r '"wrong verdicts: \(.wrong_verdicts)",
	"forwarded vs accepted: upstream received \(.forwarding.forwarded) requests / \(.forwarding.forwarded_bytes) body bytes; valid deliveries accepted: \(.forwarding.accepted) / \(.forwarding.accepted_bytes) bytes: \(if .forwarding.ok then "OK" else "MISMATCH" end)"' "$R"
jq -r '(.error_samples // [])[] | "error sample: \(.)"' "$R"
echo
echo "gateway counter caddy_openai_webhook_requests_total from the admin /metrics after the run ($(grep -c . <<<"$M0" || true) series before: a fresh process):"
echo "${M1:-  (none exposed)}" | sed 's/^/  /'
echo
echo "Caddy memory (pid $CADDY_PID, /proc/$CADDY_PID/status):"
echo "  before: VmRSS $(mib "$RSS0") MiB (VmHWM $(mib "$HWM0") MiB)"
echo "  after:  VmRSS $(mib "$RSS1") MiB"
echo "  peak:   VmHWM $(mib "$HWM1") MiB (+$(mib $((HWM1 - RSS0))) MiB over the RSS before)"
echo
if [[ $STATUS -ne 0 ]]; then
	echo "RESULT: FAILED ($(jq -r '.failures | join("; ")' "$R"))"
	exit 1
fi
echo "RESULT: OK (0 wrong verdicts, forwarding matches)"
