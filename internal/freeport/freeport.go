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
	mu.Lock()
	defer mu.Unlock()
	for range attempts {
		port := lowest + rand.IntN(highest-lowest+1)
		if inUse[port] {
			continue
		}
		locked, err := lock(port)
		if err != nil {
			t.Fatalf("freeport: %v", err)
		}
		if !locked {
			continue // another test process holds it
		}
		if !free(port) {
			unlock(port)
			continue
		}
		inUse[port] = true
		t.Cleanup(func() {
			mu.Lock()
			defer mu.Unlock()
			delete(inUse, port)
			unlock(port)
		})
		return port
	}
	t.Fatalf("freeport: no free port in %d-%d after %d tries", lowest, highest, attempts)
	return 0
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
