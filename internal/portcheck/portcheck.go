// Package portcheck finds TCP listening sockets of other processes on the
// ports this process is about to listen on.
//
// Caddy binds its TCP listeners with SO_REUSEPORT, so a second Caddy (or any
// SO_REUSEPORT server of the same user) on a port another one already listens
// on starts without error, and the kernel then splits the connections between
// the two. [OtherListeners] lets a Caddy app refuse to start in that case. It
// tells this process's own sockets (a config reload re-binds ports its
// previous config still holds) from those of other processes by the socket
// inodes behind /proc/self/fd.
//
// It works on Linux only, from /proc/net/tcp, /proc/net/tcp6 and /proc/[pid]/fd,
// and sees the network namespace of this process only. On other systems
// [OtherListeners] and [OwnListeners] report nothing and no error.
package portcheck

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Holder is a listening TCP socket of another process that overlaps one of
// the addresses given to [OtherListeners].
type Holder struct {
	Addr    string         // the address given to OtherListeners
	Socket  netip.AddrPort // the other socket's local address; IPv4-mapped IPv6 addresses are shown as IPv4
	UID     int            // owner of the socket
	Pid     int            // a process holding the socket; 0 if none could be found (another user's, or in another PID namespace)
	Command string         // Pid's command line, arguments separated by spaces; "" if unknown
}

// String describes h for an error message, e.g. "127.0.0.1:8080 is also
// listened on by process 1234 (caddy run)".
func (h Holder) String() string {
	var b strings.Builder
	b.WriteString(h.Addr)
	b.WriteString(" is also listened on by ")
	switch {
	case h.Pid != 0 && h.Command != "":
		fmt.Fprintf(&b, "process %d (%s)", h.Pid, h.Command)
	case h.Pid != 0:
		fmt.Fprintf(&b, "process %d", h.Pid)
	default:
		fmt.Fprintf(&b, "a process of uid %d that this process cannot see", h.UID)
	}
	if s := h.Socket.String(); s != h.Addr {
		b.WriteString(" on ")
		b.WriteString(s)
	}
	return b.String()
}

// OtherListeners returns, for each of addrs, the listening TCP sockets that
// overlap it and that this process does not hold, in the order of addrs.
//
// addrs are listen addresses as Caddy spells them: "127.0.0.1:8080",
// "[::1]:2019", ":8080" (every interface), "localhost:2019" (127.0.0.1 and
// ::1), optionally after a network ("tcp/", "tcp4/", "tcp6/"); addresses of
// other networks (udp, unix, ...) and port 0 are ignored, other host names are
// resolved. A socket overlaps an address when the ports are equal and so are
// the IPs, or either IP is the IPv6 wildcard :: (which, dual-stack by default,
// takes IPv4 too), or either is the IPv4 wildcard 0.0.0.0 and the other is an
// IPv4 address (IPv4-mapped IPv6 addresses count as IPv4).
//
// An error means the check could not be made (a malformed or unresolvable
// address, /proc not mounted); it is meant to be logged, not to stop Caddy.
func OtherListeners(addrs []string) ([]Holder, error) {
	if runtime.GOOS != "linux" {
		return nil, nil
	}
	targets, err := parseTargets(addrs)
	if err != nil || len(targets) == 0 {
		return nil, err
	}
	ports := map[uint16]bool{}
	for _, t := range targets {
		ports[t.port] = true
	}
	onPort := func(s socket) bool { return ports[s.addr.Port()] }
	// The tables first, then this process's descriptors: a socket this process
	// opens in between is then in both, not taken for another's.
	socks, err := readTables(onPort)
	if err != nil {
		return nil, err
	}
	own, err := ownInodes()
	if err != nil {
		return nil, err
	}
	type found struct {
		t target
		s socket
	}
	var founds []found
	for _, t := range targets {
		for _, s := range socks {
			if s.inode == 0 || own[s.inode] || s.addr.Port() != t.port {
				continue
			}
			if slices.ContainsFunc(t.ips, func(ip netip.Addr) bool { return overlap(ip, s.addr.Addr()) }) {
				founds = append(founds, found{t, s})
			}
		}
	}
	if len(founds) == 0 {
		return nil, nil
	}
	inodes := map[uint64]process{}
	for _, f := range founds {
		inodes[f.s.inode] = process{}
	}
	findProcesses(inodes)
	// A socket of no process found may have been closed since the tables were
	// read: one of this process's closed in between would otherwise be
	// reported. Read the tables again for those.
	var still map[uint64]bool
	for _, p := range inodes {
		if p.pid == 0 {
			again, err := readTables(onPort)
			if err != nil {
				return nil, err
			}
			still = map[uint64]bool{}
			for _, s := range again {
				still[s.inode] = true
			}
			break
		}
	}
	var holders []Holder
	for _, f := range founds {
		p := inodes[f.s.inode]
		if p.pid == 0 && !still[f.s.inode] {
			continue
		}
		holders = append(holders, Holder{Addr: f.t.given, Socket: f.s.addr, UID: f.s.uid, Pid: p.pid, Command: p.command})
	}
	return holders, nil
}

// OwnListeners returns the local addresses of the listening TCP sockets this
// process holds, such as "127.0.0.1:2019" or "[::]:443", sorted and without
// repeats; they can be given to [OtherListeners].
func OwnListeners() ([]string, error) {
	if runtime.GOOS != "linux" {
		return nil, nil
	}
	own, err := ownInodes()
	if err != nil {
		return nil, err
	}
	socks, err := readTables(func(s socket) bool { return own[s.inode] })
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, s := range socks {
		addrs = append(addrs, s.addr.String())
	}
	slices.Sort(addrs)
	return slices.Compact(addrs), nil
}

// target is one address given to OtherListeners.
type target struct {
	given string
	ips   []netip.Addr // unmapped, without zone
	port  uint16
}

// lookupTimeout bounds the resolution of a host name in an address.
const lookupTimeout = 5 * time.Second

func parseTargets(addrs []string) ([]target, error) {
	var targets []target
	for _, a := range addrs {
		t, ok, err := parseTarget(a)
		if err != nil {
			return nil, err
		}
		if ok && !slices.ContainsFunc(targets, func(o target) bool { return o.given == a }) {
			targets = append(targets, t)
		}
	}
	return targets, nil
}

// parseTarget reports ok false for an address to ignore.
func parseTarget(a string) (t target, ok bool, err error) {
	network, hostport := "tcp", a
	if n, rest, found := strings.Cut(a, "/"); found {
		network, hostport = strings.ToLower(n), rest
	}
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return t, false, nil
	}
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return t, false, fmt.Errorf("listen address %q: %w", a, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return t, false, fmt.Errorf("listen address %q: bad port %q", a, portStr)
	}
	if port == 0 {
		return t, false, nil
	}
	t = target{given: a, port: uint16(port)}
	switch {
	case host == "":
		if network == "tcp4" {
			t.ips = []netip.Addr{netip.IPv4Unspecified()}
		} else {
			t.ips = []netip.Addr{netip.IPv6Unspecified()}
		}
	case strings.EqualFold(host, "localhost"):
		t.ips = []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback()}
	default:
		if ip, err := netip.ParseAddr(host); err == nil {
			t.ips = []netip.Addr{ip}
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
			defer cancel()
			t.ips, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host)
			if err != nil {
				return t, false, fmt.Errorf("listen address %q: %w", a, err)
			}
		}
	}
	for i, ip := range t.ips {
		t.ips[i] = ip.WithZone("").Unmap()
	}
	t.ips = slices.DeleteFunc(t.ips, func(ip netip.Addr) bool {
		return network == "tcp4" && !ip.Is4() || network == "tcp6" && !ip.Is6()
	})
	return t, len(t.ips) > 0, nil
}

// overlap reports whether sockets bound to a and b on the same port take
// some of the same connections. Both are unmapped and without zone.
func overlap(a, b netip.Addr) bool {
	covers := func(w, x netip.Addr) bool {
		return w == netip.IPv6Unspecified() || w == netip.IPv4Unspecified() && x.Is4()
	}
	return a == b || covers(a, b) || covers(b, a)
}

// socket is a listening TCP socket from /proc/net/tcp or tcp6.
type socket struct {
	addr  netip.AddrPort // unmapped
	uid   int
	inode uint64
}

// readTables returns the listening sockets of /proc/net/tcp and tcp6 for
// which keep is true.
func readTables(keep func(socket) bool) ([]socket, error) {
	var all []socket
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(name)
		if name == "/proc/net/tcp6" && errors.Is(err, fs.ErrNotExist) {
			continue // IPv6 disabled
		}
		if err != nil {
			return nil, err
		}
		socks, err := parseTable(f, binary.NativeEndian, keep)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		all = append(all, socks...)
	}
	return all, nil
}

// stateListen is TCP_LISTEN in the st column.
const stateListen = "0A"

// parseTable reads a /proc/net/tcp or tcp6 table line by line and returns
// its listening sockets for which keep (if not nil) is true. order is the
// byte order of the kernel that wrote it: addresses are in network order but
// printed as 32-bit words of the host's order.
func parseTable(r io.Reader, order binary.ByteOrder, keep func(socket) bool) ([]socket, error) {
	sc := bufio.NewScanner(r)
	var socks []socket
	for n := 1; sc.Scan(); n++ {
		if n == 1 {
			continue // the header
		}
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
		var f [10][]byte
		rest := sc.Bytes()
		i := 0
		for ; i < len(f); i++ {
			rest = bytes.TrimLeft(rest, " ")
			if len(rest) == 0 {
				break
			}
			end := bytes.IndexByte(rest, ' ')
			if end < 0 {
				end = len(rest)
			}
			f[i], rest = rest[:end], rest[end:]
		}
		if i == 0 {
			continue
		}
		if i < len(f) {
			return nil, fmt.Errorf("line %d: %d fields, want at least %d", n, i, len(f))
		}
		if string(f[3]) != stateListen {
			continue
		}
		addr, err := parseHexAddr(string(f[1]), order)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		uid, err := strconv.Atoi(string(f[7]))
		if err != nil {
			return nil, fmt.Errorf("line %d: bad uid %q", n, f[7])
		}
		inode, err := strconv.ParseUint(string(f[9]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: bad inode %q", n, f[9])
		}
		s := socket{addr: addr, uid: uid, inode: inode}
		if keep == nil || keep(s) {
			socks = append(socks, s)
		}
	}
	return socks, sc.Err()
}

// parseHexAddr parses an address such as "0100007F:1F90" (127.0.0.1:8080 as
// a little-endian kernel prints it).
func parseHexAddr(s string, order binary.ByteOrder) (netip.AddrPort, error) {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	if !ok || len(hexPort) != 4 || len(hexIP) != 8 && len(hexIP) != 32 {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	var b [16]byte
	for i := 0; i < len(hexIP); i += 8 {
		w, err := strconv.ParseUint(hexIP[i:i+8], 16, 32)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
		}
		order.PutUint32(b[i/2:], uint32(w))
	}
	var ip netip.Addr
	if len(hexIP) == 8 {
		ip = netip.AddrFrom4([4]byte(b[:4]))
	} else {
		ip = netip.AddrFrom16(b).Unmap()
	}
	return netip.AddrPortFrom(ip, uint16(port)), nil
}

// ownInodes returns the inodes of the sockets this process has descriptors of.
func ownInodes() (map[uint64]bool, error) {
	inodes := map[uint64]bool{}
	err := socketInodes("/proc/self/fd", func(inode uint64) bool {
		inodes[inode] = true
		return true
	})
	if err != nil {
		return nil, err
	}
	return inodes, nil
}

// socketInodes calls found with the inode of each socket of the descriptor
// directory dir until it returns false.
func socketInodes(dir string, found func(inode uint64) bool) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, name := range names {
		link, err := os.Readlink(dir + "/" + name)
		if err != nil {
			continue // closed meanwhile
		}
		num, ok := strings.CutPrefix(link, "socket:[")
		if !ok {
			continue
		}
		inode, err := strconv.ParseUint(strings.TrimSuffix(num, "]"), 10, 64)
		if err == nil && !found(inode) {
			return nil
		}
	}
	return nil
}

// process is one holding a socket.
type process struct {
	pid     int
	command string
}

// findProcesses fills in a process holding each of inodes, scanning the
// descriptors of every process it may read until all are found. Processes
// of other users cannot be read (unless this one is privileged).
func findProcesses(inodes map[uint64]process) {
	d, err := os.Open("/proc")
	if err != nil {
		return
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return
	}
	self := os.Getpid()
	left := len(inodes)
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid == self {
			continue
		}
		_ = socketInodes("/proc/"+name+"/fd", func(inode uint64) bool {
			if p, ok := inodes[inode]; ok && p.pid == 0 {
				inodes[inode] = process{pid: pid, command: commandLine(pid)}
				left--
			}
			return left > 0
		})
		if left == 0 {
			return
		}
	}
}

// maxCommand bounds the command line kept, in bytes.
const maxCommand = 200

// commandLine returns pid's arguments separated by spaces, or its name in
// brackets (kernel threads have no arguments), or "".
func commandLine(pid int) string {
	b, err := readHead(fmt.Sprintf("/proc/%d/cmdline", pid), maxCommand+1)
	if err == nil {
		b = bytes.TrimRight(b, "\x00")
	}
	if len(b) == 0 {
		comm, err := readHead(fmt.Sprintf("/proc/%d/comm", pid), 64)
		if comm = bytes.TrimSpace(comm); err != nil || len(comm) == 0 {
			return ""
		}
		return "[" + string(comm) + "]"
	}
	s := strings.ToValidUTF8(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})), "?")
	if len(s) > maxCommand {
		s = strings.ToValidUTF8(s[:maxCommand], "") + "…"
	}
	return s
}

// readHead reads at most n bytes of the file name.
func readHead(name string, n int) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, int64(n)))
}
