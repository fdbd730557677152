#!/usr/bin/env bash
# openai_webhook against the physical limit, in one Caddy (issue 16). Caddy
# built from bench/ceiling (the standard modules, this module, and
# verify_only: read the body, one HMAC-SHA256, compare, forward, nothing
# else) serves three sites in front of the same upstream: plain
# reverse_proxy, openai_webhook + reverse_proxy, verify_only +
# reverse_proxy. Each round measures the three with the same load, in a
# rotating order; one process for all removes what differs between
# processes (bench/ab.sh compares revisions, so it cannot).
#
#   bench/ceiling.sh                         # 64KiB and 1KiB, 9 rounds of 4 s
#   SIZES=64KiB ROUNDS=3 DURATION=2 bench/ceiling.sh   # a short check
#   SYSCALLS=1 bench/ceiling.sh              # also system calls per request
#   PROFILE=1 bench/ceiling.sh               # also CPU profiles, see below
#
# With SYSCALLS=1, after the rounds, strace -f -c counts Caddy's system
# calls while each site serves SYSCALL_REQUESTS (5000) requests of each
# size: exact counts, though strace slows Caddy down.
#
# With PROFILE=1, last, Caddy is profiled (/debug/pprof/profile on its
# admin endpoint) for PROFILE_SECONDS (20) while the webhook site, then the
# limit's, serves the load of each size, into OUT_DIR (default
# ./ceiling-profiles) as webhook-SIZE.pprof and limit-SIZE.pprof; the report
# gives the requests each served meanwhile, to divide a profile's times by.
#
# Environment: SIZES ("1KiB 64KiB"), ROUNDS (9), DURATION (s per
# measurement, 4), CONCURRENCY (32), SYSCALLS (0), SYSCALL_REQUESTS (5000),
# PROFILE (0), PROFILE_SECONDS (20), OUT_DIR, CADDY_CPUS / LOAD_CPUS
# (pinning, default 0 / 1). Needs strace for SYSCALLS=1 (Debian: strace).

source "$(dirname "$0")/lib.sh"

SIZES=${SIZES:-1KiB 64KiB}
ROUNDS=${ROUNDS:-9}
DURATION=${DURATION:-4}
CONCURRENCY=${CONCURRENCY:-32}
SYSCALLS=${SYSCALLS:-0}
SYSCALL_REQUESTS=${SYSCALL_REQUESTS:-5000}
PROFILE=${PROFILE:-0}
PROFILE_SECONDS=${PROFILE_SECONDS:-20}
OUT_DIR=${OUT_DIR:-$ROOT/ceiling-profiles}
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 600 ]] || die "DURATION=$DURATION: want 1 to 600 seconds"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le 30 ]] || die "ROUNDS=$ROUNDS: want 1 to 30"
[[ $SYSCALLS == [01] ]] || die "SYSCALLS=$SYSCALLS: want 0 or 1"
[[ $PROFILE == [01] ]] || die "PROFILE=$PROFILE: want 0 or 1"
[[ $PROFILE_SECONDS =~ ^[0-9]+$ && $PROFILE_SECONDS -ge 1 && $PROFILE_SECONDS -le 300 ]] || die "PROFILE_SECONDS=$PROFILE_SECONDS: want 1 to 300"
[[ $SYSCALL_REQUESTS =~ ^[0-9]+$ && $SYSCALL_REQUESTS -ge 100 ]] || die "SYSCALL_REQUESTS=$SYSCALL_REQUESTS: want 100 or more"
[[ $SYSCALLS == 0 ]] || command -v strace >/dev/null || die "SYSCALLS=1 needs strace (apt-get install strace)"

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
log "$PIN_NOTE"
CADDY="$WORK/caddy-ceiling"
log "building bench/ceiling"
go build -o "$CADDY" ./bench/ceiling || die "building bench/ceiling"
build_tools

UP=$(free_port)
PLAIN=$(free_port)
HOOK=$(free_port)
LIMIT=$(free_port)
ADMIN=$(free_port)
LIFETIME=$(( ROUNDS * $(wc -w <<<"$SIZES") * 3 * (DURATION + 10) + SYSCALLS * 600 + PROFILE * $(wc -w <<<"$SIZES") * 2 * (PROFILE_SECONDS + 20) + 300 ))
cat >"$WORK/Caddyfile" <<EOF
$(global_options "$ADMIN")

http://127.0.0.1:$PLAIN {
	reverse_proxy 127.0.0.1:$UP
}

http://127.0.0.1:$HOOK {
	openai_webhook {env.OPENAI_WEBHOOK_SECRET}
	reverse_proxy 127.0.0.1:$UP
}

http://127.0.0.1:$LIMIT {
	verify_only {env.OPENAI_WEBHOOK_SECRET}
	reverse_proxy 127.0.0.1:$UP
}
EOF
start_upstream "$UP" "$LIFETIME"
start_caddy caddy "$WORK/Caddyfile" "$LIFETIME" "$PLAIN" "$HOOK" "$LIMIT" "$ADMIN"
sleep 1

port_of() {
	case $1 in
	plain) echo "$PLAIN" ;;
	webhook) echo "$HOOK" ;;
	limit) echo "$LIMIT" ;;
	esac
}

: >"$WORK/ceiling.tsv"
for round in $(seq 1 "$ROUNDS"); do
	case $((round % 3)) in
	1) order="plain webhook limit" ;;
	2) order="webhook limit plain" ;;
	0) order="limit plain webhook" ;;
	esac
	for size in $SIZES; do
		for setup in $order; do
			out="$WORK/$round-$size-$setup.json"
			measured "$out" loadgen -mode throughput -label "$setup" -url "http://127.0.0.1:$(port_of "$setup")/webhooks/openai" \
				-upstream-stats "http://127.0.0.1:$UP/__stats" \
				-duration "${DURATION}s" -max-requests "$(max_requests "$size" "$DURATION")" -concurrency "$CONCURRENCY" -size "$size"
			jq -r --arg round "$round" --arg size "$size" \
				'[$round, $size, .label, .requests_per_s, (if .responses > 0 then .caddy.cpu_s * 1e6 / .responses else 0 end)] | @tsv' \
				"$out" >>"$WORK/ceiling.tsv"
		done
	done
done

if [[ $SYSCALLS == 1 ]]; then
	: >"$WORK/syscalls.tsv"
	for size in $SIZES; do
		for setup in plain webhook limit; do
			strace -f -c -p "$CADDY_PID" -o "$WORK/strace-$size-$setup.txt" 2>/dev/null &
			tracer=$!
			sleep 1
			run_loadgen "$WORK/strace-$size-$setup.json" -mode throughput -label "$setup" -url "http://127.0.0.1:$(port_of "$setup")/webhooks/openai" \
				-duration 120s -max-requests "$SYSCALL_REQUESTS" -concurrency "$CONCURRENCY" -size "$size" ||
				FAILED+=("strace run of $setup at $size")
			kill -INT "$tracer"
			wait "$tracer" || true
			awk -v size="$size" -v setup="$setup" -v n="$SYSCALL_REQUESTS" '
				$NF == "read" || $NF == "write" { c[$NF] = $4; e[$NF] = ($5 ~ /^[0-9]+$/ ? $5 : 0) }
				$NF == "total" { total = $4 }
				END { printf "%s\t%s\t%.2f\t%.2f\t%.2f\t%.2f\n", size, setup, (c["read"] - e["read"]) / n, e["read"] / n, c["write"] / n, total / n }' \
				"$WORK/strace-$size-$setup.txt" >>"$WORK/syscalls.tsv"
		done
	done
fi

if [[ $PROFILE == 1 ]]; then
	mkdir -p "$OUT_DIR"
	: >"$WORK/profiles.tsv"
	for size in $SIZES; do
		for setup in webhook limit; do
			# The load runs 2 s before and after the profile, so that the
			# profile sees it all the way; the profile's share of it is
			# counted by the upstream, read around the profile.
			run_loadgen "$WORK/profile-$size-$setup.json" -mode throughput -label "$setup" -url "http://127.0.0.1:$(port_of "$setup")/webhooks/openai" \
				-duration "$((PROFILE_SECONDS + 4))s" -max-requests "$(max_requests "$size" $((PROFILE_SECONDS + 4)))" -concurrency "$CONCURRENCY" -size "$size" &
			load=$!
			# Signing comes before the timed phase: wait for the first requests.
			before=$(curl -sf "http://127.0.0.1:$UP/__stats" | jq .requests)
			for _ in $(seq 1 600); do
				sleep 0.1
				now=$(curl -sf "http://127.0.0.1:$UP/__stats" | jq .requests)
				((now > before)) && break
			done
			sleep 2
			before=$(curl -sf "http://127.0.0.1:$UP/__stats" | jq .requests)
			curl -sf -o "$OUT_DIR/$setup-$size.pprof" "http://127.0.0.1:$ADMIN/debug/pprof/profile?seconds=$PROFILE_SECONDS" ||
				die "profiling $setup at $size"
			after=$(curl -sf "http://127.0.0.1:$UP/__stats" | jq .requests)
			wait "$load" || FAILED+=("profile load of $setup at $size")
			printf '%s\t%s\t%s\n' "$size" "$setup" "$((after - before))" >>"$WORK/profiles.tsv"
		done
	done
fi

echo
echo "== bench/ceiling.sh: SIZES=\"$SIZES\" ROUNDS=$ROUNDS DURATION=$DURATION CONCURRENCY=$CONCURRENCY SYSCALLS=$SYSCALLS"
echo "Caddy: bench/ceiling at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (with uncommitted changes)')"
echo "pinning: $PIN_NOTE"
echo "machine: $(nproc --all) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load average at the start: $LOADAVG"
echo "load: ${COMMANDS[0]}, and the same for each site, size and round"
echo
echo "requests/s against plain reverse_proxy in the same round, and Caddy CPU µs/request (medians of $ROUNDS rounds);"
echo "webhook/limit: openai_webhook's rate against verify_only's (1 = at the physical limit)"
awk -F'\t' -v sizes="$SIZES" -v rounds="$ROUNDS" "$AWK_MEDIAN"'
	{ rps[$1, $2, $3] = $4; cpu[$2, $3] = cpu[$2, $3] " " $5 }
	END {
		ns = split(sizes, S, " ")
		printf "%-6s | %13s | %13s | %13s | %8s | %8s | %8s | %s\n", "size", "webhook/plain", "limit/plain", "webhook/limit", "plain µs", "hook µs", "limit µs", "webhook/limit per round"
		for (i = 1; i <= ns; i++) {
			s = S[i]; hp = ""; lp = ""; hl = ""
			for (k = 1; k <= rounds; k++) {
				hp = hp sprintf(" %.3f", rps[k, s, "webhook"] / rps[k, s, "plain"])
				lp = lp sprintf(" %.3f", rps[k, s, "limit"] / rps[k, s, "plain"])
				hl = hl sprintf(" %.3f", rps[k, s, "webhook"] / rps[k, s, "limit"])
			}
			printf "%-6s | %13.3f | %13.3f | %13.3f | %8.1f | %8.1f | %8.1f | [%s ]\n", s, median(hp), median(lp), median(hl), median(cpu[s, "plain"]), median(cpu[s, "webhook"]), median(cpu[s, "limit"]), hl
		}
	}' "$WORK/ceiling.tsv"
if [[ $SYSCALLS == 1 ]]; then
	echo
	echo "system calls per request, strace -f -c of Caddy over $SYSCALL_REQUESTS requests per site and size:"
	printf '%-6s | %-7s | %10s | %14s | %6s | %s\n' size site "reads" "reads (EAGAIN)" writes "all calls"
	awk -F'\t' '{ printf "%-6s | %-7s | %10s | %14s | %6s | %s\n", $1, $2, $3, $4, $5, $6 }' "$WORK/syscalls.tsv"
fi
if [[ $PROFILE == 1 ]]; then
	echo
	echo "CPU profiles, ${PROFILE_SECONDS}s of each site under the load of each size: $OUT_DIR/{webhook,limit}-SIZE.pprof;"
	echo "requests the upstream received during each (divide a profile's times by them: go tool pprof -top FILE):"
	awk -F'\t' '{ printf "%-6s | %-7s | %d\n", $1, $2, $3 }' "$WORK/profiles.tsv"
fi
if ((${#FAILED[@]} > 0)); then
	printf 'FAILED: %s\n' "${FAILED[@]}"
	exit 1
fi
