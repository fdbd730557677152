// Command upstream is the app behind the gateway in the benchmarks: it reads
// and discards every request body, answers 200 "ok" (or -response-size
// bytes), and counts the requests and body bytes it received. GET /__stats returns the counts as JSON
// ({"requests":N,"bytes":M}); that request itself is not counted.
//
//	go run ./bench/upstream -addr 127.0.0.1:9001 -lifetime 30m
//
// It listens on 127.0.0.1 only and exits by itself after -lifetime, so a
// benchmark script that dies without cleaning up leaves no server behind.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// StatsPath is where the counts are served.
const StatsPath = "/__stats"

type stats struct {
	requests atomic.Int64
	bytes    atomic.Int64
	errors   atomic.Int64 // bodies that could not be read to their end
	answer   []byte
	length   string // len(answer)
	delay    time.Duration
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "`host:port` to listen on; the host must be a loopback address")
	lifetime := flag.Duration("lifetime", 30*time.Minute, "exit after this long")
	responseSize := flag.Int("response-size", 2, "answer with this many `bytes` (\"ok\" for 2; more are 'k's after \"ok\"), at least 1")
	delay := flag.Duration("delay", 0, "wait this long after reading a body before answering: an app that works before it answers")
	flag.Parse()
	if *responseSize < 1 || *responseSize > 64<<20 {
		log.Fatalf("upstream: -response-size %d is not between 1 and 64 MiB", *responseSize)
	}

	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		log.Fatalf("upstream: -addr: %v", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		log.Fatalf("upstream: -addr %s: listen on a loopback IP only (e.g. 127.0.0.1)", *addr)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("upstream: %v", err)
	}
	// The address on stdout lets a script that passed port 0 learn the port.
	fmt.Println(ln.Addr())

	answer := make([]byte, *responseSize)
	copy(answer, "ok")
	for i := 2; i < len(answer); i++ {
		answer[i] = 'k'
	}
	s := &stats{answer: answer, length: strconv.Itoa(len(answer)), delay: *delay}
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *lifetime)
	defer cancel()
	go func() {
		<-ctx.Done()
		shutdown, done := context.WithTimeout(context.Background(), 2*time.Second)
		defer done()
		_ = srv.Shutdown(shutdown)
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("upstream: %v", err)
	}
}

func (s *stats) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == StatsPath && r.Method == http.MethodGet {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]int64{
			"requests":    s.requests.Load(),
			"bytes":       s.bytes.Load(),
			"read_errors": s.errors.Load(),
		})
		return
	}
	s.requests.Add(1)
	n, err := io.Copy(io.Discard, r.Body)
	s.bytes.Add(n)
	if err != nil {
		s.errors.Add(1)
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", s.length)
	_, _ = w.Write(s.answer)
}
