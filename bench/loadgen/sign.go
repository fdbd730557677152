package main

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// kind is what a request is, and so what the gateway must answer.
type kind int

const (
	kindValid    kind = iota // signed, fresh, unique id: 200 from the upstream, forwarded
	kindTampered             // signed, fresh, body changed after signing: 401
	kindStale                // signed over its body, timestamp outside the tolerance: 401
	kindReplay               // an exact copy of a valid delivery already answered 200: 200, empty, not forwarded
	kindUnsigned             // no webhook-* header at all: 401
	numKinds
)

var kindNames = [numKinds]string{"valid", "tampered", "stale", "replay", "unsigned"}

func (k kind) String() string { return kindNames[k] }

func parseKind(s string) (kind, error) {
	for k, name := range kindNames {
		if s == name {
			return kind(k), nil
		}
	}
	return 0, fmt.Errorf("unknown kind %q (want one of %s)", s, strings.Join(kindNames[:], ", "))
}

// job is one pre-signed request. Its webhook-id is idPrefix + seq; its body
// is bodies[body] (tampered[body] for a tampered job). A replay job has no
// signature of its own: it resends a delivered valid job.
type job struct {
	kind kind
	body int32
	ts   int64
	sig  [sha256.Size]byte
}

// corpus holds everything sent in the timed phase, signed before it starts.
type corpus struct {
	idPrefix string
	jobs     []job
	bodies   [][]byte // OpenAI-shaped events padded to the chosen size
	tampered [][]byte // bodies[i] with one word changed, same length
	signedAt time.Time
	signTook time.Duration
}

func (c *corpus) id(seq int) string { return c.idPrefix + strconv.Itoa(seq) }

// maxPoolBytes bounds the distinct bodies kept: requests share bodies
// round-robin past it. Every signature is still unique, since the id is
// signed too.
const maxPoolBytes = 32 << 20

// newCorpus signs n requests whose kinds are drawn from weights, with bodies
// of size bytes. Signing runs on every CPU the process may use; the
// timestamps are taken as each request is signed, so they are fresh.
func newCorpus(key []byte, n, size int, weights [numKinds]int, tolerance time.Duration, seed uint64) (*corpus, error) {
	if n <= 0 {
		return nil, fmt.Errorf("no request to sign")
	}
	var run [6]byte
	if _, err := rand.Read(run[:]); err != nil {
		return nil, err
	}
	c := &corpus{idPrefix: "msg_bench" + hex.EncodeToString(run[:]) + "_"}
	start := time.Now()
	c.signedAt = start

	pool := max(1, min(n, maxPoolBytes/max(size, 1), 1<<16))
	c.bodies = make([][]byte, pool)
	c.tampered = make([][]byte, pool)
	for i := range pool {
		c.bodies[i], c.tampered[i] = eventBody(size, hex.EncodeToString(run[:])+strconv.Itoa(i), start.Unix())
	}

	total := 0
	for _, w := range weights {
		total += w
	}
	if total <= 0 {
		return nil, fmt.Errorf("all kind weights are zero")
	}
	rng := mrand.New(mrand.NewPCG(seed, 0x5eed))
	c.jobs = make([]job, n)
	for i := range c.jobs {
		r := rng.IntN(total)
		k := kind(0)
		for ; r >= weights[k]; k++ {
			r -= weights[k]
		}
		c.jobs[i] = job{kind: k, body: int32(i % pool)}
	}

	workers := max(1, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			mac := hmac.New(sha256.New, key)
			var buf []byte
			for i := w; i < n; i += workers {
				j := &c.jobs[i]
				if j.kind == kindReplay || j.kind == kindUnsigned {
					continue // sent without a signature of its own
				}
				now := time.Now()
				switch j.kind {
				case kindStale:
					// Twice the tolerance in the past: stale by minutes, not by a
					// rounding of the clock.
					j.ts = now.Add(-2 * tolerance).Unix()
				default:
					j.ts = now.Unix()
				}
				buf = append(buf[:0], c.id(i)...)
				buf = append(buf, '.')
				buf = strconv.AppendInt(buf, j.ts, 10)
				buf = append(buf, '.')
				mac.Reset()
				mac.Write(buf)
				mac.Write(c.bodies[j.body]) // the tampered body is sent, the original signed
				mac.Sum(j.sig[:0])
			}
		})
	}
	wg.Wait()
	c.signTook = time.Since(start)
	return c, nil
}

// headers returns the signature headers of job i.
func (c *corpus) headers(i int) (id, ts, sig string) {
	j := &c.jobs[i]
	return c.id(i), strconv.FormatInt(j.ts, 10), "v1," + base64.StdEncoding.EncodeToString(j.sig[:])
}

// eventBody returns an OpenAI-shaped event padded to size bytes (or the
// smallest such event if size is smaller) and a copy of it with one word
// changed: "response.completed" becomes "response.cancelled", same length.
func eventBody(size int, uniq string, created int64) (body, tampered []byte) {
	head := fmt.Sprintf(`{"id":"evt_%s","object":"event","created_at":%d,"type":"response.completed","data":{"id":"resp_%s","padding":"`, uniq, created, uniq)
	const tail = `"}}`
	pad := max(0, size-len(head)-len(tail))
	body = make([]byte, 0, len(head)+pad+len(tail))
	body = append(body, head...)
	for i := range pad {
		body = append(body, "abcdefghijklmnopqrstuvwxyz"[i%26])
	}
	body = append(body, tail...)
	tampered = []byte(strings.Replace(string(body), "response.completed", "response.cancelled", 1))
	return body, tampered
}
