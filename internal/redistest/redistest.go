// Package redistest runs a real redis-server for tests: on a free port of
// 127.0.0.1, in a temporary directory, without persistence unless asked,
// stopped when the test ends. It can require a password or an ACL user, and speak TLS
// with a certificate authority of its own.
//
// Without redis-server on the PATH, tests skip, saying so, unless CI is
// set: CI must run them (.ci/run installs Debian's redis-server).
package redistest

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/freeport"
)

// Options choose how the server is protected.
type Options struct {
	// Password is required of every client (requirepass), unless User is
	// set.
	Password string
	// User is an ACL user, with UserPassword, who may do everything; the
	// default user is then off.
	User, UserPassword string
	// TLS serves TLS only, with a certificate for 127.0.0.1 and
	// "redis.test" from a CA of its own (CAFile).
	TLS bool
	// Durable keeps the data in an append-only file fsync'd on every
	// write (appendonly yes, appendfsync always), and a noeviction memory
	// policy: what a queue needs. The data then outlives Stop and Start.
	Durable bool
	// Args are more redis-server arguments, after the others: e.g.
	// "--no-appendfsync-on-rewrite", "yes".
	Args []string
}

// Server is a running redis-server.
type Server struct {
	// Addr is its host:port.
	Addr string
	// CAFile is the PEM file of the CA that signed its certificate (TLS).
	CAFile string

	t      testing.TB
	opts   Options
	dir    string
	port   int
	cmd    *exec.Cmd
	exited chan struct{}
}

// bound keeps a broken server from hanging a test; it asserts nothing.
const bound = 30 * time.Second

// Start runs a redis-server for t.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redis-server is not installed, and CI must run this test: %v", err)
		}
		t.Skip("redis-server is not installed (Debian: apt-get install redis-server); CI runs this test")
	}
	s := &Server{t: t, opts: opts, dir: t.TempDir()}
	s.port = freeport.Get(t)
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	if opts.TLS {
		s.writeCertificates()
	}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// Start starts the server again, on the same port, after Stop. Its data is
// gone, unless it is Durable.
func (s *Server) Start() {
	s.t.Helper()
	args := []string{"--bind", "127.0.0.1", "--dir", s.dir, "--save", "", "--daemonize", "no",
		"--logfile", filepath.Join(s.dir, "redis.log")}
	if s.opts.Durable {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction")
	} else {
		args = append(args, "--appendonly", "no")
	}
	port := strconv.Itoa(s.port)
	if s.opts.TLS {
		args = append(args, "--port", "0", "--tls-port", port,
			"--tls-cert-file", filepath.Join(s.dir, "server.crt"), "--tls-key-file", filepath.Join(s.dir, "server.key"),
			"--tls-ca-cert-file", s.CAFile, "--tls-auth-clients", "no")
	} else {
		args = append(args, "--port", port)
	}
	if s.opts.User != "" {
		args = append(args, "--user", "default", "off", "--user", s.opts.User, "on", ">"+s.opts.UserPassword, "~*", "&*", "+@all")
	} else if s.opts.Password != "" {
		args = append(args, "--requirepass", s.opts.Password)
	}
	args = append(args, s.opts.Args...)
	s.cmd = exec.Command("redis-server", args...)
	s.cmd.Stdout, s.cmd.Stderr = os.Stderr, os.Stderr
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(s.cmd, s.exited)
	for deadline := time.Now().Add(bound); ; {
		if s.ready() {
			return
		}
		select {
		case <-s.exited:
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			s.t.Fatalf("redis-server exited: %s", log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server not ready on %s after %s", s.Addr, bound)
		}
	}
}

// ready reports whether the server accepts connections (and, without TLS,
// answers a PING, if only with an authentication error).
func (s *Server) ready() bool {
	conn, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	if s.opts.TLS {
		return true
	}
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return err == nil && (strings.HasPrefix(line, "+PONG") || strings.HasPrefix(line, "-NOAUTH"))
}

// Stop stops the server and waits until it is gone.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Kill()
	select {
	case <-s.exited:
	case <-time.After(bound):
		s.t.Errorf("redis-server still runs %s after it was killed", bound)
	}
}

// writeCertificates makes a CA and a server certificate signed by it.
func (s *Server) writeCertificates() {
	s.t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		s.t.Fatal(err)
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "redistest CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		s.t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		s.t.Fatal(err)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "redis.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"redis.test"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		s.t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		s.t.Fatal(err)
	}
	s.CAFile = filepath.Join(s.dir, "ca.crt")
	for name, block := range map[string]*pem.Block{
		"ca.crt":     {Type: "CERTIFICATE", Bytes: caDER},
		"server.crt": {Type: "CERTIFICATE", Bytes: leafDER},
		"server.key": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(s.dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			s.t.Fatal(err)
		}
	}
}

// Do sends one command without TLS or authentication beyond Password, and
// returns the first line of the answer: for tests that look into the
// server.
func (s *Server) Do(args ...string) string {
	s.t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr, bound)
	if err != nil {
		s.t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(bound))
	br := bufio.NewReader(conn)
	send := func(args ...string) string {
		var b strings.Builder
		fmt.Fprintf(&b, "*%d\r\n", len(args))
		for _, a := range args {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
		if _, err := conn.Write([]byte(b.String())); err != nil {
			s.t.Fatal(err)
		}
		line, err := br.ReadString('\n')
		if err != nil {
			s.t.Fatal(err)
		}
		line = strings.TrimRight(line, "\r\n")
		if strings.HasPrefix(line, "$") && line != "$-1" {
			next, err := br.ReadString('\n')
			if err != nil {
				s.t.Fatal(err)
			}
			return strings.TrimRight(next, "\r\n")
		}
		return line
	}
	if s.opts.Password != "" && s.opts.User == "" {
		send("AUTH", s.opts.Password)
	}
	return send(args...)
}
