package e2e_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// tolerance is the gateway's tolerance in TestCatalogue, in seconds.
const tolerance = 10

const catalogueHandler = `secret {env.OPENAI_WEBHOOK_SECRET}
		tolerance 10s
		max_size 64KiB`

// TestCatalogue sends hostile requests through a real Caddy, one at a time.
// Each gets its documented answer and is counted under its documented
// outcome, nothing but the accepted ones reaches the upstream, and after
// each the gateway is still healthy. The accepted list holds the requests
// that look odd but are genuine: they reach the upstream exactly once, with
// the bytes that were signed.
func TestCatalogue(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	gw := startCaddy(t, e, caddyConfig{UpstreamPort: up.port, Handler: catalogueHandler})
	c := &catalogue{gw: gw, up: up}

	refused, accepted := c.refused(), c.accepted()
	if len(refused) < 40 {
		t.Fatalf("the catalogue has %d hostile requests, want at least 40", len(refused))
	}
	for _, list := range []struct {
		name   string
		probes []probe
	}{{"refused", refused}, {"accepted", accepted}} {
		t.Run(list.name, func(t *testing.T) {
			seen := map[string]bool{}
			for _, p := range list.probes {
				if seen[p.name] {
					t.Fatalf("two probes named %q", p.name)
				}
				seen[p.name] = true
				t.Run(p.name, func(t *testing.T) {
					c.run(t, p)
					gw.checkHealthy(t, up)
				})
			}
		})
	}
}

// probe is one request of the catalogue.
type probe struct {
	name string
	// status is the answer; 0 when the client hangs up before any can come.
	status int
	// outcome is what the handler counts the request as (see metrics.go);
	// "" when Go's HTTP server answers before any handler runs.
	outcome string
	// closes marks a refusal whose connection is closed after the answer:
	// its body was withheld (the gateway reads what is left of a refused
	// body before answering, and gives up on one that does not come), was
	// too long to read, or was invited by Expect: 100-continue. A raw
	// probe refused otherwise keeps its connection.
	closes bool
	// clock marks a probe whose verdict depends on the second the gateway
	// reads its clock in (timestamps at the tolerance's edge): run retries
	// it, with a new id, until the test's own clock read the same second
	// before and after it.
	clock bool
	// setup, if set, prepares the probe (delivers or holds its id first)
	// and returns what undoes it.
	setup func(t *testing.T, id string, now time.Time) (undo func())
	// send sends the request for webhook-id id at time now.
	send func(t *testing.T, id string, now time.Time) sent
}

// sent is what a probe sent and got back.
type sent struct {
	resp    *http.Response // nil after a hang-up
	answer  []byte         // resp's body
	payload []byte         // the request body signed: what an accepted probe must deliver
	raw     bool           // sent byte for byte on a connection that asked for no close
	// signedAs are the names of the signature headers an accepted probe
	// sent, which the upstream must get once each; nil is webhook-*.
	signedAs []string
	// check, if set, checks more of what the upstream recorded of an
	// accepted probe.
	check func(t *testing.T, r record)
}

type catalogue struct {
	gw *caddyServer
	up *upstream
}

// maxClockAttempts bounds the retries of a clock probe.
const maxClockAttempts = 5

// run sends p and checks what came of it.
func (c *catalogue) run(t *testing.T, p probe) {
	for attempt := 1; ; attempt++ {
		id := fmt.Sprintf("msg_cat_%s_%d_%d", slug(p.name), time.Now().UnixNano(), attempt)
		if p.clock {
			startOfSecond()
		}
		now := time.Now()
		var undo func()
		if p.setup != nil {
			undo = p.setup(t, id, now)
		}
		before, beforeOutcomes := c.up.count(t), c.gw.outcomes(t)
		s := p.send(t, id, now)
		done := time.Now()
		if s.resp == nil {
			// The client is gone and no answer can be read: wait until
			// the gateway has finished with the request, then look.
			c.gw.waitOutcome(t, p.outcome, beforeOutcomes)
		}
		all, afterOutcomes := c.up.received(t), c.gw.outcomes(t)
		if undo != nil {
			undo()
		}
		if p.clock && now.Unix() != done.Unix() {
			if attempt == maxClockAttempts {
				t.Fatalf("every one of %d attempts spanned a second boundary: cannot tell which second the gateway judged by", attempt)
			}
			t.Logf("attempt %d spanned a second boundary (%s to %s): inconclusive, retrying", attempt, now.Format(time.StampMicro), done.Format(time.StampMicro))
			continue
		}
		c.check(t, p, s, all[before:], outcomeDelta(beforeOutcomes, afterOutcomes))
		return
	}
}

func (c *catalogue) check(t *testing.T, p probe, s sent, reached []record, outcomes map[string]float64) {
	t.Helper()
	if p.status == 0 {
		if s.resp != nil {
			t.Errorf("got an answer %s after hanging up", s.resp.Status)
		}
	} else if s.resp.StatusCode != p.status {
		t.Errorf("status %d, want %d (answer %.200q)", s.resp.StatusCode, p.status, s.answer)
	}
	want := map[string]float64{}
	if p.outcome != "" {
		want[p.outcome] = 1
	}
	if fmt.Sprint(outcomes) != fmt.Sprint(want) {
		t.Errorf("counted as %v, want %v", outcomes, want)
	}
	if s.resp != nil && s.resp.StatusCode == http.StatusMethodNotAllowed && s.resp.Header.Get("Allow") != http.MethodPost {
		t.Errorf("Allow: %q, want POST", s.resp.Header.Get("Allow"))
	}
	// A refused body the sender did send is read before the answer, so
	// the connection stays usable; one that cannot be read is closed
	// (docs/security.md). Go's client asks for a close itself (it keeps no
	// connection alive here), so only raw probes tell.
	if s.raw && s.resp != nil && p.outcome != "" && p.status >= 400 {
		wantClose := p.closes || p.outcome == outcomeUnread
		if s.resp.Close != wantClose {
			t.Errorf("connection closed after the answer: %v, want %v", s.resp.Close, wantClose)
		}
	}

	if p.outcome != outcomeForwarded {
		if len(reached) != 0 {
			t.Fatalf("%d requests reached the upstream, want none: %+v", len(reached), reached)
		}
		if p.outcome == outcomeDuplicate && len(s.answer) != 0 {
			t.Errorf("a duplicate was answered %q, want an empty body", s.answer)
		}
		return
	}
	if len(reached) != 1 {
		t.Fatalf("%d requests reached the upstream, want exactly 1", len(reached))
	}
	r := reached[0]
	r.checkBody(t, s.payload)
	if r.Method != http.MethodPost || r.Path != hookPath {
		t.Errorf("upstream got %s %s, want POST %s", r.Method, r.Path, hookPath)
	}
	names := s.signedAs
	if names == nil {
		names = []string{"webhook-id", "webhook-timestamp", "webhook-signature"}
	}
	for _, name := range names {
		if n := len(r.header(name)); n != 1 {
			t.Errorf("upstream got %d %s headers, want 1", n, name)
		}
	}
	if s.check != nil {
		s.check(t, r)
	}
}

// startOfSecond waits, if the current second is more than half gone, for
// the next one, so a request sent now is likely judged within the second it
// starts in. It only improves the odds; run checks.
func startOfSecond() {
	now := time.Now()
	if frac := time.Duration(now.Nanosecond()); frac > 500*time.Millisecond {
		time.Sleep(time.Second - frac + time.Millisecond)
	}
}

// ---- building requests ----

// do sends req with Go's client.
func (c *catalogue) do(t *testing.T, req *http.Request, payload []byte) sent {
	t.Helper()
	resp, answer := send(t, req)
	return sent{resp: resp, answer: answer, payload: payload}
}

// signed sends body signed for id at ts (a timestamp spelt as given) with
// the gateway's secret.
func (c *catalogue) signed(t *testing.T, id, ts string, body []byte) sent {
	t.Helper()
	return c.do(t, c.gw.request(t.Context(), id, ts, good(id, ts, body), body), body)
}

// withSignature sends body for id at now with sig as webhook-signature.
func (c *catalogue) withSignature(t *testing.T, id string, now time.Time, sig string, body []byte) sent {
	t.Helper()
	return c.do(t, c.gw.request(t.Context(), id, unix(now), sig, body), body)
}

// raw sends a POST to the hook made of header lines and tail, as is.
func (c *catalogue) raw(t *testing.T, hdr []string, tail []byte, end rawEnd, payload []byte) sent {
	t.Helper()
	return c.rawLine(t, post, hdr, tail, end, payload)
}

// rawLine is raw with another request line.
func (c *catalogue) rawLine(t *testing.T, requestLine string, hdr []string, tail []byte, end rawEnd, payload []byte) sent {
	t.Helper()
	resp := sendRaw(t, c.gw.addr, rawMessage(requestLine, c.gw.addr, hdr, tail), end)
	s := sent{resp: resp, payload: payload, raw: end == readAnswer && strings.HasSuffix(requestLine, "HTTP/1.1")}
	if resp != nil {
		s.answer, _ = io.ReadAll(resp.Body) // read into memory by sendRaw
	}
	return s
}

// urlSafeID returns an id, derived from base, whose correct MAC contains a
// character that the URL-safe alphabet spells differently.
func urlSafeID(base, ts string) string {
	for i := 0; ; i++ {
		id := fmt.Sprintf("%s_%d", base, i)
		if strings.ContainsAny(mac(webhooktest.Secret, id, ts, event(id)), "+/") {
			return id
		}
	}
}

// ---- the catalogue ----

func (c *catalogue) refused() []probe {
	// signedTS probes a timestamp spelling, correctly signed over that
	// spelling, so the spelling is the only fault.
	signedTS := func(name string, outcome string, ts func(now time.Time) string) probe {
		return probe{name: name, status: http.StatusUnauthorized, outcome: outcome,
			send: func(t *testing.T, id string, now time.Time) sent {
				return c.signed(t, id, ts(now), event(id))
			}}
	}
	// signedID probes a webhook-id, correctly signed.
	signedID := func(name string, badID func(id string) string) probe {
		return probe{name: name, status: http.StatusUnauthorized, outcome: outcomeMalformed,
			send: func(t *testing.T, id string, now time.Time) sent {
				return c.signed(t, badID(id), unix(now), event(id))
			}}
	}
	// sig probes a webhook-signature made from the correct entry.
	sig := func(name, outcome string, header func(t *testing.T, good string) string) probe {
		return probe{name: name, status: http.StatusUnauthorized, outcome: outcome,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				return c.withSignature(t, id, now, header(t, good(id, unix(now), body)), body)
			}}
	}
	// rawHeaders probes header lines edited from a signed delivery's.
	rawHeaders := func(name string, edit func(hdr []string, id, ts, good string) []string) probe {
		return probe{name: name, status: http.StatusUnauthorized, outcome: outcomeMalformed,
			send: func(t *testing.T, id string, now time.Time) sent {
				body, ts := event(id), unix(now)
				g := good(id, ts, body)
				return c.raw(t, edit(lines(id, ts, g, body), id, ts, g), body, readAnswer, body)
			}}
	}
	// rawFraming probes a genuine delivery with extra header lines.
	rawFraming := func(name string, extra ...string) probe {
		return probe{name: name, status: http.StatusBadRequest, outcome: outcomeFraming,
			send: func(t *testing.T, id string, now time.Time) sent {
				body, ts := event(id), unix(now)
				return c.raw(t, append(lines(id, ts, good(id, ts, body), body), extra...), body, readAnswer, body)
			}}
	}
	method := func(m string) probe {
		return probe{name: m, status: http.StatusMethodNotAllowed, outcome: outcomeMethod,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				req := c.gw.delivery(t, id, now, body)
				req.Method = m
				return c.do(t, req, body)
			}}
	}
	bigBody := randomBytes(maxSize + 1)
	oneEntry := func(t *testing.T, g string) string { return strings.TrimPrefix(g, "v1,") }

	return []probe{
		// ---- signature headers: missing, empty, malformed, repeated, huge ----
		{name: "no signature headers", status: http.StatusUnauthorized, outcome: outcomeMalformed,
			send: func(t *testing.T, id string, now time.Time) sent {
				return c.do(t, c.gw.request(t.Context(), "", "", "", event(id)), event(id))
			}},
		{name: "webhook-id missing", status: http.StatusUnauthorized, outcome: outcomeMalformed,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				return c.do(t, c.gw.request(t.Context(), "", unix(now), good(id, unix(now), body), body), body)
			}},
		{name: "webhook-timestamp missing", status: http.StatusUnauthorized, outcome: outcomeMalformed,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				return c.do(t, c.gw.request(t.Context(), id, "", good(id, unix(now), body), body), body)
			}},
		{name: "webhook-signature missing", status: http.StatusUnauthorized, outcome: outcomeMalformed,
			send: func(t *testing.T, id string, now time.Time) sent {
				return c.do(t, c.gw.request(t.Context(), id, unix(now), "", event(id)), event(id))
			}},
		rawHeaders("webhook-id empty", func(hdr []string, id, ts, g string) []string {
			return replace(hdr, "webhook-id:", "webhook-id: ")
		}),
		rawHeaders("webhook-timestamp empty", func(hdr []string, id, ts, g string) []string {
			return replace(hdr, "webhook-timestamp:", "webhook-timestamp:")
		}),
		rawHeaders("webhook-signature empty", func(hdr []string, id, ts, g string) []string {
			return replace(hdr, "webhook-signature:", "webhook-signature:  ")
		}),
		signedID("webhook-id of 257 bytes", func(id string) string { return id + strings.Repeat("x", 257-len(id)) }),
		signedID("webhook-id of 8 KB", func(id string) string { return id + strings.Repeat("x", 8<<10) }),
		signedID("webhook-id with a dot", func(id string) string { return id + ".1" }),
		signedID("webhook-id with UTF-8", func(id string) string { return id + "_é" }),
		rawHeaders("webhook-id with a tab inside", func(hdr []string, id, ts, g string) []string {
			return replace(hdr, "webhook-id:", "webhook-id: "+id+"\t1")
		}),
		rawHeaders("webhook_id spelt with an underscore", func(hdr []string, id, ts, g string) []string {
			return replace(hdr, "webhook-id:", "webhook_id: "+id) // Caddy drops such headers
		}),
		rawHeaders("webhook-id twice", func(hdr []string, id, ts, g string) []string {
			return replace(hdr, "webhook-id:", "webhook-id: "+id, "webhook-id: "+id)
		}),
		rawHeaders("webhook-id twice, cased differently", func(hdr []string, id, ts, g string) []string {
			return replace(hdr, "webhook-id:", "webhook-id: "+id, "WEBHOOK-ID: "+id+"_other")
		}),
		rawHeaders("webhook-timestamp twice", func(hdr []string, id, ts, g string) []string {
			return replace(hdr, "webhook-timestamp:", "webhook-timestamp: "+ts, "webhook-timestamp: "+ts)
		}),
		rawHeaders("webhook-signature twice, both good", func(hdr []string, id, ts, g string) []string {
			return replace(hdr, "webhook-signature:", "webhook-signature: "+g, "webhook-signature: "+g)
		}),
		rawHeaders("webhook-signature entries on two lines", func(hdr []string, id, ts, g string) []string {
			return replace(hdr, "webhook-signature:", "webhook-signature: "+zeroEntry, "webhook-signature: "+g)
		}),
		rawHeaders("webhook-signature folded over two lines", func(hdr []string, id, ts, g string) []string {
			// obs-fold: Go's server joins the lines with a space.
			return replace(hdr, "webhook-signature:", "webhook-signature: "+g[:20]+"\r\n "+g[20:])
		}),
		sig("webhook-signature of 8 KB", outcomeMalformed, func(t *testing.T, g string) string {
			return g + strings.Repeat(" "+zeroEntry, 8<<10/len(zeroEntry))
		}),
		// Past Caddy's default max_header_size (16 KiB), Go's HTTP server
		// refuses the request before any handler runs.
		{name: "webhook-id of 100 KB", status: http.StatusRequestHeaderFieldsTooLarge,
			send: func(t *testing.T, id string, now time.Time) sent {
				long := id + strings.Repeat("x", 100<<10)
				return c.signed(t, long, unix(now), event(id))
			}},
		{name: "webhook-signature of 100 KB", status: http.StatusRequestHeaderFieldsTooLarge,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				return c.withSignature(t, id, now, good(id, unix(now), body)+strings.Repeat(" "+zeroEntry, 100<<10/len(zeroEntry)), body)
			}},

		// ---- timestamps ----
		{name: "timestamp tolerance+1s old", status: http.StatusUnauthorized, outcome: outcomeStale, clock: true,
			send: func(t *testing.T, id string, now time.Time) sent {
				return c.signed(t, id, strconv.FormatInt(now.Unix()-tolerance-1, 10), event(id))
			}},
		{name: "timestamp tolerance+1s ahead", status: http.StatusUnauthorized, outcome: outcomeStale, clock: true,
			send: func(t *testing.T, id string, now time.Time) sent {
				return c.signed(t, id, strconv.FormatInt(now.Unix()+tolerance+1, 10), event(id))
			}},
		signedTS("timestamp 0", outcomeStale, func(time.Time) string { return "0" }),
		signedTS("timestamp -1", outcomeMalformed, func(time.Time) string { return "-1" }),
		signedTS("timestamp negated", outcomeMalformed, func(now time.Time) string { return "-" + unix(now) }),
		signedTS("timestamp of 19 digits", outcomeStale, func(time.Time) string { return "1" + strings.Repeat("0", 18) }),
		signedTS("timestamp of 20 digits", outcomeMalformed, func(time.Time) string { return "1" + strings.Repeat("0", 19) }),
		signedTS("timestamp int64 max", outcomeStale, func(time.Time) string { return strconv.FormatInt(math.MaxInt64, 10) }),
		signedTS("timestamp int64 max+1", outcomeMalformed, func(time.Time) string { return "9223372036854775808" }),
		signedTS("timestamp int64 min", outcomeMalformed, func(time.Time) string { return strconv.FormatInt(math.MinInt64, 10) }),
		signedTS("timestamp with a leading zero", outcomeMalformed, func(now time.Time) string { return "0" + unix(now) }),
		signedTS("timestamp zero-padded to 19 digits", outcomeMalformed, func(now time.Time) string { return fmt.Sprintf("%019d", now.Unix()) }),
		signedTS("timestamp in milliseconds", outcomeStale, func(now time.Time) string { return strconv.FormatInt(now.UnixMilli(), 10) }),
		signedTS("timestamp with a plus sign", outcomeMalformed, func(now time.Time) string { return "+" + unix(now) }),
		signedTS("timestamp with a fraction", outcomeMalformed, func(now time.Time) string { return unix(now) + ".0" }),
		signedTS("timestamp as a date", outcomeMalformed, func(now time.Time) string { return now.UTC().Format(time.RFC3339) }),

		// ---- signature lists ----
		sig("17 entries, the good one last", outcomeMalformed, func(t *testing.T, g string) string {
			return strings.Repeat(zeroEntry+" ", 16) + g
		}),
		sig("v1a entry", outcomeMalformed, func(t *testing.T, g string) string { return "v1a," + oneEntry(t, g) }),
		sig("upper-case V1", outcomeMalformed, func(t *testing.T, g string) string { return "V1," + oneEntry(t, g) }),
		sig("bare base64", outcomeMalformed, oneEntry),
		sig("extra comma after the MAC", outcomeMalformed, func(t *testing.T, g string) string { return g + ",junk" }),
		sig("empty field before the MAC", outcomeMalformed, func(t *testing.T, g string) string { return "v1,," + oneEntry(t, g) }),
		sig("double space between entries", outcomeMalformed, func(t *testing.T, g string) string { return zeroEntry + "  " + g }),
		sig("tab between entries", outcomeMalformed, func(t *testing.T, g string) string { return zeroEntry + "\t" + g }),
		sig("comma between entries", outcomeMalformed, func(t *testing.T, g string) string { return zeroEntry + "," + g }),
		sig("empty entry after the good one", outcomeMalformed, func(t *testing.T, g string) string { return g + " v1," }),
		sig("non-zero padding bits", outcomeMalformed, func(t *testing.T, g string) string {
			m := oneEntry(t, g)
			bad := webhooktest.PaddingBitSet(m)
			if lenient, _ := base64.StdEncoding.DecodeString(bad); base64.StdEncoding.EncodeToString(lenient) != m {
				t.Fatalf("%s is not another spelling of %s", bad, m)
			}
			return "v1," + bad
		}),
		sig("padding missing", outcomeMalformed, func(t *testing.T, g string) string { return strings.TrimSuffix(g, "=") }),
		sig("padding doubled", outcomeMalformed, func(t *testing.T, g string) string { return g + "=" }),
		sig("MAC in hex", outcomeMalformed, func(t *testing.T, g string) string {
			m, _ := base64.StdEncoding.DecodeString(oneEntry(t, g))
			return "v1," + hex.EncodeToString(m)
		}),
		sig("MAC cut to 31 bytes", outcomeMalformed, func(t *testing.T, g string) string {
			m, _ := base64.StdEncoding.DecodeString(oneEntry(t, g))
			return "v1," + base64.StdEncoding.EncodeToString(m[:31])
		}),
		{name: "URL-safe alphabet", status: http.StatusUnauthorized, outcome: outcomeMalformed,
			send: func(t *testing.T, id string, now time.Time) sent {
				id = urlSafeID(id, unix(now))
				body := event(id)
				urlSafe := strings.NewReplacer("+", "-", "/", "_").Replace(good(id, unix(now), body))
				return c.withSignature(t, id, now, urlSafe, body)
			}},
		{name: "signed with another secret", status: http.StatusUnauthorized, outcome: outcomeBadSig,
			send: func(t *testing.T, id string, now time.Time) sent {
				return c.do(t, c.gw.signedWith(t, secretC, id, now, event(id)), event(id))
			}},
		{name: "signed for another id", status: http.StatusUnauthorized, outcome: outcomeBadSig,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				return c.withSignature(t, id, now, good(id+"_other", unix(now), body), body)
			}},
		{name: "signed for another timestamp", status: http.StatusUnauthorized, outcome: outcomeBadSig,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				return c.withSignature(t, id, now, good(id, strconv.FormatInt(now.Unix()-1, 10), body), body)
			}},

		// ---- bodies ----
		{name: "body tampered", status: http.StatusUnauthorized, outcome: outcomeBadSig,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				req := c.gw.delivery(t, id, now, body)
				tampered := bytes.Replace(body, []byte("completed"), []byte("cancelled"), 1)
				req.Body, req.ContentLength, req.GetBody = io.NopCloser(bytes.NewReader(tampered)), int64(len(tampered)), nil
				return c.do(t, req, tampered)
			}},
		{name: "body one bit flipped", status: http.StatusUnauthorized, outcome: outcomeBadSig,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				g := good(id, unix(now), body)
				flipped := slices.Clone(body)
				flipped[len(flipped)/2] ^= 1
				return c.withSignature(t, id, now, g, flipped)
			}},
		{name: "body emptied", status: http.StatusUnauthorized, outcome: outcomeBadSig,
			send: func(t *testing.T, id string, now time.Time) sent {
				return c.withSignature(t, id, now, good(id, unix(now), event(id)), nil)
			}},
		{name: "body with a newline added", status: http.StatusUnauthorized, outcome: outcomeBadSig,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				return c.withSignature(t, id, now, good(id, unix(now), body), append(slices.Clone(body), '\n'))
			}},
		{name: "chunked body tampered", status: http.StatusUnauthorized, outcome: outcomeBadSig,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				tampered := bytes.ToUpper(body)
				return c.do(t, sendChunked(c.gw.delivery(t, id, now, body), tampered), tampered)
			}},
		// The gateway reads what is left of a refused body before it
		// answers, so the sender reliably reads its 413.
		{name: "max_size+1 with Content-Length", status: http.StatusRequestEntityTooLarge, outcome: outcomeTooLarge,
			send: func(t *testing.T, id string, now time.Time) sent {
				return c.do(t, c.gw.delivery(t, id, now, bigBody), bigBody)
			}},
		{name: "max_size+1 chunked", status: http.StatusRequestEntityTooLarge, outcome: outcomeTooLarge,
			send: func(t *testing.T, id string, now time.Time) sent {
				return c.do(t, sendChunked(c.gw.delivery(t, id, now, bigBody), bigBody), bigBody)
			}},
		// A body too long to read, or one that does not come, ends the
		// connection after the answer (docs/security.md); here the client
		// never sends it.
		{name: "Content-Length of 10 GB, body withheld", status: http.StatusRequestEntityTooLarge, outcome: outcomeTooLarge, closes: true,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				hdr := replace(lines(id, unix(now), good(id, unix(now), body), body), "Content-Length:", "Content-Length: 10000000000")
				return c.raw(t, hdr, nil, readAnswer, body)
			}},
		{name: "unsigned, 1 MiB announced, body withheld", status: http.StatusUnauthorized, outcome: outcomeMalformed, closes: true,
			send: func(t *testing.T, id string, now time.Time) sent {
				return c.raw(t, []string{"Content-Length: 1048576"}, nil, readAnswer, nil)
			}},
		// The first answer to a request expecting 100 Continue is the
		// refusal, never 100 Continue, whether the client waits for it
		// before sending the body or, as RFC 9110 allows, does not.
		{name: "Expect 100-continue, stale, body withheld", status: http.StatusUnauthorized, outcome: outcomeStale, closes: true,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				ts := strconv.FormatInt(now.Unix()-3600, 10)
				hdr := append(lines(id, ts, good(id, ts, body), body), "Expect: 100-continue")
				return c.raw(t, hdr, nil, readAnswer, body)
			}},
		{name: "Expect 100-continue, stale, body sent at once", status: http.StatusUnauthorized, outcome: outcomeStale, closes: true,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				ts := strconv.FormatInt(now.Unix()-3600, 10)
				hdr := append(lines(id, ts, good(id, ts, body), body), "Expect: 100-continue")
				return c.raw(t, hdr, body, readAnswer, body)
			}},
		{name: "body shorter than Content-Length, sender done", status: http.StatusBadRequest, outcome: outcomeUnread,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				hdr := replace(lines(id, unix(now), good(id, unix(now), body), body), "Content-Length:", fmt.Sprintf("Content-Length: %d", len(body)+100))
				return c.raw(t, hdr, body, halfClose, body)
			}},
		{name: "chunked body without its last chunk, sender done", status: http.StatusBadRequest, outcome: outcomeUnread,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				hdr := chunkedLines(lines(id, unix(now), good(id, unix(now), body), body))
				return c.raw(t, hdr, chunked(body, 10), halfClose, body)
			}},
		{name: "chunk size not hexadecimal", status: http.StatusBadRequest, outcome: outcomeUnread,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				hdr := chunkedLines(lines(id, unix(now), good(id, unix(now), body), body))
				return c.raw(t, hdr, []byte("zz\r\n"+string(body)+"\r\n0\r\n\r\n"), readAnswer, body)
			}},
		{name: "chunk longer than its size", status: http.StatusBadRequest, outcome: outcomeUnread,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				hdr := chunkedLines(lines(id, unix(now), good(id, unix(now), body), body))
				return c.raw(t, hdr, []byte("5\r\n"+string(body)+"\r\n0\r\n\r\n"), readAnswer, body)
			}},
		{name: "hang-up in the middle of the body", outcome: outcomeUnread,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				return c.raw(t, lines(id, unix(now), good(id, unix(now), body), body), body[:len(body)/2], hangUp, body)
			}},
		{name: "hang-up in the middle of a chunked body", outcome: outcomeUnread,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				hdr := chunkedLines(lines(id, unix(now), good(id, unix(now), body), body))
				return c.raw(t, hdr, chunked(body, 10)[:25], hangUp, body)
			}},
		{name: "hang-up right after the headers", outcome: outcomeUnread,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				return c.raw(t, lines(id, unix(now), good(id, unix(now), body), body), nil, hangUp, body)
			}},

		// ---- framing that would carry more or less than the verified request ----
		rawFraming("Connection: Upgrade to websocket", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"),
		rawFraming("Upgrade to h2c", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA"),
		rawFraming("Upgrade without Connection", "Upgrade: websocket"),
		rawFraming("Connection names webhook-signature", "Connection: webhook-signature"),
		rawFraming("Connection names webhook-id and webhook-timestamp", "Connection: keep-alive, Webhook-Id, webhook-timestamp"),

		// ---- framing Go's HTTP server refuses before any handler ----
		{name: "two different Content-Lengths", status: http.StatusBadRequest,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				hdr := append(lines(id, unix(now), good(id, unix(now), body), body), "Content-Length: 3")
				return c.raw(t, hdr, body, readAnswer, body)
			}},
		{name: "negative Content-Length", status: http.StatusBadRequest,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				hdr := replace(lines(id, unix(now), good(id, unix(now), body), body), "Content-Length:", "Content-Length: -1")
				return c.raw(t, hdr, body, readAnswer, body)
			}},
		{name: "Transfer-Encoding gzip, chunked", status: http.StatusNotImplemented,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				hdr := replace(lines(id, unix(now), good(id, unix(now), body), body), "Content-Length:", "Transfer-Encoding: gzip, chunked")
				return c.raw(t, hdr, append(chunked(body, 100), "0\r\n\r\n"...), readAnswer, body)
			}},

		// ---- methods ----
		method(http.MethodGet),
		method(http.MethodHead),
		method(http.MethodPut),
		method(http.MethodPatch),
		method(http.MethodDelete),
		method(http.MethodOptions),
		{name: "post in lower case", status: http.StatusMethodNotAllowed, outcome: outcomeMethod,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				return c.rawLine(t, "post "+hookPath+" HTTP/1.1", lines(id, unix(now), good(id, unix(now), body), body), body, readAnswer, body)
			}},

		// ---- ids already delivered or being forwarded ----
		c.replay("replay of a delivered request", 0),
		c.replay("delivered id re-signed at a new timestamp", 2*time.Second),
		{name: "id being forwarded", status: http.StatusConflict, outcome: outcomeInFlight,
			setup: func(t *testing.T, id string, now time.Time) func() {
				return hold(t, c.gw, c.up, id, now)
			},
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				return c.do(t, c.gw.delivery(t, id, now, body), body)
			}},
	}
}

// replay delivers a request signed resign ago first, then sends it again
// signed now (the same bytes when resign is 0): the gateway answers 200 with
// no body and forwards nothing.
func (c *catalogue) replay(name string, resign time.Duration) probe {
	return probe{name: name, status: http.StatusOK, outcome: outcomeDuplicate,
		setup: func(t *testing.T, id string, now time.Time) func() {
			body := event(id)
			deliver(t, c.gw.delivery(t, id, now.Add(-resign), body)).checkBody(t, body)
			return nil
		},
		send: func(t *testing.T, id string, now time.Time) sent {
			body := event(id)
			return c.do(t, c.gw.delivery(t, id, now, body), body)
		}}
}

func (c *catalogue) accepted() []probe {
	accept := func(name string, send func(t *testing.T, id string, now time.Time) sent) probe {
		return probe{name: name, status: http.StatusOK, outcome: outcomeForwarded, send: send}
	}
	contentType := func(name, ct string) probe {
		return accept(name, func(t *testing.T, id string, now time.Time) sent {
			body := []byte("plain text for " + id + "\n")
			req := c.gw.delivery(t, id, now, body)
			req.Header.Del("Content-Type")
			if ct != "" {
				req.Header.Set("Content-Type", ct)
			}
			s := c.do(t, req, body)
			s.check = func(t *testing.T, r record) {
				var want []string
				if ct != "" {
					want = []string{ct}
				}
				if got := r.header("Content-Type"); !slices.Equal(got, want) {
					t.Errorf("upstream got Content-Type %q, want %q", got, want)
				}
			}
			return s
		})
	}
	edge := func(name string, offset int64) probe {
		p := accept(name, func(t *testing.T, id string, now time.Time) sent {
			return c.signed(t, id, strconv.FormatInt(now.Unix()+offset, 10), event(id))
		})
		p.clock = true
		return p
	}
	return []probe{
		accept("16 entries, the good one last", func(t *testing.T, id string, now time.Time) sent {
			body := event(id)
			return c.withSignature(t, id, now, strings.Repeat(zeroEntry+" ", 15)+good(id, unix(now), body), body)
		}),
		accept("a wrong entry, then the good one", func(t *testing.T, id string, now time.Time) sent {
			body := event(id)
			other := "v1," + mac(secretC, id, unix(now), body)
			return c.withSignature(t, id, now, other+" "+good(id, unix(now), body), body)
		}),
		edge("timestamp exactly tolerance old", -tolerance),
		edge("timestamp exactly tolerance ahead", tolerance),
		contentType("Content-Type text/plain", "text/plain"),
		contentType("no Content-Type", ""),
		contentType("Content-Type multipart/form-data", "multipart/form-data; boundary=x"),
		accept("webhook-id of 256 bytes", func(t *testing.T, id string, now time.Time) sent {
			id += strings.Repeat("x", 256-len(id))
			return c.signed(t, id, unix(now), event(id))
		}),
		accept("webhook-id of every punctuation but the dot", func(t *testing.T, id string, now time.Time) sent {
			id += "!\"#$%&'()*+,-/:;<=>?@[\\]^_`{|}~"
			return c.signed(t, id, unix(now), event("punctuation"))
		}),
		accept("header names in upper case", func(t *testing.T, id string, now time.Time) sent {
			body := event(id)
			hdr := lines(id, unix(now), good(id, unix(now), body), body)
			for i, l := range hdr {
				name, value, _ := strings.Cut(l, ":")
				hdr[i] = strings.ToUpper(name) + ":" + value
			}
			return c.raw(t, hdr, body, readAnswer, body)
		}),
		accept("whitespace around header values", func(t *testing.T, id string, now time.Time) sent {
			// Optional whitespace is not part of an HTTP field value.
			body := event(id)
			hdr := lines(id, unix(now), good(id, unix(now), body), body)
			for i, l := range hdr[:3] {
				name, value, _ := strings.Cut(l, ": ")
				hdr[i] = name + ":  \t" + value + " \t"
			}
			return c.raw(t, hdr, body, readAnswer, body)
		}),
		accept("chunked, with a webhook-signature trailer", func(t *testing.T, id string, now time.Time) sent {
			body := event(id)
			g := good(id, unix(now), body)
			hdr := append(chunkedLines(lines(id, unix(now), g, body)), "Trailer: Webhook-Signature")
			tail := append(chunked(body, 7), "0\r\nWebhook-Signature: "+zeroEntry+"\r\n\r\n"...)
			s := c.raw(t, hdr, tail, readAnswer, body)
			s.check = func(t *testing.T, r record) {
				if got := r.header("webhook-signature"); len(got) != 1 || got[0] != g {
					t.Errorf("upstream got webhook-signature %q, want only the header's %q", got, g)
				}
				if got := r.header("Trailer"); len(got) != 0 {
					t.Errorf("upstream got Trailer %q, want none", got)
				}
			}
			return s
		}),
		accept("Content-Length and chunked: chunked wins", func(t *testing.T, id string, now time.Time) sent {
			body := event(id)
			hdr := append(chunkedLines(lines(id, unix(now), good(id, unix(now), body), body)), "Content-Length: 5")
			return c.raw(t, hdr, append(chunked(body, 16), "0\r\n\r\n"...), readAnswer, body)
		}),
		accept("empty body, chunked", func(t *testing.T, id string, now time.Time) sent {
			hdr := chunkedLines(lines(id, unix(now), good(id, unix(now), nil), nil))
			return c.raw(t, hdr, []byte("0\r\n\r\n"), readAnswer, []byte{})
		}),
		accept("HTTP/1.0", func(t *testing.T, id string, now time.Time) sent {
			body := event(id)
			return c.rawLine(t, "POST "+hookPath+" HTTP/1.0", lines(id, unix(now), good(id, unix(now), body), body), body, readAnswer, body)
		}),
		accept("Expect 100-continue", func(t *testing.T, id string, now time.Time) sent {
			body := event(id)
			hdr := append(lines(id, unix(now), good(id, unix(now), body), body), "Expect: 100-continue")
			return c.expectContinue(t, hdr, body)
		}),
	}
}

// expectContinue sends the headers, waits for 100 Continue, then sends the
// body and reads the final answer.
func (c *catalogue) expectContinue(t *testing.T, hdr []string, body []byte) sent {
	t.Helper()
	conn, err := net.DialTimeout("tcp", c.gw.addr, ioBound)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(ioBound))
	if _, err := conn.Write(rawMessage(post, c.gw.addr, hdr, nil)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	if interim := readRawResponse(t, br); interim.StatusCode != http.StatusContinue {
		t.Fatalf("answer to the headers: %s, want 100 Continue", interim.Status)
	}
	if _, err := conn.Write(body); err != nil {
		t.Fatal(err)
	}
	// More 1xx may come: the Expect header is forwarded, and the
	// upstream's own 100 Continue is relayed.
	resp := readRawResponse(t, br)
	for resp.StatusCode < http.StatusOK {
		resp = readRawResponse(t, br)
	}
	answer, _ := io.ReadAll(resp.Body)
	return sent{resp: resp, answer: answer, payload: body}
}
