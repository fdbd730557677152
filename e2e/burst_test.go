package e2e_test

import (
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"

	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// A burst: burstDeliveries signed deliveries from burstSenders concurrent
// senders, as OpenAI sends when many jobs end at once.
const (
	burstSenders    = 128
	burstDeliveries = 3000
)

// processed is what an example app prints for each event it takes; the
// burst's events are evt_burst_<n> about batch_burst_<n>.
var processed = regexp.MustCompile(`processed batch\.completed (evt_burst_[0-9]+) about batch_burst_[0-9]+`)

// TestBurst runs each example pair as its README says and sends it a burst
// through the gateway: every delivery must be answered 200 and its event
// processed by the app once, each on a line of its own.
func TestBurst(t *testing.T) {
	e := setup(t)
	for _, ex := range examples {
		t.Run(ex.name, func(t *testing.T) {
			appOut, gw := startExample(t, e, ex.name, ex.app)

			began := time.Now()
			answers := burst(t, gw)
			t.Logf("%d deliveries from %d senders answered in %s", burstDeliveries, burstSenders, time.Since(began).Round(time.Millisecond))
			var ok []string // the event ids answered 200
			failed := map[string]int{}
			for i, a := range answers {
				if a == "200 OK" {
					ok = append(ok, fmt.Sprintf("evt_burst_%d", i))
				} else {
					failed[a]++
				}
			}
			if len(failed) > 0 {
				t.Errorf("%d of %d deliveries were not answered 200 OK: %v", burstDeliveries-len(ok), burstDeliveries, failed)
			}

			// The app answers first and processes afterwards: wait until it
			// has processed every delivery answered 200.
			var done map[string]int
			var mangled []string
			webhooktest.WaitFor(t, "the app to process the burst", func() bool {
				done, mangled = processedIDs(appOut.String())
				return !slices.ContainsFunc(ok, func(id string) bool { return done[id] == 0 })
			})
			if len(mangled) > 0 {
				t.Errorf("the app printed %d lines mangled by concurrent writes, first %q", len(mangled), mangled[0])
			}
			var missing, twice []string
			for _, id := range ok {
				switch n := done[id]; {
				case n == 0:
					missing = append(missing, id)
				case n > 1:
					twice = append(twice, id)
				}
			}
			if len(missing) > 0 || len(twice) > 0 {
				t.Errorf("of %d events answered 200, %d were not processed (first %v) and %d more than once (first %v)",
					len(ok), len(missing), missing[:min(len(missing), 3)], len(twice), twice[:min(len(twice), 3)])
			}
		})
	}
}

// burst sends the burst to gw and returns each delivery's answer, its
// status or the client's error, by event number.
func burst(t *testing.T, gw *caddyServer) []string {
	t.Helper()
	// A bound on the whole burst, should the gateway stop answering: then
	// every delivery not sent yet fails at once.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	transport := &http.Transport{MaxIdleConnsPerHost: burstSenders}
	defer transport.CloseIdleConnections()
	c := &http.Client{Transport: transport, Timeout: ioBound}

	answers := make([]string, burstDeliveries)
	next := make(chan int)
	var wg sync.WaitGroup
	for range burstSenders {
		wg.Go(func() {
			for i := range next {
				answers[i] = deliverEvent(ctx, c, gw.url+"/hooks/openai", i)
			}
		})
	}
	for i := range burstDeliveries {
		next <- i
	}
	close(next)
	wg.Wait()
	return answers
}

// deliverEvent POSTs event number i to url, signed now as OpenAI signs it,
// and returns the answer's status, or the error when there is none.
func deliverEvent(ctx context.Context, c *http.Client, url string, i int) string {
	id, now := fmt.Sprintf("wh_burst_%d", i), time.Now()
	body := fmt.Appendf(nil, `{"object":"event","id":"evt_burst_%d","type":"batch.completed","created_at":%d,"data":{"id":"batch_burst_%d","object":"batch"}}`, i, now.Unix(), i)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return "error: " + err.Error()
	}
	req.Header.Set("Webhook-Id", id)
	req.Header.Set("Webhook-Timestamp", unix(now))
	req.Header.Set("Webhook-Signature", good(id, unix(now), body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		// Only the kind of error, so that they add up: the message names
		// ports.
		msg := err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
		return "error: " + msg
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.Status
}

// processedIDs reads an example app's complete output lines and returns
// how many times it processed each burst event, and the lines that are more
// than one processed line, or one glued to another: two writes in one line.
func processedIDs(out string) (map[string]int, []string) {
	out = out[:strings.LastIndex(out, "\n")+1] // the last line may not be complete yet
	ids := map[string]int{}
	var mangled []string
	for l := range strings.Lines(out) {
		l = strings.TrimSuffix(l, "\n")
		found := processed.FindAllStringSubmatchIndex(l, -1)
		for _, m := range found {
			ids[l[m[2]:m[3]]]++
		}
		if len(found) > 1 || len(found) == 1 && (found[0][0] != 0 || found[0][1] != len(l)) {
			mangled = append(mangled, l)
		}
	}
	return ids, mangled
}
