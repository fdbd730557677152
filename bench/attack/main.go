// Command attack plays a sender without the secret against a running
// gateway and reports what it costs the gateway in heap, read from Caddy's
// admin endpoint (/debug/pprof/heap?gc=1, which collects garbage first).
// Every delivery it sends carries a well-formed but fake signature and a
// fresh timestamp, so the gateway must read its body before refusing it.
//
//	attack -url http://127.0.0.1:PORT/ -admin 127.0.0.1:ADMIN -attack h1 -conns 64
//
// Attacks (-attack):
//
//	h1        -conns HTTP/1.1 connections each send -size bytes of a body
//	          one byte longer, then stall
//	h2        one HTTP/2 connection (h2c) carries -conns streams doing the same
//	trickle   -conns connections send one body byte every -every
//	announce  -conns connections announce a Content-Length of -announce and
//	          send one byte
//
// With the bodies held, it waits -settle, reads the heap, then reports, as
// one JSON object: the heap before and while held, the answers the gateway
// gave (status: count; "none" for a connection still open when the attack
// ended), and, for trickle, how long the gateway let the slowest sender
// trickle. Every connection is closed when it returns, after at most
// -hold.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"sync"
	"time"
)

func main() {
	target := flag.String("url", "", "the gateway's webhook URL (http://host:port/path)")
	admin := flag.String("admin", "", "Caddy's admin endpoint, host:port")
	attack := flag.String("attack", "h1", "h1, h2, trickle or announce")
	conns := flag.Int("conns", 64, "connections (h2: streams)")
	size := flag.Int("size", 1<<20-1, "body bytes sent before stalling")
	every := flag.Duration("every", 2*time.Second, "trickle: time between bytes")
	announce := flag.Int64("announce", 1<<30, "announce: the Content-Length announced")
	settle := flag.Duration("settle", 2*time.Second, "time between the last byte sent and the heap reading")
	hold := flag.Duration("hold", 60*time.Second, "the longest any connection is held")
	flag.Parse()
	u, err := url.Parse(*target)
	if err != nil || u.Host == "" || *admin == "" {
		fmt.Fprintln(os.Stderr, "attack: -url and -admin are required")
		os.Exit(2)
	}
	a := &attacker{url: u, conns: *conns, size: *size, every: *every, announce: *announce, settle: *settle, answers: map[string]int{}}
	ctx, cancel := context.WithTimeout(context.Background(), *hold)
	defer cancel()

	report := map[string]any{"attack": *attack, "conns": *conns}
	before, err := heap(*admin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "attack:", err)
		os.Exit(1)
	}
	report["heap_before"] = before
	held := make(chan struct{})
	var during map[string]uint64
	go func() {
		<-held
		during, _ = heap(*admin)
		if *attack != "trickle" {
			cancel() // the reading is what the attack is for
		}
	}()
	switch *attack {
	case "h1":
		a.h1(ctx, held)
	case "h2":
		a.h2(ctx, held)
	case "trickle":
		report["longest_trickle_s"] = a.trickle(ctx, held).Seconds()
	case "announce":
		a.announced(ctx, held)
	default:
		fmt.Fprintln(os.Stderr, "attack: unknown -attack", *attack)
		os.Exit(2)
	}
	report["heap_held"] = during
	report["answers"] = a.answers
	_ = json.NewEncoder(os.Stdout).Encode(report)
}

type attacker struct {
	url      *url.URL
	conns    int
	size     int
	every    time.Duration
	announce int64
	settle   time.Duration

	mu      sync.Mutex
	answers map[string]int
}

func (a *attacker) answered(status string) {
	a.mu.Lock()
	a.answers[status]++
	a.mu.Unlock()
}

// fakeHeaders are well formed and fresh; the MAC is zeros, so it never
// matches.
func fakeHeaders(i int) []string {
	return []string{
		"webhook-id: msg_attack_" + strconv.FormatInt(time.Now().UnixNano(), 36) + "_" + strconv.Itoa(i),
		"webhook-timestamp: " + strconv.FormatInt(time.Now().Unix(), 10),
		"webhook-signature: v1," + base64.StdEncoding.EncodeToString(make([]byte, 32)),
	}
}

// dial opens a connection and writes the head of a POST announcing length
// bytes of body.
func (a *attacker) dial(ctx context.Context, i int, length int64) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", a.url.Host)
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() { conn.Close() })
	var head bytes.Buffer
	fmt.Fprintf(&head, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n", a.url.RequestURI(), a.url.Host, length)
	for _, h := range fakeHeaders(i) {
		head.WriteString(h + "\r\n")
	}
	head.WriteString("\r\n")
	_, err = conn.Write(head.Bytes())
	return conn, err
}

// await reads the answer on conn, if one comes before ctx ends.
func (a *attacker) await(conn net.Conn) {
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		a.answered("none")
		return
	}
	resp.Body.Close()
	a.answered(strconv.Itoa(resp.StatusCode))
}

// stalled runs attack on conns goroutines. Each calls sent once its bytes
// are out and returns once its answer came or ctx ended. held is closed
// settle after every one was sent.
func (a *attacker) stalled(ctx context.Context, held chan<- struct{}, attack func(i int, sent func())) {
	var sent, done sync.WaitGroup
	sent.Add(a.conns)
	for i := range a.conns {
		done.Go(func() {
			var once sync.Once
			attack(i, func() { once.Do(sent.Done) })
			once.Do(sent.Done) // it failed before sending
		})
	}
	sent.Wait()
	time.Sleep(a.settle)
	close(held)
	done.Wait()
}

// stall sends the head announcing length and the first bytes of body on a
// connection, then waits for the answer.
func (a *attacker) stall(ctx context.Context, i int, length int64, body []byte, sent func()) {
	conn, err := a.dial(ctx, i, length)
	if err != nil {
		a.answered("dial error")
		return
	}
	answer := make(chan struct{})
	go func() { a.await(conn); close(answer) }()
	_, _ = conn.Write(body)
	sent()
	<-answer
}

func (a *attacker) h1(ctx context.Context, held chan<- struct{}) {
	body := bytes.Repeat([]byte("x"), a.size)
	a.stalled(ctx, held, func(i int, sent func()) { a.stall(ctx, i, int64(a.size)+1, body, sent) })
}

func (a *attacker) announced(ctx context.Context, held chan<- struct{}) {
	a.stalled(ctx, held, func(i int, sent func()) { a.stall(ctx, i, a.announce, []byte("x"), sent) })
}

func (a *attacker) h2(ctx context.Context, held chan<- struct{}) {
	tr := &http.Transport{Protocols: new(http.Protocols), MaxConnsPerHost: 1}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	body := bytes.Repeat([]byte("x"), a.size)
	a.stalled(ctx, held, func(i int, sent func()) {
		pr, pw := io.Pipe()
		context.AfterFunc(ctx, func() { pw.CloseWithError(ctx.Err()) })
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url.String(), pr)
		if err != nil {
			panic(err) // a fixed method and a parsed URL
		}
		req.ContentLength = int64(a.size) + 1
		for _, h := range fakeHeaders(i) {
			name, value, _ := bytes.Cut([]byte(h), []byte(": "))
			req.Header.Set(string(name), string(value))
		}
		answer := make(chan struct{})
		go func() {
			defer close(answer)
			resp, err := client.Do(req)
			if err != nil {
				a.answered("none")
				return
			}
			resp.Body.Close()
			a.answered(strconv.Itoa(resp.StatusCode))
		}()
		_, _ = pw.Write(body) // returns once the gateway took it, or when ctx ends
		sent()
		<-answer
	})
}

// trickle sends one byte every a.every on each connection until the gateway
// answers, and returns the longest time a connection was kept.
func (a *attacker) trickle(ctx context.Context, held chan<- struct{}) time.Duration {
	var mu sync.Mutex
	var longest time.Duration
	var wg sync.WaitGroup
	for i := range a.conns {
		wg.Go(func() {
			start := time.Now()
			conn, err := a.dial(ctx, i, 1<<20)
			if err != nil {
				a.answered("dial error")
				return
			}
			answer := make(chan struct{})
			go func() { a.await(conn); close(answer) }()
			tick := time.NewTicker(a.every)
			defer tick.Stop()
			for {
				select {
				case <-answer:
					mu.Lock()
					longest = max(longest, time.Since(start))
					mu.Unlock()
					return
				case <-tick.C:
					_, _ = conn.Write([]byte("x"))
				}
			}
		})
	}
	time.Sleep(a.settle)
	close(held)
	wg.Wait()
	return longest
}

var memStat = regexp.MustCompile(`(?m)^# (HeapAlloc|HeapInuse|Sys) = (\d+)$`)

// heap reads the gateway's heap after a garbage collection.
func heap(admin string) (map[string]uint64, error) {
	resp, err := http.Get("http://" + admin + "/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, m := range memStat.FindAllSubmatch(raw, -1) {
		n, _ := strconv.ParseUint(string(m[2]), 10, 64)
		out[string(m[1])] = n
	}
	if len(out) != 3 {
		return nil, fmt.Errorf("no heap statistics in %s's /debug/pprof/heap", admin)
	}
	return out, nil
}
