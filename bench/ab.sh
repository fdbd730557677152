#!/usr/bin/env bash
# The gateway's cost at two revisions, side by side (issue 16). Builds Caddy
# with the plugin as it was at REV_A and as it is at REV_B, then alternates
# them for ROUNDS rounds (A then B, then B then A, to average out drift):
# each run starts that revision's Caddy with a plain reverse_proxy site and
# an openai_webhook + reverse_proxy site in front of the same upstream, and
# for each size measures both sites with the same load (plain and webhook
# in ABBA order, DURATION seconds each). The figure of merit is the
# webhook/plain ratio of requests/s within one run, so that what changes
# between runs (the machine's state, Caddy's warm-up) cancels out; the
# report gives each round's ratio and the median over rounds.
#
#   bench/ab.sh                                     # 10da227 against the work tree
#   REV_A=HEAD~3 REV_B=HEAD ROUNDS=7 bench/ab.sh
#   PROFILE=1 bench/ab.sh                           # also CPU profiles, see below
#   CEILING=1 bench/ab.sh                           # also the physical limit, see below
#
# A revision is a commit (checked out with git worktree, built with its own
# internal/cmd/buildcaddy and xcaddy.json) or "worktree" (this checkout as
# it is). The load generator and the upstream are this checkout's, for both.
#
# With CEILING=1, a third arm C runs in the same alternation (A B C, then
# C B A): Caddy built from bench/ceiling, whose webhook site has verify_only,
# the least any verifying gateway does (read the body, one HMAC, compare,
# forward; no hostile-sender bounds, replay refusal, metrics or logs), in
# place of openai_webhook. Its ratio is the limit no revision can pass on
# this machine and setup.
#
# With PROFILE=1, after the rounds, each revision's Caddy is profiled under
# the webhook load at each size for PROFILE_SECONDS (default 10) through its
# admin endpoint (/debug/pprof/profile), into OUT_DIR (default ./ab-profiles):
# compare them with `go tool pprof -top -diff_base A.pprof B.pprof`.
#
# Environment: REV_A (default 10da227), REV_B (default worktree), DURATION
# (s per measurement, default 4), ROUNDS (5), CONCURRENCY (32), SIZES
# ("1KiB 64KiB"), CEILING (0), PROFILE (0), PROFILE_SECONDS (10), OUT_DIR, CADDY_CPUS /
# LOAD_CPUS (pinning, default 0 / 1).

source "$(dirname "$0")/lib.sh"

REV_A=${REV_A:-10da227}
REV_B=${REV_B:-worktree}
DURATION=${DURATION:-4}
ROUNDS=${ROUNDS:-5}
CONCURRENCY=${CONCURRENCY:-32}
SIZES=${SIZES:-1KiB 64KiB}
CEILING=${CEILING:-0}
PROFILE=${PROFILE:-0}
PROFILE_SECONDS=${PROFILE_SECONDS:-10}
OUT_DIR=${OUT_DIR:-$ROOT/ab-profiles}
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 600 ]] || die "DURATION=$DURATION: want 1 to 600 seconds"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le 20 ]] || die "ROUNDS=$ROUNDS: want 1 to 20"
[[ $CEILING == [01] ]] || die "CEILING=$CEILING: want 0 or 1"
ARMS="A B"
[[ $CEILING == 1 ]] && ARMS="A B C"

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
log "$PIN_NOTE"

# build_revision REV: prints the path of Caddy built with the plugin at REV,
# from a worktree in $WORK/rev-* (it runs in a command substitution, so
# remove_worktrees finds them there).
build_revision() {
	local rev=$1 dir
	if [[ $rev == worktree ]]; then
		go run ./internal/cmd/buildcaddy 2>>"$WORK/build.log" || die "building the work tree (see $WORK/build.log)"
		return
	fi
	dir="$WORK/rev-$(git rev-parse --short "$rev^{commit}")" || die "$rev is not a commit"
	git worktree add --detach -q "$dir" "$rev" || die "git worktree add $rev"
	(cd "$dir" && go run ./internal/cmd/buildcaddy 2>>"$WORK/build.log") || die "building $rev (see $WORK/build.log)"
}
remove_worktrees() {
	local dir
	for dir in "$WORK"/rev-*; do
		if [[ -d $dir ]]; then
			git worktree remove --force "$dir" 2>/dev/null || true
		fi
	done
}
trap 'status=$?; remove_worktrees; (exit $status); cleanup' EXIT

log "building Caddy at $REV_A and at $REV_B"
CADDY_A=$(build_revision "$REV_A")
CADDY_B=$(build_revision "$REV_B")
DESC_A=$([[ $REV_A == worktree ]] && echo "the work tree at $(git rev-parse --short HEAD)" || git log -1 --format='%h %s' "$REV_A" | cut -c1-60)
DESC_B=$([[ $REV_B == worktree ]] && echo "the work tree at $(git rev-parse --short HEAD)" || git log -1 --format='%h %s' "$REV_B" | cut -c1-60)
DESC_C="verify_only, bench/ceiling at $(git rev-parse --short HEAD)"
if [[ $CEILING == 1 ]]; then
	CADDY_C="$WORK/caddy-ceiling"
	go build -o "$CADDY_C" ./bench/ceiling || die "building bench/ceiling"
fi
go build -o "$WORK/loadgen" ./bench/loadgen || die "building bench/loadgen"
go build -o "$WORK/upstream" ./bench/upstream || die "building bench/upstream"

UP=$(free_port)
PLAIN=$(free_port)
HOOK=$(free_port)
ADMIN=$(free_port)
LIFETIME=$(( (ROUNDS * 3 + 3) * ($(wc -w <<<"$SIZES") * 2 * (DURATION + 5) + PROFILE_SECONDS * 2 + 30) + 300 ))
cat >"$WORK/Caddyfile" <<EOF
$(global_options "$ADMIN")

http://127.0.0.1:$PLAIN {
	reverse_proxy 127.0.0.1:$UP
}

http://127.0.0.1:$HOOK {
	openai_webhook {env.OPENAI_WEBHOOK_SECRET}
	reverse_proxy 127.0.0.1:$UP
}
EOF
sed 's/^\topenai_webhook /\tverify_only /' "$WORK/Caddyfile" >"$WORK/Caddyfile.C"
grep -q verify_only "$WORK/Caddyfile.C" || die "no verify_only in the ceiling's Caddyfile"
start_upstream "$UP" "$LIFETIME"

# use_arm NAME: sets CADDY and CADDYFILE for arm NAME (A, B or C).
use_arm() {
	CADDYFILE="$WORK/Caddyfile"
	case $1 in
	A) CADDY=$CADDY_A ;;
	B) CADDY=$CADDY_B ;;
	C) CADDY=$CADDY_C CADDYFILE="$WORK/Caddyfile.C" ;;
	esac
}

# run_revision NAME ROUND: one run of arm NAME.
run_revision() {
	local name=$1 round=$2 size setup port order out
	use_arm "$name"
	start_caddy "caddy-$name" "$CADDYFILE" "$LIFETIME" "$PLAIN" "$HOOK" "$ADMIN"
	sleep 1
	for size in $SIZES; do
		order="plain webhook"
		((round % 2 == 0)) && order="webhook plain"
		for setup in $order; do
			port=$PLAIN
			[[ $setup == webhook ]] && port=$HOOK
			out="$WORK/ab-$name-$round-$size-$setup.json"
			measured "$out" loadgen -mode throughput -label "$setup" -url "http://127.0.0.1:$port/webhooks/openai" \
				-upstream-stats "http://127.0.0.1:$UP/__stats" \
				-duration "${DURATION}s" -max-requests "$(max_requests "$size" "$DURATION")" -concurrency "$CONCURRENCY" -size "$size"
			jq -r --arg rev "$name" --arg round "$round" --arg size "$size" \
				'[$rev, $round, $size, .label, .requests_per_s, (if .responses > 0 then .caddy.cpu_s * 1e6 / .responses else 0 end)] | @tsv' \
				"$out" >>"$WORK/ab.tsv"
		done
	done
	stop_pid "$CADDY_TPID"
}

: >"$WORK/ab.tsv"
REVERSED=$(tr ' ' '\n' <<<"$ARMS" | tac | tr '\n' ' ')
for round in $(seq 1 "$ROUNDS"); do
	order=$ARMS
	((round % 2 == 0)) && order=$REVERSED
	for name in $order; do
		run_revision "$name" "$round"
	done
done

if [[ $PROFILE == 1 ]]; then
	mkdir -p "$OUT_DIR"
	for name in $ARMS; do
		use_arm "$name"
		start_caddy "caddy-$name-profile" "$CADDYFILE" "$LIFETIME" "$PLAIN" "$HOOK" "$ADMIN"
		sleep 1
		for size in $SIZES; do
			run_loadgen "$WORK/profile-load.json" -mode throughput -label webhook -url "http://127.0.0.1:$HOOK/webhooks/openai" \
				-duration "$((PROFILE_SECONDS + 4))s" -max-requests "$(max_requests "$size" $((PROFILE_SECONDS + 4)))" -concurrency "$CONCURRENCY" -size "$size" &
			load=$!
			sleep 1
			curl -sf -o "$OUT_DIR/$name-$size.pprof" "http://127.0.0.1:$ADMIN/debug/pprof/profile?seconds=$PROFILE_SECONDS" ||
				die "profiling $name at $size"
			wait "$load" || true
		done
		stop_pid "$CADDY_TPID"
	done
fi

echo
echo "== bench/ab.sh: REV_A=$REV_A REV_B=$REV_B DURATION=$DURATION ROUNDS=$ROUNDS CONCURRENCY=$CONCURRENCY SIZES=\"$SIZES\""
echo "A: $DESC_A ($CADDY_A)"
echo "B: $DESC_B ($CADDY_B)"
[[ $CEILING == 1 ]] && echo "C: $DESC_C, the physical limit ($CADDY_C)"
echo "pinning: $PIN_NOTE"
echo "machine: $(nproc --all) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load average at the start: $LOADAVG"
echo "load: ${COMMANDS[0]}, and the same for each site, size and round"
echo
echo "webhook/plain requests/s in the same run (median of $ROUNDS rounds; each round's in brackets); Caddy CPU µs/request (medians),"
echo "and what the webhook site added to it in the same run (median of the rounds' differences)"
awk -F'\t' -v sizes="$SIZES" -v rounds="$ROUNDS" -v arms="$ARMS" "$AWK_MEDIAN"'
	{ rps[$1, $2, $3, $4] = $5; usr[$1, $2, $3, $4] = $6; cpu[$1, $3, $4] = cpu[$1, $3, $4] " " $6 }
	END {
		ns = split(sizes, S, " ")
		na = split(arms, R, " ")
		printf "%-6s | %-3s | %12s | %11s | %11s | %11s | %s\n", "size", "rev", "median ratio", "plain µs/req", "hook µs/req", "added µs/req", "ratio per round"
		for (i = 1; i <= ns; i++) for (r = 1; r <= na; r++) {
			rev = R[r]; list = ""; added = ""
			for (k = 1; k <= rounds; k++) {
				list = list sprintf(" %.3f", rps[rev, k, S[i], "webhook"] / rps[rev, k, S[i], "plain"])
				added = added sprintf(" %.1f", usr[rev, k, S[i], "webhook"] - usr[rev, k, S[i], "plain"])
			}
			printf "%-6s | %-3s | %12.3f | %11.1f | %11.1f | %11.1f | [%s ]\n", S[i], rev, median(list), median(cpu[rev, S[i], "plain"]), median(cpu[rev, S[i], "webhook"]), median(added), list
		}
	}' "$WORK/ab.tsv"
if [[ $PROFILE == 1 ]]; then
	echo
	echo "CPU profiles (the webhook site under load, ${PROFILE_SECONDS}s each): $OUT_DIR/{${ARMS// /,}}-SIZE.pprof"
fi
if ((${#FAILED[@]} > 0)); then
	printf 'FAILED: %s\n' "${FAILED[@]}"
	exit 1
fi
