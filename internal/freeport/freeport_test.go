package freeport

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestPortsApartAndOutsideEphemeralRange(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		port := Get(t)
		if seen[port] {
			t.Fatalf("port %d handed out twice", port)
		}
		seen[port] = true
		if port < lowest || port >= ephemeralStart() {
			t.Fatalf("port %d is outside %d-%d", port, lowest, ephemeralStart()-1)
		}
		if !free(port) {
			t.Fatalf("port %d cannot be bound", port)
		}
	}
}

// holderEnv makes the test binary, run again, report whether it can lock the
// port it names.
const holderEnv = "FREEPORT_TRY_LOCK"

func TestHeldAgainstOtherProcesses(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("ports are kept apart only within a process here")
	}
	var port int
	t.Run("held", func(t *testing.T) {
		port = Get(t)
		if got := lockFromAnotherProcess(t, port); got != "held" {
			t.Fatalf("another process could lock port %d while this test holds it: %s", port, got)
		}
	})
	if got := lockFromAnotherProcess(t, port); got != "locked" {
		t.Fatalf("another process could not lock port %d after the test that held it ended: %s", port, got)
	}
}

func lockFromAnotherProcess(t *testing.T, port int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestTryLock$")
	cmd.Env = append(os.Environ(), holderEnv+"="+strconv.Itoa(port))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "result: "); ok {
			return v
		}
	}
	t.Fatalf("no result in\n%s", out)
	return ""
}

// TestTryLock is the other process of TestHeldAgainstOtherProcesses.
func TestTryLock(t *testing.T) {
	arg := os.Getenv(holderEnv)
	if arg == "" {
		t.Skip("run by TestHeldAgainstOtherProcesses")
	}
	port, err := strconv.Atoi(arg)
	if err != nil {
		t.Fatal(err)
	}
	locked, err := lock(port)
	if err != nil {
		t.Fatal(err)
	}
	if locked {
		unlock(port)
		fmt.Println("result: locked")
	} else {
		fmt.Println("result: held")
	}
}

// TestHold: a fixed port held is kept from other processes' tests until the
// test ends, and Hold says when something that is not a test listens on it.
func TestHold(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("ports are kept apart only within a process here")
	}
	port := Get(t)
	release(port) // as if it were a fixed port nobody holds
	t.Run("held", func(t *testing.T) {
		if !Hold(t, port) {
			t.Fatalf("port %d is free, but Hold says it is not", port)
		}
		if got := lockFromAnotherProcess(t, port); got != "held" {
			t.Fatalf("another process could lock port %d while this test holds it: %s", port, got)
		}
	})
	t.Run("listened on", func(t *testing.T) {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if Hold(t, port) {
			t.Fatalf("Hold says port %d is free while a listener has it", port)
		}
	})
}
