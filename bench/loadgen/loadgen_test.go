package main

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// The pre-signed corpus must sign exactly as the reference library does, and
// each kind must get the verdict the load generator expects of it.
func TestCorpusSignsLikeTheReference(t *testing.T) {
	key, err := verifier.ParseSecret(webhooktest.Secret)
	if err != nil {
		t.Fatal(err)
	}
	v, err := verifier.New(verifier.Config{Keys: [][]byte{key}, Tolerance: verifier.DefaultTolerance})
	if err != nil {
		t.Fatal(err)
	}
	weights := [numKinds]int{kindValid: 1, kindTampered: 1, kindStale: 1, kindReplay: 1, kindUnsigned: 1}
	for _, size := range []int{0, 1 << 10, 64 << 10} {
		c, err := newCorpus(key, 200, size, weights, verifier.DefaultTolerance, 7)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[kind]int{}
		for i, j := range c.jobs {
			seen[j.kind]++
			if j.kind == kindReplay || j.kind == kindUnsigned {
				continue
			}
			body := c.bodies[j.body]
			if size > 0 && len(body) != size {
				t.Fatalf("size %d: body of %d bytes", size, len(body))
			}
			id, ts, sig := c.headers(i)
			sec, _ := strconv.ParseInt(ts, 10, 64)
			if want := webhooktest.Sign(t, webhooktest.Secret, id, time.Unix(sec, 0), body); sig != want {
				t.Fatalf("job %d: signature %q, the reference signs %q", i, sig, want)
			}
			h := verifier.Headers{ID: id, Timestamp: ts, Signature: sig}
			sent := body
			if j.kind == kindTampered {
				sent = c.tampered[j.body]
				if len(sent) != len(body) || string(sent) == string(body) {
					t.Fatalf("job %d: tampered body not a same-length change", i)
				}
			}
			_, err := v.Verify(h, sent)
			switch j.kind {
			case kindValid:
				if err != nil {
					t.Fatalf("valid job %d refused: %v", i, err)
				}
			case kindTampered:
				if !errors.Is(err, verifier.ErrNoMatchingSignature) {
					t.Fatalf("tampered job %d: %v, want no matching signature", i, err)
				}
			case kindStale:
				if !errors.Is(err, verifier.ErrTimestampTooOld) {
					t.Fatalf("stale job %d: %v, want too old", i, err)
				}
			}
		}
		for k := range numKinds {
			if seen[k] == 0 {
				t.Errorf("size %d: no %s job among 200", size, k)
			}
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{"0": 0, "1024": 1024, "1KiB": 1024, "64KiB": 65536, "1MiB": 1 << 20, "2k": 2048, "1MB": 1000000} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "2GiB", "1.5MiB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}
