package portcheck

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/freeport"
)

// holdEnv makes the test binary, run again, listen with SO_REUSEPORT on the
// address it names, print "ready" and hold the socket until its standard
// input closes.
const holdEnv = "PORTCHECK_HOLD"

// holderArg is in the command line of that process, to be found in Holder.Command.
const holderArg = "portcheck-holder"

func TestMain(m *testing.M) {
	if addr := os.Getenv(holdEnv); addr != "" {
		ln, err := listenReusePort(addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer ln.Close()
		fmt.Println("ready")
		go func() { // in case the test forgets it
			time.Sleep(2 * time.Minute)
			os.Exit(3)
		}()
		_, _ = io.Copy(io.Discard, os.Stdin)
		return
	}
	os.Exit(m.Run())
}

const tcpHeader = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"

const tcp6Header = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"

func TestParseTable(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		name  string
		order binary.ByteOrder
		text  string
		want  []socket
	}{{
		name:  "tcp",
		order: binary.LittleEndian,
		text: tcpHeader +
			"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 40123 1 0000000000000000 100 0 0 10 0\n" +
			"   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1210 1 00000000cf65b243 100 0 0 10 0\n" +
			// established and time-wait: not listening
			"   2: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 40200 1 0000000000000000 20 4 30 10 -1\n" +
			"   3: 0100007F:A2F4 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000\n",
		want: []socket{
			{ap("127.0.0.1:8080"), 1000, 40123},
			{ap("0.0.0.0:2024"), 0, 1210},
		},
	}, {
		name:  "tcp6",
		order: binary.LittleEndian,
		text: tcp6Header +
			"   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 50001 1 0000000000000000 100 0 0 10 0\n" +
			"   1: 0000000000000000FFFF00000100007F:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 50002 1 0000000000000000 100 0 0 10 0\n" +
			"   2: 00000000000000000000000001000000:07E3 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 50003 1 0000000000000000 100 0 0 10 0\n" +
			"   3: B80D0120000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000    33        0 50004 1 0000000000000000 100 0 0 10 0\n" +
			"   4: 00000000000000000000000001000000:07E3 00000000000000000000000001000000:C350 01 00000000:00000000 00:00000000 00000000     0        0 50005 1 0000000000000000 20 4 30 10 -1\n",
		want: []socket{
			{ap("[::]:8080"), 1000, 50001},
			{ap("127.0.0.1:8081"), 1000, 50002}, // ::ffff:127.0.0.1, unmapped
			{ap("[::1]:2019"), 0, 50003},
			{ap("[2001:db8::1]:443"), 33, 50004},
		},
	}, {
		name:  "big-endian kernel",
		order: binary.BigEndian,
		text: tcpHeader +
			"   0: 7F000001:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 7 1 0000000000000000 100 0 0 10 0\n",
		want: []socket{{ap("127.0.0.1:8080"), 1000, 7}},
	}, {
		name:  "header only",
		order: binary.LittleEndian,
		text:  tcpHeader,
	}, {
		name:  "empty",
		order: binary.LittleEndian,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseTable(strings.NewReader(tt.text), tt.order, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestParseTableKeep(t *testing.T) {
	text := tcpHeader +
		"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000 100 0 0 10 0\n" +
		"   1: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2 1 0000000000000000 100 0 0 10 0\n"
	got, err := parseTable(strings.NewReader(text), binary.LittleEndian, func(s socket) bool { return s.addr.Port() == 8081 })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].inode != 2 {
		t.Errorf("got %v, want only inode 2", got)
	}
}

func TestParseTableErrors(t *testing.T) {
	for _, line := range []string{
		"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n",                                                                       // cut short
		"   0: 0100007G:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000 100 0 0 10 0\n", // bad hex
		"   0: 0100007F1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000 100 0 0 10 0\n",  // no port
		"   0: 00007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000 100 0 0 10 0\n",   // short IP
		"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 x 1 0000000000000000 100 0 0 10 0\n", // bad inode
		"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  root        0 1 1 0000000000000000 100 0 0 10 0\n", // bad uid
	} {
		if got, err := parseTable(strings.NewReader(tcpHeader+line), binary.LittleEndian, nil); err == nil {
			t.Errorf("%q: got %v and no error", line, got)
		}
	}
}

func TestParseTarget(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		in      string
		ips     []netip.Addr
		port    uint16
		ignored bool
		err     bool
	}{
		{in: "127.0.0.1:8080", ips: []netip.Addr{a("127.0.0.1")}, port: 8080},
		{in: ":8080", ips: []netip.Addr{a("::")}, port: 8080},
		{in: "tcp/:8080", ips: []netip.Addr{a("::")}, port: 8080},
		{in: "tcp4/:8080", ips: []netip.Addr{a("0.0.0.0")}, port: 8080},
		{in: "tcp6/:8080", ips: []netip.Addr{a("::")}, port: 8080},
		{in: "[::1]:2019", ips: []netip.Addr{a("::1")}, port: 2019},
		{in: "localhost:2019", ips: []netip.Addr{a("127.0.0.1"), a("::1")}, port: 2019},
		{in: "LocalHost:2019", ips: []netip.Addr{a("127.0.0.1"), a("::1")}, port: 2019},
		{in: "tcp6/localhost:2019", ips: []netip.Addr{a("::1")}, port: 2019},
		{in: "[::ffff:127.0.0.1]:80", ips: []netip.Addr{a("127.0.0.1")}, port: 80},
		{in: "[fe80::1%eth0]:80", ips: []netip.Addr{a("fe80::1")}, port: 80},
		{in: "tcp4/[::1]:80", ignored: true},
		{in: "udp/:443", ignored: true},
		{in: "unix//run/caddy.sock", ignored: true},
		{in: "127.0.0.1:0", ignored: true},
		{in: "127.0.0.1", err: true},
		{in: "127.0.0.1:http", err: true},
		{in: "127.0.0.1:70000", err: true},
		{in: "no-such-host.invalid:80", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok, err := parseTarget(tt.in)
			switch {
			case tt.err:
				if err == nil {
					t.Fatalf("got %v, %v and no error", got, ok)
				}
			case err != nil:
				t.Fatal(err)
			case tt.ignored:
				if ok {
					t.Fatalf("got %v, want it ignored", got)
				}
			case !ok || got.given != tt.in || got.port != tt.port || !slices.Equal(got.ips, tt.ips):
				t.Fatalf("got %v (ok %v), want %v port %d", got, ok, tt.ips, tt.port)
			}
		})
	}
}

func TestOverlap(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"127.0.0.1", "127.0.0.1", true},
		{"127.0.0.1", "127.0.0.2", false},
		{"0.0.0.0", "127.0.0.1", true},
		{"0.0.0.0", "0.0.0.0", true},
		{"::", "127.0.0.1", true}, // dual-stack
		{"::", "::1", true},
		{"::", "0.0.0.0", true},
		{"::", "::", true},
		{"0.0.0.0", "::1", false}, // the IPv4 wildcard takes no IPv6
		{"::1", "127.0.0.1", false},
		{"::1", "::1", true},
		{"2001:db8::1", "2001:db8::2", false},
	}
	for _, tt := range tests {
		a, b := netip.MustParseAddr(tt.a), netip.MustParseAddr(tt.b)
		if got := overlap(a, b); got != tt.want {
			t.Errorf("overlap(%s, %s) = %v, want %v", a, b, got, tt.want)
		}
		if got := overlap(b, a); got != tt.want {
			t.Errorf("overlap(%s, %s) = %v, want %v", b, a, got, tt.want)
		}
	}
}

func TestHolderString(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		h    Holder
		want string
	}{
		{Holder{Addr: "127.0.0.1:8080", Socket: ap("127.0.0.1:8080"), Pid: 1234, Command: "caddy openai-webhook demo"},
			"127.0.0.1:8080 is also listened on by process 1234 (caddy openai-webhook demo)"},
		{Holder{Addr: ":8080", Socket: ap("127.0.0.1:8080"), Pid: 1234},
			":8080 is also listened on by process 1234 on 127.0.0.1:8080"},
		{Holder{Addr: "localhost:2019", Socket: ap("[::]:2019"), UID: 1001},
			"localhost:2019 is also listened on by a process of uid 1001 that this process cannot see on [::]:2019"},
	}
	for _, tt := range tests {
		if got := tt.h.String(); got != tt.want {
			t.Errorf("got  %q\nwant %q", got, tt.want)
		}
	}
}

// TestOtherProcess is the real case: a listener of this process on the port
// is not reported, one of another process is.
func TestOtherProcess(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Linux only")
	}
	port := freeport.Get(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	checked := []string{addr, ":" + strconv.Itoa(port), "localhost:" + strconv.Itoa(port)}

	ln, err := listenReusePort(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	if got, err := OtherListeners(checked); err != nil || len(got) != 0 {
		t.Fatalf("with only this process listening: got %v, %v; want none", got, err)
	}
	own, err := OwnListeners()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(own, addr) {
		t.Errorf("OwnListeners() = %v, want %s among them", own, addr)
	}

	child := startHolder(t, addr)
	got, err := OtherListeners(checked)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(checked) {
		t.Fatalf("got %v, want one holder for each of %v", got, checked)
	}
	for i, h := range got {
		if h.Addr != checked[i] || h.Socket.String() != addr || h.Pid != child.Process.Pid ||
			!strings.Contains(h.Command, holderArg) || h.UID != os.Getuid() {
			t.Errorf("got %+v, want %s held on %s by process %d (... %s) of uid %d",
				h, checked[i], addr, child.Process.Pid, holderArg, os.Getuid())
		}
		if want := fmt.Sprintf("is also listened on by process %d (", child.Process.Pid); !strings.Contains(h.String(), want) {
			t.Errorf("String() = %q, want it to contain %q", h, want)
		}
	}
	// Other IPs on the same port, the same IP on another port.
	for _, a := range []string{"127.0.0.2:" + strconv.Itoa(port), "[::1]:" + strconv.Itoa(port), "127.0.0.1:" + strconv.Itoa(port+1)} {
		if got, err := OtherListeners([]string{a}); err != nil || len(got) != 0 {
			t.Errorf("OtherListeners(%s) = %v, %v; want none", a, got, err)
		}
	}

	// Once the other process is gone, nothing is reported again.
	_ = child.Process.Kill()
	_ = child.Wait()
	if got, err := OtherListeners(checked); err != nil || len(got) != 0 {
		t.Fatalf("after the other process exited: got %v, %v; want none", got, err)
	}
}

// TestOtherProcessIPv6Wildcard reads a socket of another process from
// /proc/net/tcp6: a dual-stack [::] listener overlaps IPv4 addresses too.
func TestOtherProcessIPv6Wildcard(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Linux only")
	}
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6: %v", err)
	} else {
		ln.Close()
	}
	port := strconv.Itoa(freeport.Get(t))
	child := startHolder(t, "[::]:"+port)
	checked := []string{"127.0.0.1:" + port, "[::1]:" + port, "tcp4/:" + port}
	got, err := OtherListeners(checked)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(checked) {
		t.Fatalf("got %v, want one holder for each of %v", got, checked)
	}
	for i, h := range got {
		if h.Addr != checked[i] || h.Socket.String() != "[::]:"+port || h.Pid != child.Process.Pid {
			t.Errorf("got %+v, want %s held on [::]:%s by process %d", h, checked[i], port, child.Process.Pid)
		}
	}
}

// startHolder runs this test binary again to listen on addr, and waits until
// it does. The process is killed when the test ends.
func startHolder(t *testing.T, addr string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], holderArg)
	cmd.Env = append(os.Environ(), holdEnv+"="+addr)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		if line != "ready\n" {
			t.Fatalf("the holding process said %q, not ready", line)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the holding process did not get ready in 20s")
	}
	return cmd
}
