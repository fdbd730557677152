// Package freeport gives tests TCP and UDP ports on 127.0.0.1 for servers
// they start as separate processes, which take a port number rather than a
// listener.
//
// A port the kernel chose for a listener on port 0 comes from its ephemeral
// range, from which it also chooses the source port of every outgoing
// connection on the machine: once the listener is closed, any of them may
// take the port before the server binds it ("address already in use").
// So ports come from below that range, where the kernel never chooses, and
// each is locked until its test ends, so that test processes running in
// parallel never hand out the same one.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// lowest is the first port handed out: above the well-known ports and the
// fixed ones tests use (Caddy's caddytest takes 2999 and 9080).
const lowest = 10000

// attempts bounds the search; it only runs out when nearly every port is taken.
const attempts = 1000

var (
	mu    sync.Mutex
	inUse = map[int]bool{} // ports this process handed out and has not taken back
)

// Get returns a port free on 127.0.0.1 for both TCP and UDP (Caddy's HTTP/3
// listens on UDP), reserved for t until it ends.
func Get(t testing.TB) int {
	t.Helper()
	highest := ephemeralStart() - 1
	if highest <= lowest {
		t.Fatalf("freeport: the kernel's ephemeral range starts at %d, leaving no ports below it", highest+1)
	}
	for range attempts {
		port := lowest + rand.IntN(highest-lowest+1)
		if !reserve(t, port) {
			continue // another test holds it
		}
		if !free(port) {
			release(port)
			continue
		}
		t.Cleanup(func() { release(port) })
		return port
	}
	t.Fatalf("freeport: no free port in %d-%d after %d tries", lowest, highest, attempts)
	return 0
}

// holdWait bounds how long Hold waits for other tests to give the ports up.
const holdWait = 5 * time.Minute

// Hold reserves fixed ports that a test needs because what it runs listens
// on them (the demo's), waiting while a test of this or another process
// holds any of them, and reports whether they can all be bound on
// 127.0.0.1 now: not when something other than a test holds one (a demo
// the user left running). They stay reserved until t ends.
func Hold(t testing.TB, ports ...int) bool {
	t.Helper()
	deadline := time.Now().Add(holdWait)
	for _, port := range ports {
		for !reserve(t, port) {
			if time.Now().After(deadline) {
				t.Fatalf("freeport: port %d still held by another test after %s", port, holdWait)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Cleanup(func() { release(port) })
	}
	for _, port := range ports {
		if !free(port) {
			return false
		}
	}
	return true
}

// reserve takes port for this process, reporting false while a test of
// this or another process holds it.
func reserve(t testing.TB, port int) bool {
	mu.Lock()
	defer mu.Unlock()
	if inUse[port] {
		return false
	}
	locked, err := lock(port)
	if err != nil {
		t.Fatalf("freeport: %v", err)
	}
	if locked {
		inUse[port] = true
	}
	return locked
}

// release gives a reserved port back.
func release(port int) {
	mu.Lock()
	defer mu.Unlock()
	delete(inUse, port)
	unlock(port)
}

// free reports whether port can be bound on 127.0.0.1 for TCP and for UDP.
func free(port int) bool {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	p, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	p.Close()
	return true
}

// ephemeralStart is the first port of the kernel's ephemeral range: Linux's
// setting, or 32768 (Linux's default; BSDs and macOS start higher).
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	var start, end int
	if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &start, &end); err != nil {
		return 32768
	}
	return min(start, 32768)
}
