#!/usr/bin/env bash
# Memory and time a sender without the secret can take from the gateway
# (issue 7, finding 3), with the handler's default settings (max_size 1MiB,
# max_unverified 64MiB, body_timeout 10s). One Caddy serves two sites:
#
#   default   openai_webhook {env.OPENAI_WEBHOOK_SECRET}
#   1GiB      the same with max_size 1GiB (for the announced-length attack)
#
# over HTTP/1.1 and h2c. Each attack gets a fresh Caddy; bench/attack runs
# it, holds the bodies, and reads Caddy's heap (HeapAlloc after a forced
# collection, from the admin endpoint's /debug/pprof/heap?gc=1) before and
# while they are held:
#
#   h1 64      64 HTTP/1.1 connections, 1 MiB - 1 byte each, then stalled
#   h1 256     the same with 256 connections (256 MiB without a cap)
#   h2 100     one HTTP/2 connection, 100 streams of 1 MiB - 1 byte
#   h2 250     the same with 250 streams (the server's stream limit)
#   announce   256 connections announcing Content-Length 1 GiB, sending 1 byte
#   trickle    8 connections sending one byte every 2 s: how long they last
#
#   bench/hostile.sh          # about half a minute, plus the Caddy build
#
# Environment: CADDY (a Caddy binary to use instead of building),
# OPENAI_WEBHOOK_SECRET (default: the public test secret).

source "$(dirname "$0")/lib.sh"

build_tools
go build -o "$WORK/attack" ./bench/attack || die "building bench/attack"

UP=$(free_port)
start_upstream "$UP" 600

log "machine: $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
log "Caddy: $CADDY"

printf '| attack | connections or streams | heap before (MiB) | heap while held (MiB) | held − before (MiB) | answers |\n'
printf '|---|---|---|---|---|---|\n'
# run NAME SITE ATTACK-ARGS...: a fresh Caddy, one attack against SITE
# (default or 1GiB), one table row.
run() {
	local name=$1 site=$2
	shift 2
	local gw gw_1gib admin port
	gw=$(free_port)
	gw_1gib=$(free_port)
	admin=$(free_port)
	cat >"$WORK/Caddyfile" <<EOF
{
	admin 127.0.0.1:$admin
	default_bind 127.0.0.1
	servers {
		protocols h1 h2c
	}
}
http://127.0.0.1:$gw {
	openai_webhook {env.OPENAI_WEBHOOK_SECRET}
	reverse_proxy 127.0.0.1:$UP
}
http://127.0.0.1:$gw_1gib {
	openai_webhook {env.OPENAI_WEBHOOK_SECRET} {
		max_size 1GiB
	}
	reverse_proxy 127.0.0.1:$UP
}
EOF
	start_caddy gateway "$WORK/Caddyfile" 120 "$gw" "$gw_1gib"
	port=$gw
	[[ $site == 1GiB ]] && port=$gw_1gib
	local out="$WORK/attack-${name// /-}.json"
	log "attack $name: attack -url http://127.0.0.1:$port/ -admin 127.0.0.1:$admin $*"
	"$WORK/attack" -url "http://127.0.0.1:$port/" -admin "127.0.0.1:$admin" "$@" >"$out" 2>>"$WORK/attack.log" ||
		die "attack $name failed: $(tail -n 3 "$WORK/attack.log")"
	stop_pid "$CADDY_TPID"
	jq -r --arg name "$name" '
		def mib: . / 1048576 | (. * 10 | round) / 10;
		"| \($name) | \(.conns) | \(.heap_before.HeapAlloc | mib) | \(.heap_held.HeapAlloc | mib) | \((.heap_held.HeapAlloc - .heap_before.HeapAlloc) | mib) | \(.answers | to_entries | map("\(.key): \(.value)") | join(", "))\(if .longest_trickle_s then "; longest trickle \(.longest_trickle_s | (. * 10 | round) / 10) s" else "" end) |"' "$out"
}
run "h1 64" default -attack h1 -conns 64
run "h1 256" default -attack h1 -conns 256
run "h2 100" default -attack h2 -conns 100
run "h2 250" default -attack h2 -conns 250
run "announce 1GiB" 1GiB -attack announce -conns 256
run "trickle" default -attack trickle -conns 8 -every 2s -hold 30s
