package verifier

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

func mustKey(t testing.TB, secret string) []byte {
	t.Helper()
	key, err := ParseSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func newVerifier(t testing.TB, now time.Time, secrets ...string) *Verifier {
	t.Helper()
	var keys [][]byte
	for _, s := range secrets {
		keys = append(keys, mustKey(t, s))
	}
	v, err := New(Config{Keys: keys, Tolerance: DefaultTolerance, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestPublishedVectors(t *testing.T) {
	vectors := webhooktest.LoadVectors(t)
	for _, vec := range vectors.Vectors {
		t.Run(vec.Name, func(t *testing.T) {
			sent, err := strconv.ParseInt(vec.Timestamp, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			v := newVerifier(t, time.Unix(sent, 0), vec.Secret)
			h := Headers{ID: vec.ID, Timestamp: vec.Timestamp, Signature: vec.Signature}
			if _, err := v.Verify(h, []byte(vec.Payload)); err != nil {
				t.Fatalf("published vector refused: %v", err)
			}
			// The same delivery among other entries, as during a rotation.
			h.Signature = vectors.WrongSignatures[0] + " " + vec.Signature
			if _, err := v.Verify(h, []byte(vec.Payload)); err != nil {
				t.Fatalf("vector as second entry refused: %v", err)
			}
			for _, wrong := range vectors.WrongSignatures {
				h.Signature = wrong
				if _, err := v.Verify(h, []byte(vec.Payload)); err == nil {
					t.Fatalf("wrong signature %q accepted", wrong)
				}
			}
			// One byte more or less of body, or another id, must not verify.
			h.Signature = vec.Signature
			for _, body := range []string{vec.Payload + " ", vec.Payload[:len(vec.Payload)-1], strings.ToUpper(vec.Payload)} {
				if _, err := v.Verify(h, []byte(body)); !errors.Is(err, ErrNoMatchingSignature) {
					t.Fatalf("altered body: got %v, want ErrNoMatchingSignature", err)
				}
			}
			h.ID = vec.ID + "x"
			if _, err := v.Verify(h, []byte(vec.Payload)); !errors.Is(err, ErrNoMatchingSignature) {
				t.Fatalf("altered id: got %v, want ErrNoMatchingSignature", err)
			}
		})
	}
}

func TestRotationAcceptsAnyConfiguredKey(t *testing.T) {
	vectors := webhooktest.LoadVectors(t)
	a, c := vectors.Vectors[0], vectors.Vectors[2]
	sent, _ := strconv.ParseInt(c.Timestamp, 10, 64)
	v := newVerifier(t, time.Unix(sent, 0), a.Secret, c.Secret)
	if key, err := v.Verify(Headers{ID: c.ID, Timestamp: c.Timestamp, Signature: c.Signature}, []byte(c.Payload)); err != nil || key != 1 {
		t.Fatalf("signature by the second key: key %d, %v; want key 1", key, err)
	}
	// Signed by both (as a sender mid-rotation may do): the last key.
	keyA, _ := ParseSecret(a.Secret)
	sigA, err := Sign(keyA, c.ID, c.Timestamp, []byte(c.Payload))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		signature string
		key       int
	}{
		{sigA, 0},
		{sigA + " " + c.Signature, 1},
		{c.Signature + " " + sigA, 1},
	} {
		if key, err := v.Verify(Headers{ID: c.ID, Timestamp: c.Timestamp, Signature: tc.signature}, []byte(c.Payload)); err != nil || key != tc.key {
			t.Errorf("signature %q: key %d, %v; want key %d", tc.signature, key, err, tc.key)
		}
	}
	if key, err := v.Verify(Headers{ID: c.ID, Timestamp: c.Timestamp, Signature: sigA}, []byte("tampered")); key != -1 || err == nil {
		t.Errorf("tampered body: key %d, %v; want -1 and an error", key, err)
	}
	only := newVerifier(t, time.Unix(sent, 0), a.Secret)
	if _, err := only.Verify(Headers{ID: c.ID, Timestamp: c.Timestamp, Signature: c.Signature}, []byte(c.Payload)); !errors.Is(err, ErrNoMatchingSignature) {
		t.Fatalf("signature by an unconfigured key: got %v, want ErrNoMatchingSignature", err)
	}
}

func TestRefusals(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	body := []byte(`{"type":"response.completed"}`)
	const id = "wh_685c059ae39c8190af8c71ed1022a24d"
	good := webhooktest.Sign(t, webhooktest.Secret, id, now, body)
	mac := strings.TrimPrefix(good, "v1,")
	ts := strconv.FormatInt(now.Unix(), 10)
	at := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	v := newVerifier(t, now, webhooktest.Secret)

	for _, tc := range []struct {
		name          string
		id, ts, sig   string
		want          error // nil: accepted
		signedAtDelta time.Duration
	}{
		{name: "valid", id: id, ts: ts, sig: good},
		{name: "valid at the old edge", id: id, ts: at(-5 * time.Minute), signedAtDelta: -5 * time.Minute},
		{name: "valid at the new edge", id: id, ts: at(5 * time.Minute), signedAtDelta: 5 * time.Minute},
		{name: "one second too old", id: id, ts: at(-5*time.Minute - time.Second), want: ErrTimestampTooOld},
		{name: "one second too new", id: id, ts: at(5*time.Minute + time.Second), want: ErrTimestampTooNew},
		{name: "zero", id: id, ts: "0", sig: good, want: ErrTimestampTooOld},
		{name: "max int64", id: id, ts: "9223372036854775807", sig: good, want: ErrTimestampTooNew},
		{name: "past int64", id: id, ts: "9223372036854775808", sig: good, want: ErrInvalidTimestamp},
		{name: "19 nines", id: id, ts: "9999999999999999999", sig: good, want: ErrInvalidTimestamp},
		{name: "20 digits", id: id, ts: "17500000000000000000", sig: good, want: ErrInvalidTimestamp},
		{name: "min int64", id: id, ts: "-9223372036854775808", sig: good, want: ErrInvalidTimestamp},
		{name: "negative", id: id, ts: "-1", sig: good, want: ErrInvalidTimestamp},
		{name: "plus sign", id: id, ts: "+" + ts, sig: good, want: ErrInvalidTimestamp},
		{name: "leading zero", id: id, ts: "0" + ts, sig: good, want: ErrInvalidTimestamp},
		{name: "fraction", id: id, ts: ts + ".5", sig: good, want: ErrInvalidTimestamp},
		{name: "space", id: id, ts: ts + " ", sig: good, want: ErrInvalidTimestamp},
		{name: "milliseconds", id: id, ts: ts + "000", sig: good, want: ErrTimestampTooNew},
		{name: "RFC 3339", id: id, ts: now.UTC().Format(time.RFC3339), sig: good, want: ErrInvalidTimestamp},
		{name: "empty timestamp", id: id, ts: "", sig: good, want: ErrMissingHeader},
		{name: "empty id", id: "", ts: ts, sig: good, want: ErrMissingHeader},
		{name: "id with dot", id: "wh_1.2", ts: ts, sig: good, want: ErrInvalidID},
		{name: "id with space", id: "wh 1", ts: ts, sig: good, want: ErrInvalidID},
		{name: "id with control byte", id: "wh\x001", ts: ts, sig: good, want: ErrInvalidID},
		{name: "id with UTF-8", id: "wh_é", ts: ts, sig: good, want: ErrInvalidID},
		{name: "id too long", id: strings.Repeat("a", MaxIDLen+1), ts: ts, sig: good, want: ErrInvalidID},
		{name: "empty signature", id: id, ts: ts, sig: "", want: ErrMissingHeader},
		{name: "bare base64", id: id, ts: ts, sig: mac, want: ErrInvalidSignature},
		{name: "v1a entry", id: id, ts: ts, sig: "v1a," + mac, want: ErrInvalidSignature},
		{name: "v2 entry", id: id, ts: ts, sig: "v2," + mac, want: ErrInvalidSignature},
		{name: "V1 upper case", id: id, ts: ts, sig: "V1," + mac, want: ErrInvalidSignature},
		{name: "v1 empty", id: id, ts: ts, sig: "v1,", want: ErrInvalidSignature},
		{name: "v1 short MAC", id: id, ts: ts, sig: "v1," + mac[:40], want: ErrInvalidSignature},
		{name: "v1 long MAC", id: id, ts: ts, sig: "v1," + mac + "AAAA", want: ErrInvalidSignature},
		{name: "v1 unpadded", id: id, ts: ts, sig: "v1," + strings.TrimRight(mac, "="), want: ErrInvalidSignature},
		{name: "v1 URL alphabet", id: id, ts: ts, sig: "v1,-" + mac[1:], want: ErrInvalidSignature},
		{name: "extra comma", id: id, ts: ts, sig: good + ",junk", want: ErrInvalidSignature},
		{name: "good then junk entry", id: id, ts: ts, sig: good + " junk", want: ErrInvalidSignature},
		{name: "double space", id: id, ts: ts, sig: good + "  " + good, want: ErrInvalidSignature},
		{name: "trailing space", id: id, ts: ts, sig: good + " ", want: ErrInvalidSignature},
		{name: "comma separated", id: id, ts: ts, sig: good + "," + good, want: ErrInvalidSignature},
		{name: "16 entries, last good", id: id, ts: ts, sig: strings.Repeat("v1,"+strings.Repeat("A", 43)+"= ", MaxSignatures-1) + good},
		{name: "17 entries", id: id, ts: ts, sig: strings.Repeat(good+" ", MaxSignatures) + good, want: ErrTooManySignatures},
		{name: "huge header", id: id, ts: ts, sig: strings.Repeat("v1,x ", 100_000), want: ErrTooManySignatures},
		{name: "non-canonical padding bits", id: id, ts: ts, sig: "v1," + webhooktest.PaddingBitSet(mac), want: ErrInvalidSignature},
		{name: "wrong MAC", id: id, ts: ts, sig: "v1," + strings.Repeat("A", 43) + "=", want: ErrNoMatchingSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sig := tc.sig
			if sig == "" && tc.want == nil || tc.signedAtDelta != 0 {
				sig = webhooktest.Sign(t, webhooktest.Secret, tc.id, now.Add(tc.signedAtDelta), body)
			}
			_, err := v.Verify(Headers{ID: tc.id, Timestamp: tc.ts, Signature: sig}, body)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if strings.Contains(err.Error(), mac) || strings.Contains(err.Error(), string(body)) {
				t.Fatalf("error text leaks the signature or body: %v", err)
			}
		})
	}
}

// TestParseSecret: the forms accepted, and for each mistake a message that
// says which it is, never quoting the secret.
func TestParseSecret(t *testing.T) {
	for _, tc := range []struct {
		secret string
		want   string // "" for a valid secret, else part of the error
	}{
		{webhooktest.Secret, ""},
		{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", ""},  // 24 bytes
		{"whsec_" + strings.Repeat("A", 86) + "==", ""}, // 64 bytes
		{"", "empty"},
		{strings.TrimPrefix(webhooktest.Secret, "whsec_"), `does not start with "whsec_"`},
		{"WHSEC_" + strings.TrimPrefix(webhooktest.Secret, "whsec_"), `does not start with "whsec_"`},
		{webhooktest.Secret[:len(webhooktest.Secret)-1], "lacks its padding: it should end with 1 '='"},
		{webhooktest.Secret[:len(webhooktest.Secret)-2], "is cut short"},
		{webhooktest.Secret[:20] + "\n" + webhooktest.Secret[20:], "a space or a line break at character 15 of the base64"},
		{webhooktest.Secret + " ", "begins or ends with a space or a line break"},
		{"\n" + webhooktest.Secret, "begins or ends with a space or a line break"},
		{"whsec_" + strings.Repeat("A", 28), "decodes to 21 bytes"},
		{"whsec_" + strings.Repeat("A", 88), "decodes to 66 bytes"},
		{"whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24-Aj40c=", "URL-safe alphabet"},
		{"whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40d=", "not canonical base64"},
		{"whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj4*c=", "character 42 of the base64 is not"},
	} {
		_, err := ParseSecret(tc.secret)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("ParseSecret(%q): %v, want it accepted", tc.secret, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("ParseSecret(%q): %v, want an error containing %q", tc.secret, err, tc.want)
		}
		if err != nil && len(tc.secret) > len(SecretPrefix)+4 && strings.Contains(err.Error(), strings.TrimSpace(tc.secret)[len(SecretPrefix):]) {
			t.Errorf("error leaks the secret: %v", err)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	key := mustKey(t, webhooktest.Secret)
	for _, cfg := range []Config{
		{Tolerance: DefaultTolerance},
		{Keys: [][]byte{key}, Tolerance: 0},
		{Keys: [][]byte{key}, Tolerance: 999 * time.Millisecond},
		{Keys: [][]byte{key[:10]}, Tolerance: DefaultTolerance},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%d keys, tolerance %s) accepted", len(cfg.Keys), cfg.Tolerance)
		}
	}
}

// TestStreamingMatchesWholeBody: writing the body in pieces gives the verdict
// of the whole body, so a handler may hash while it reads.
func TestStreamingMatchesWholeBody(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	v := newVerifier(t, now, webhooktest.Secret)
	body := []byte(strings.Repeat(`{"k":"v"}`, 5000))
	h := Headers{ID: "msg_1", Timestamp: strconv.FormatInt(now.Unix(), 10),
		Signature: webhooktest.Sign(t, webhooktest.Secret, "msg_1", now, body)}
	for _, piece := range []int{1, 7, 4096, len(body)} {
		m, err := v.Begin(h)
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(body); off += piece {
			_, _ = m.Write(body[off:min(off+piece, len(body))])
		}
		if _, err := m.Finish(); err != nil {
			t.Fatalf("pieces of %d: %v", piece, err)
		}
	}
	// A pooled Message that was discarded mid-body must not taint the next.
	m, _ := v.Begin(h)
	_, _ = m.Write([]byte("garbage"))
	m.Discard()
	if _, err := v.Verify(h, body); err != nil {
		t.Fatalf("after a discarded message: %v", err)
	}
}

// TestFreshnessAtExtremeClocks: no clock value makes the window wrap round.
func TestFreshnessAtExtremeClocks(t *testing.T) {
	vec := webhooktest.LoadVectors(t).Vectors[0]
	sent, _ := strconv.ParseInt(vec.Timestamp, 10, 64)
	h := Headers{ID: vec.ID, Timestamp: vec.Timestamp, Signature: vec.Signature}
	for _, now := range []int64{math.MinInt64 + sent, math.MinInt64, -1, 0, math.MaxInt64} {
		v := newVerifier(t, time.Unix(now, 0), vec.Secret)
		if _, err := v.Verify(h, []byte(vec.Payload)); err == nil {
			t.Errorf("clock at %d accepted a timestamp of %d", now, sent)
		}
	}
}

// TestFreshnessJudgedWhenBodyEnds: a sender who sends the headers in time
// and the body slowly must not stretch the freshness window. Begin judges
// the timestamp when the headers arrive, Finish again when the body has
// been read.
func TestFreshnessJudgedWhenBodyEnds(t *testing.T) {
	key := mustKey(t, webhooktest.Secret)
	sent := time.Unix(1_750_000_000, 0)
	body := []byte(`{"type":"response.completed"}`)
	h := Headers{ID: "msg_slow", Timestamp: strconv.FormatInt(sent.Unix(), 10),
		Signature: webhooktest.Sign(t, webhooktest.Secret, "msg_slow", sent, body)}
	for _, tc := range []struct {
		name       string
		bodyTakes  time.Duration // from the headers to the end of the body
		headersAge time.Duration // how old the timestamp is when the headers arrive
		want       error
	}{
		{"in time", time.Second, 0, nil},
		{"ends exactly at the tolerance", 5 * time.Minute, 0, nil},
		{"ends a second past the tolerance", 5*time.Minute + time.Second, 0, ErrTimestampTooOld},
		{"headers late in the window, body slow", 3 * time.Second, 5*time.Minute - 2*time.Second, ErrTimestampTooOld},
		{"signed ahead of the clock, body slow", 20 * time.Second, -5 * time.Minute, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := sent.Add(tc.headersAge)
			v, err := New(Config{Keys: [][]byte{key}, Tolerance: DefaultTolerance, Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			m, err := v.Begin(h)
			if err != nil {
				t.Fatalf("Begin: %v", err)
			}
			_, _ = m.Write(body[:5])
			now = now.Add(tc.bodyTakes)
			_, _ = m.Write(body[5:])
			if _, err := m.Finish(); !errors.Is(err, tc.want) {
				t.Fatalf("Finish: %v, want %v", err, tc.want)
			}
		})
	}
}

// TestSignMatchesReference: Sign writes what the reference library writes,
// for the published vectors and for others.
func TestSignMatchesReference(t *testing.T) {
	for _, vec := range webhooktest.LoadVectors(t).Vectors {
		got, err := Sign(mustKey(t, vec.Secret), vec.ID, vec.Timestamp, []byte(vec.Payload))
		if err != nil || got != vec.Signature {
			t.Errorf("%s: %q (%v), want %q", vec.Name, got, err, vec.Signature)
		}
	}
	ts := time.Unix(1_750_000_000, 0)
	for _, body := range [][]byte{nil, []byte("{}"), {0, 0xff, '\r', '\n'}} {
		want := webhooktest.Sign(t, webhooktest.Secret, "msg_sign", ts, body)
		if got, err := Sign(mustKey(t, webhooktest.Secret), "msg_sign", "1750000000", body); err != nil || got != want {
			t.Errorf("%q: %q (%v), want %q", body, got, err, want)
		}
	}
	for _, tc := range []struct{ id, ts string }{{"a.b", "1"}, {"", "1"}, {"ok", "01"}, {"ok", "-1"}} {
		if _, err := Sign(mustKey(t, webhooktest.Secret), tc.id, tc.ts, nil); err == nil {
			t.Errorf("id %q timestamp %q signed", tc.id, tc.ts)
		}
	}
}
