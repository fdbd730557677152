package verifier

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// Published v1a vectors. Both sign the same delivery; the first is the
// example header of the Standard Webhooks specification
// (spec/standard-webhooks.md), produced by the Svix server's
// test_asymmetric_key_signing (server/svix-server/src/worker.rs) with the
// key of its e2e tests, whose public key they give; the second is the
// JavaScript library's v1a pull request (#308, webhook.test.ts), a key from
// the seed 0x01 x 32.
var v1aVectors = []struct {
	name, signingKey, publicKey, signature string
}{
	{
		name:       "spec example (Svix server)",
		signingKey: "whsk_6Xb/dCcHpPea21PS1N9VY/NZW723CEc77N4rJCubMbfVKIDij2HKpMKkioLlX0dRqSKJp4AJ6p9lMicMFs6Kvg==",
		publicKey:  "whpk_1SiA4o9hyqTCpIqC5V9HUakiiaeACeqfZTInDBbOir4=",
		signature:  "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg==",
	},
	{
		name:       "JavaScript library PR",
		signingKey: "whsk_AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQGKiOPddAnxlf1S2y08ul1yymcJvx2UEhvzdIgBtA9vXA==",
		publicKey:  "whpk_iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=",
		signature:  "v1a,Ykcu7AtGZGmZxFEH1Gaa2Nd7feY/CTuruoL4fqgnKwfbHU4DhemoVHZdvGfIvKvn4BIgwktLGGPGIr/i9nK7AA==",
	},
}

const (
	v1aVectorID      = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	v1aVectorTS      = "1614265330"
	v1aVectorPayload = `{"test": 2432232314}`
)

func TestPublishedV1aVectors(t *testing.T) {
	for _, vec := range v1aVectors {
		t.Run(vec.name, func(t *testing.T) {
			priv, err := ParseSigningKey(vec.signingKey)
			if err != nil {
				t.Fatal(err)
			}
			if got := FormatPublicKey(priv.Public().(ed25519.PublicKey)); got != vec.publicKey {
				t.Fatalf("public key %s, want %s", got, vec.publicKey)
			}
			if got := FormatSigningKey(priv); got != vec.signingKey {
				t.Fatalf("FormatSigningKey: %s, want the key parsed", got)
			}
			// The 32-byte seed form (Python and Go library PRs) is the same key.
			seedForm := SigningKeyPrefix + base64.StdEncoding.EncodeToString(priv.Seed())
			if fromSeed, err := ParseSigningKey(seedForm); err != nil || !fromSeed.Equal(priv) {
				t.Fatalf("seed form: %v, equal %v", err, fromSeed.Equal(priv))
			}
			sig, err := SignV1a(priv, v1aVectorID, v1aVectorTS, []byte(v1aVectorPayload))
			if err != nil || sig != vec.signature {
				t.Fatalf("SignV1a: %q (%v), want %q", sig, err, vec.signature)
			}
			pub, err := ParsePublicKey(vec.publicKey)
			if err != nil {
				t.Fatal(err)
			}
			sent, _ := strconv.ParseInt(v1aVectorTS, 10, 64)
			v, err := New(Config{PublicKeys: [][]byte{pub}, Tolerance: DefaultTolerance, Now: func() time.Time { return time.Unix(sent, 0) }})
			if err != nil {
				t.Fatal(err)
			}
			h := Headers{ID: v1aVectorID, Timestamp: v1aVectorTS, Signature: vec.signature}
			r, err := v.VerifyResult(h, []byte(v1aVectorPayload))
			if err != nil || r.Key != 0 || r.Kind != KindEd25519 || r.Ed25519Verifications != 1 {
				t.Fatalf("published vector: %+v, %v", r, err)
			}
			for _, body := range []string{v1aVectorPayload + " ", v1aVectorPayload[1:], strings.ToUpper(v1aVectorPayload)} {
				if _, err := v.VerifyResult(h, []byte(body)); !errors.Is(err, ErrNoMatchingSignature) {
					t.Fatalf("altered body: %v, want ErrNoMatchingSignature", err)
				}
			}
		})
	}
}

// edKey makes a deterministic ed25519 key from a label.
func edKey(label string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte(label))
	return ed25519.NewKeyFromSeed(seed[:])
}

func edPub(k ed25519.PrivateKey) []byte { return k.Public().(ed25519.PublicKey) }

// edSign signs with crypto/ed25519 directly, the reference for SignV1a.
func edSign(k ed25519.PrivateKey, id, ts string, body []byte) string {
	msg := append([]byte(id+"."+ts+"."), body...)
	return "v1a," + base64.StdEncoding.EncodeToString(ed25519.Sign(k, msg))
}

// TestV1a runs mixed headers against mixed keys.
func TestV1a(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	ts := strconv.FormatInt(now.Unix(), 10)
	const id = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
	body := []byte(`{"type":"contact.created"}`)
	hmac1 := mustKey(t, webhooktest.Secret)
	hmac2 := mustKey(t, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	p1, p2, p3 := edKey("p1"), edKey("p2"), edKey("other")
	v1 := func(key []byte) string { s, _ := Sign(key, id, ts, body); return s }
	v1a := func(k ed25519.PrivateKey) string { return edSign(k, id, ts, body) }
	bogusV1a := "v1a," + base64.StdEncoding.EncodeToString(make([]byte, 64)) // S = 0: well-formed, wrong
	// A v1 entry made with the public key's bytes as an HMAC key, and an
	// HMAC key made of them: the versions must not cross.
	pubAsHMAC := edPub(p1)

	type cfg struct {
		keys, pubs [][]byte
		skip       bool
	}
	both := cfg{keys: [][]byte{hmac1, hmac2}, pubs: [][]byte{edPub(p1), edPub(p2)}}
	for _, tc := range []struct {
		name  string
		cfg   cfg
		sig   string
		want  error
		key   int
		kind  KeyKind
		tried int
	}{
		{name: "v1a alone", cfg: both, sig: v1a(p1), key: 2, kind: KindEd25519, tried: 2}, // p2 is tried first
		{name: "v1a by the last key", cfg: both, sig: v1a(p2), key: 3, kind: KindEd25519, tried: 1},
		{name: "v1a by both keys: the last", cfg: both, sig: v1a(p1) + " " + v1a(p2), key: 3, kind: KindEd25519, tried: 2},
		{name: "v1 alone", cfg: both, sig: v1(hmac1), key: 0, kind: KindHMAC},
		{name: "v1 and v1a: HMAC first, no ed25519", cfg: both, sig: v1a(p2) + " " + v1(hmac1), key: 0, kind: KindHMAC},
		{name: "bad v1, good v1a", cfg: both, sig: v1(hmac1[:24]) + " " + v1a(p1), key: 2, kind: KindEd25519, tried: 2},
		{name: "v1a by an unknown key", cfg: both, sig: v1a(p3), want: ErrNoMatchingSignature, key: -1, tried: 2},
		{name: "four bogus v1a", cfg: both, sig: strings.Repeat(bogusV1a+" ", 3) + bogusV1a, want: ErrNoMatchingSignature, key: -1, tried: 8},
		{name: "five v1a refused before crypto", cfg: both, sig: strings.Repeat(v1a(p1)+" ", 4) + v1a(p1), want: ErrTooManySignatures, key: -1},
		{name: "twelve v1 and four v1a", cfg: both, sig: strings.Repeat(v1(hmac2)+" ", 12) + strings.Repeat(v1a(p1)+" ", 3) + v1a(p2), key: 1, kind: KindHMAC},
		{name: "seventeen entries", cfg: both, sig: strings.Repeat(v1(hmac2)+" ", 13) + strings.Repeat(v1a(p1)+" ", 3) + v1a(p2), want: ErrTooManySignatures, key: -1},
		{name: "unknown version next to a good v1a", cfg: both, sig: v1a(p1) + " v2," + strings.TrimPrefix(v1a(p1), "v1a,"), want: ErrInvalidSignature, key: -1},
		{name: "public keys only: v1 entry refused", cfg: cfg{pubs: [][]byte{edPub(p1)}}, sig: v1a(p1) + " " + v1(hmac1), want: ErrInvalidSignature, key: -1},
		{name: "public keys only, skip: v1 entry unchecked", cfg: cfg{pubs: [][]byte{edPub(p1)}, skip: true}, sig: v1(hmac1) + " " + v1a(p1), key: 0, kind: KindEd25519, tried: 1},
		{name: "HMAC only: v1a refused as before", cfg: cfg{keys: [][]byte{hmac1}}, sig: v1(hmac1) + " " + v1a(p1), want: ErrInvalidSignature, key: -1},
		{name: "HMAC only, skip: v1a unchecked", cfg: cfg{keys: [][]byte{hmac1}, skip: true}, sig: v1a(p1) + " " + v1(hmac1), key: 0, kind: KindHMAC},
		{name: "HMAC only, skip: v1a never matches", cfg: cfg{keys: [][]byte{hmac1}, skip: true}, sig: v1a(p1), want: ErrNoMatchingSignature, key: -1},
		{name: "v1a does not match through an HMAC key", cfg: cfg{keys: [][]byte{pubAsHMAC}, skip: true}, sig: v1a(p1), want: ErrNoMatchingSignature, key: -1},
		{name: "v1 does not match through a public key", cfg: cfg{pubs: [][]byte{pubAsHMAC}, skip: true}, sig: v1(pubAsHMAC), want: ErrNoMatchingSignature, key: -1},
		{name: "v1 by the public key's bytes", cfg: cfg{keys: [][]byte{pubAsHMAC}, pubs: [][]byte{pubAsHMAC}}, sig: v1(pubAsHMAC), key: 0, kind: KindHMAC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := New(Config{Keys: tc.cfg.keys, PublicKeys: tc.cfg.pubs, SkipUnkeyed: tc.cfg.skip, Tolerance: DefaultTolerance, Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			r, err := v.VerifyResult(Headers{ID: id, Timestamp: ts, Signature: tc.sig}, body)
			if !errors.Is(err, tc.want) || tc.want == nil && err != nil {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if r.Key != tc.key || r.Kind != tc.kind || r.Ed25519Verifications != tc.tried {
				t.Fatalf("result %+v, want key %d kind %v, %d verifications", r, tc.key, tc.kind, tc.tried)
			}
			if key, err2 := v.Verify(Headers{ID: id, Timestamp: ts, Signature: tc.sig}, body); key != r.Key || (err2 == nil) != (err == nil) {
				t.Fatalf("Verify: %d, %v; VerifyResult: %d, %v", key, err2, r.Key, err)
			}
			if err != nil && strings.Contains(err.Error(), strings.TrimPrefix(v1a(p1), "v1a,")) {
				t.Fatalf("error leaks a signature: %v", err)
			}
		})
	}
}

// flipLowBit sets the lowest bit of the last base64 digit before the
// padding, which a 64-byte signature leaves unused.
func flipLowBit(enc string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	i := strings.IndexByte(enc, '=') - 1
	return enc[:i] + string(alphabet[strings.IndexByte(alphabet, enc[i])|1]) + enc[i+1:]
}

// TestMalformedV1a: entries that are not a canonical v1a signature refuse
// the header, whatever the keys, before any verification.
func TestMalformedV1a(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	ts := strconv.FormatInt(now.Unix(), 10)
	body := []byte("{}")
	p := edKey("p")
	good := edSign(p, "msg_1", ts, body)
	enc := strings.TrimPrefix(good, "v1a,")
	raw, _ := base64.StdEncoding.DecodeString(enc)
	withS := func(s []byte) string {
		sig := append(append([]byte(nil), raw[:32]...), s...)
		return "v1a," + base64.StdEncoding.EncodeToString(sig)
	}
	order := groupOrder[:]
	orderPlus1 := slices.Clone(order)
	orderPlus1[0]++
	orderMinus1 := slices.Clone(order)
	orderMinus1[0]--
	topBit := make([]byte, 32)
	topBit[31] = 0x80
	v, err := New(Config{PublicKeys: [][]byte{edPub(p)}, Tolerance: DefaultTolerance, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, sig string
		want      error
	}{
		{"good", good, nil},
		{"S = l - 1 (canonical, wrong)", withS(orderMinus1), ErrNoMatchingSignature},
		{"S = l", withS(order), ErrInvalidSignature},
		{"S = l + 1", withS(orderPlus1), ErrInvalidSignature},
		{"S top bit", withS(topBit), ErrInvalidSignature},
		{"empty", "v1a,", ErrInvalidSignature},
		{"32-byte payload", "v1a," + base64.StdEncoding.EncodeToString(raw[:32]), ErrInvalidSignature},
		{"63 bytes", "v1a," + base64.StdEncoding.EncodeToString(raw[:63]), ErrInvalidSignature},
		{"65 bytes", "v1a," + base64.StdEncoding.EncodeToString(append(slices.Clone(raw), 0)), ErrInvalidSignature},
		{"unpadded", "v1a," + strings.TrimRight(enc, "="), ErrInvalidSignature},
		{"one '=' too few", "v1a," + enc[:87], ErrInvalidSignature},
		{"'=' too many", "v1a," + enc + "=", ErrInvalidSignature},
		{"88 characters, no padding (66 bytes)", "v1a," + strings.Repeat("A", 88), ErrInvalidSignature},
		{"88 characters, one '=' (65 bytes)", "v1a," + strings.Repeat("A", 87) + "=", ErrInvalidSignature},
		{"URL alphabet", "v1a,-" + enc[1:], ErrInvalidSignature},
		{"non-canonical padding bits", "v1a," + flipLowBit(enc), ErrInvalidSignature},
		{"space inside", "v1a," + enc[:40] + " " + enc[41:], ErrInvalidSignature},
		{"upper case version", "V1A," + enc, ErrInvalidSignature},
		{"v1b", "v1b," + enc, ErrInvalidSignature},
		{"extra field", good + ",x", ErrInvalidSignature},
		{"bare", enc, ErrInvalidSignature},
		{"double space", good + "  " + good, ErrInvalidSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := v.VerifyResult(Headers{ID: "msg_1", Timestamp: ts, Signature: tc.sig}, body)
			if !errors.Is(err, tc.want) || tc.want == nil && err != nil {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if errors.Is(err, ErrInvalidSignature) && r.Ed25519Verifications != 0 {
				t.Fatalf("malformed entry cost %d verifications", r.Ed25519Verifications)
			}
			if err != nil && strings.Contains(err.Error(), enc[:20]) {
				t.Fatalf("error leaks the signature: %v", err)
			}
		})
	}
}

// TestOpenAIConfigUnchanged: a verifier of HMAC keys alone, without
// SkipUnkeyed (the openai_webhook handler's), refuses v1a entries with the
// text it always has, and judges header lengths as before.
func TestOpenAIConfigUnchanged(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	ts := strconv.FormatInt(now.Unix(), 10)
	v := newVerifier(t, now, webhooktest.Secret)
	good := webhooktest.Sign(t, webhooktest.Secret, "msg_1", now, nil)
	ed := edSign(edKey("p"), "msg_1", ts, nil)
	_, err := v.Verify(Headers{ID: "msg_1", Timestamp: ts, Signature: good + " " + ed}, nil)
	if !errors.Is(err, ErrInvalidSignature) || !strings.HasSuffix(err.Error(), "entry 2 is not a v1 signature") {
		t.Fatalf("got %v", err)
	}
	// 16 v1 entries then one more byte: too long, as before.
	long := strings.Repeat(good+" ", MaxSignatures-1) + good + " "
	if _, err := v.Verify(Headers{ID: "msg_1", Timestamp: ts, Signature: long}, nil); !errors.Is(err, ErrTooManySignatures) {
		t.Fatalf("over-long header: %v", err)
	}
}

// TestFinishBody: the body reaches the ed25519 check as chunks of any size,
// must be the body written, and is asked for only when needed.
func TestFinishBody(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	ts := strconv.FormatInt(now.Unix(), 10)
	p := edKey("p")
	body := bytes.Repeat([]byte(`{"k":"v"}`), 9000) // 81000 bytes: crosses 32 KiB chunks
	h := Headers{ID: "msg_1", Timestamp: ts, Signature: edSign(p, "msg_1", ts, body)}
	v, err := New(Config{Keys: [][]byte{mustKey(t, webhooktest.Secret)}, PublicKeys: [][]byte{edPub(p)}, Tolerance: DefaultTolerance, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	chunks := func(b []byte, n int) func(func([]byte) bool) {
		return func(yield func([]byte) bool) {
			for off := 0; off < len(b); off += n {
				if !yield(b[off:min(off+n, len(b))]) {
					return
				}
			}
		}
	}
	finish := func(write []byte, given func(func([]byte) bool)) (Result, error) {
		m, err := v.Begin(h)
		if err != nil {
			t.Fatal(err)
		}
		if !m.NeedsBody() {
			t.Fatal("NeedsBody false with a v1a entry and a public key")
		}
		_, _ = m.Write(write)
		return m.FinishBody(given)
	}
	for _, n := range []int{1, 7, 32 << 10, len(body)} {
		if r, err := finish(body, chunks(body, n)); err != nil || r.Key != 1 {
			t.Fatalf("chunks of %d: %+v, %v", n, r, err)
		}
	}
	other := slices.Clone(body)
	other[len(other)/2] ^= 1
	for name, given := range map[string]func(func([]byte) bool){
		"nil":       nil,
		"shorter":   chunks(body[:len(body)-1], 1000),
		"longer":    chunks(append(slices.Clone(body), '\n'), 1000),
		"different": chunks(other, 1000),
		"empty":     chunks(nil, 1),
	} {
		if r, err := finish(body, given); !errors.Is(err, ErrNoMatchingSignature) || r.Key != -1 {
			t.Errorf("%s body: %+v, %v; want ErrNoMatchingSignature", name, r, err)
		}
	}
	if _, err := finish(other, chunks(other, 1000)); !errors.Is(err, ErrNoMatchingSignature) {
		t.Errorf("another body written and given: %v", err)
	}
	// Finish without a body can still accept by HMAC.
	h2 := h
	h2.Signature = h.Signature + " " + webhooktest.Sign(t, webhooktest.Secret, "msg_1", now, body)
	m, _ := v.Begin(h2)
	_, _ = m.Write(body)
	if key, err := m.Finish(); err != nil || key != 0 {
		t.Fatalf("Finish with an HMAC match: %d, %v", key, err)
	}
	// No v1a entry: the body is never asked for.
	h3 := Headers{ID: "msg_1", Timestamp: ts, Signature: webhooktest.Sign(t, webhooktest.Secret, "msg_1", now, body)}
	m, _ = v.Begin(h3)
	if m.NeedsBody() {
		t.Fatal("NeedsBody true without v1a entries")
	}
	_, _ = m.Write(body)
	if r, err := m.FinishBody(func(func([]byte) bool) { t.Fatal("body asked for") }); err != nil || r.Key != 0 {
		t.Fatalf("%+v, %v", r, err)
	}
}

// TestV1aFreshnessJudgedWhenBodyEnds: as for v1, a v1a delivery whose body
// ends past the tolerance is stale, and reports the verifications it cost.
func TestV1aFreshnessJudgedWhenBodyEnds(t *testing.T) {
	sent := time.Unix(1_750_000_000, 0)
	ts := strconv.FormatInt(sent.Unix(), 10)
	p := edKey("p")
	now := sent
	v, err := New(Config{PublicKeys: [][]byte{edPub(p)}, Tolerance: DefaultTolerance, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	body := []byte("{}")
	m, err := v.Begin(Headers{ID: "msg_1", Timestamp: ts, Signature: edSign(p, "msg_1", ts, body)})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = m.Write(body)
	now = now.Add(DefaultTolerance + time.Second)
	r, err := m.FinishBody(func(yield func([]byte) bool) { yield(body) })
	if !errors.Is(err, ErrTimestampTooOld) || r.Key != -1 || r.Ed25519Verifications != 1 {
		t.Fatalf("%+v, %v", r, err)
	}
}

func TestNewKeys(t *testing.T) {
	pub := edPub(edKey("p"))
	for _, tc := range []struct {
		cfg Config
		ok  bool
	}{
		{Config{PublicKeys: [][]byte{pub}, Tolerance: DefaultTolerance}, true},
		{Config{PublicKeys: [][]byte{pub[:31]}, Tolerance: DefaultTolerance}, false},
		{Config{PublicKeys: [][]byte{append(slices.Clone(pub), 0)}, Tolerance: DefaultTolerance}, false},
		{Config{SkipUnkeyed: true, Tolerance: DefaultTolerance}, false},
	} {
		if _, err := New(tc.cfg); (err == nil) != tc.ok {
			t.Errorf("New(%d keys, %d public keys): %v", len(tc.cfg.Keys), len(tc.cfg.PublicKeys), err)
		}
	}
	// The verifier keeps its own copy.
	mine := slices.Clone(pub)
	p := edKey("p")
	v, _ := New(Config{PublicKeys: [][]byte{mine}, Tolerance: DefaultTolerance, Now: func() time.Time { return time.Unix(1, 0) }})
	mine[0] ^= 1
	if _, err := v.Verify(Headers{ID: "a", Timestamp: "1", Signature: edSign(p, "a", "1", nil)}, nil); err != nil {
		t.Fatalf("after the caller changed its slice: %v", err)
	}
}

// TestParsePublicAndSigningKeys: the forms accepted, and each mistake named
// without quoting the key.
func TestParsePublicAndSigningKeys(t *testing.T) {
	p := edKey("p")
	pubB64 := base64.StdEncoding.EncodeToString(edPub(p))
	privB64 := base64.StdEncoding.EncodeToString(p)
	bad := slices.Clone([]byte(p))
	bad[40] ^= 1
	for _, tc := range []struct {
		parse func(string) error
		key   string
		want  string
	}{
		{pk, "whpk_" + pubB64, ""},
		{pk, "", "empty"},
		{pk, " whpk_" + pubB64, "space"},
		{pk, pubB64, `does not start with "whpk_"`},
		{pk, "whsk_" + privB64, "secret signing key"},
		{pk, "whsec_" + pubB64, "HMAC secret"},
		{pk, "whpk_" + strings.TrimRight(pubB64, "="), "lacks its padding"},
		{pk, "whpk_" + base64.StdEncoding.EncodeToString(edPub(p)[:31]), "decodes to 31 bytes"},
		{pk, "whpk_" + privB64, "decodes to 64 bytes"},
		{pk, "whpk_-" + pubB64[1:], "URL-safe alphabet"},
		{sk, "whsk_" + privB64, ""},
		{sk, "whsk_" + base64.StdEncoding.EncodeToString(p.Seed()), ""},
		{sk, "whsk_" + base64.StdEncoding.EncodeToString(bad), "not the public key of its first 32"},
		{sk, "whsk_" + base64.StdEncoding.EncodeToString(p[:48]), "decodes to 48 bytes"},
		{sk, privB64, `does not start with "whsk_"`},
		{sk, "whsk_" + privB64 + "\n", "space"},
	} {
		err := tc.parse(tc.key)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.key, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: %v, want an error containing %q", tc.key, err, tc.want)
		}
		if err != nil && (strings.Contains(err.Error(), pubB64[:16]) || strings.Contains(err.Error(), privB64[:16])) {
			t.Errorf("error leaks the key: %v", err)
		}
	}
}

func pk(s string) error { _, err := ParsePublicKey(s); return err }
func sk(s string) error { _, err := ParseSigningKey(s); return err }

func TestGenerateKeyPairAndSignV1a(t *testing.T) {
	priv, pub, err := GenerateKeyPair(nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseSigningKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	kind, p, err := ParseKey(pub)
	if err != nil || kind != KindEd25519 || !bytes.Equal(p, edPub(k)) {
		t.Fatalf("ParseKey(whpk_): %v %x %v", kind, p, err)
	}
	body := []byte(`{"a":1}`)
	sig, err := SignV1a(k, "msg_x", "1750000000", body)
	if err != nil || sig != edSign(k, "msg_x", "1750000000", body) {
		t.Fatalf("SignV1a: %q, %v", sig, err)
	}
	for _, tc := range []struct{ id, ts string }{{"a.b", "1"}, {"", "1"}, {"ok", "01"}} {
		if _, err := SignV1a(k, tc.id, tc.ts, nil); err == nil {
			t.Errorf("id %q timestamp %q signed", tc.id, tc.ts)
		}
	}
	if _, err := SignV1a(k[:32], "a", "1", nil); err == nil {
		t.Error("a 32-byte key signed")
	}
}

func TestFamilies(t *testing.T) {
	if n := FamilyWebhook.Names(); n != (HeaderNames{HeaderID, HeaderTimestamp, HeaderSignature}) || FamilyWebhook.String() != "webhook" {
		t.Errorf("webhook family: %+v %s", n, FamilyWebhook)
	}
	if n := FamilySvix.Names(); n != (HeaderNames{"svix-id", "svix-timestamp", "svix-signature"}) || FamilySvix.String() != "svix" {
		t.Errorf("svix family: %+v %s", n, FamilySvix)
	}
	for _, f := range Families {
		n := f.Names()
		for _, name := range []string{n.ID, n.Timestamp, n.Signature} {
			if !strings.HasPrefix(name, f.String()+"-") || strings.ToLower(name) != name {
				t.Errorf("%s: header %q", f, name)
			}
		}
	}
}

// TestParseHMACSecret: every form a sender hands out decodes to the same
// key; anything else names the forms expected, never quoting the value.
func TestParseHMACSecret(t *testing.T) {
	const b64 = "RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="
	want := mustKey(t, "whsec_"+b64)
	for _, s := range []string{"whsec_" + b64, "v1,whsec_" + b64, b64} {
		got, err := ParseHMACSecret(s)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%q: %x, %v; want %x", s, got, err, want)
		}
		kind, got, err := ParseKey(s)
		if err != nil || kind != KindHMAC || !bytes.Equal(got, want) {
			t.Errorf("ParseKey(%q): %v %x, %v", s, kind, got, err)
		}
	}
	for _, tc := range []struct{ secret, want string }{
		{"", "empty"},
		{" " + b64, "space"},
		{"whsec_" + b64 + "\n", "space"},
		{"v1,whsec_" + strings.TrimRight(b64, "="), "after v1,whsec_: the base64 lacks its padding"},
		{"whsec_" + b64[:43], "after whsec_: the base64 lacks its padding"},
		{b64[:43], "not valid bare base64 (want whsec_<base64>, v1,whsec_<base64> or bare <base64>"},
		{b64[:42], "is cut short"},
		{"v1," + b64, `starts with "v1," but not "v1,whsec_"`},
		{"v2,whsec_" + b64, "unknown version"},
		{"WHSEC_" + b64, "unknown prefix"},
		{"whsek_" + b64, "unknown prefix"},
		{"sk_live_" + b64, "unknown prefix"},
		{"whpk_" + b64, "ed25519 public key"},
		{"whsk_" + b64, "ed25519 signing key"},
		{"whsec_" + strings.Repeat("A", 28), "decodes to 21 bytes"},
		{strings.Repeat("A", 88), "decodes to 66 bytes"},
		{"v1,whsec_" + strings.Replace(b64, "+", "-", 1), "URL-safe alphabet"},
		{strings.Replace(b64, "+", "-", 1), "URL-safe alphabet"},
		{b64[:42] + "g=", ""}, // another key, bare
		{b64[:42] + "d=", "not canonical base64"},
		{"whsec_" + b64[:20] + "*" + b64[21:], "character 21 of the base64 is not"},
	} {
		_, err := ParseHMACSecret(tc.secret)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v, want it accepted", tc.secret, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: %v, want an error containing %q", tc.secret, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), b64[:12]) {
			t.Errorf("error leaks the secret: %v", err)
		}
	}
}

// TestNoAllocations: a v1 delivery costs no allocation, as before v1a
// existed, nor does a genuine v1a one with its body in one slice or in
// chunks (the message buffer is pooled). A refused ed25519 verification
// allocates its error inside crypto/ed25519: not counted here.
func TestNoAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under the race detector")
	}
	now := time.Unix(1_750_000_000, 0)
	ts := strconv.FormatInt(now.Unix(), 10)
	p := edKey("p")
	body := bytes.Repeat([]byte("x"), 40<<10)
	v, err := New(Config{Keys: [][]byte{mustKey(t, webhooktest.Secret)}, PublicKeys: [][]byte{edPub(p)}, Tolerance: DefaultTolerance, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	hv1 := Headers{ID: "msg_1", Timestamp: ts, Signature: webhooktest.Sign(t, webhooktest.Secret, "msg_1", now, body)}
	hv1a := Headers{ID: "msg_1", Timestamp: ts, Signature: edSign(p, "msg_1", ts, body)}
	for name, run := range map[string]func(){
		"v1": func() {
			if _, err := v.Verify(hv1, body); err != nil {
				t.Fatal(err)
			}
		},
		"v1a": func() {
			if _, err := v.VerifyResult(hv1a, body); err != nil {
				t.Fatal(err)
			}
		},
		"v1a chunked": func() {
			m, _ := v.Begin(hv1a)
			_, _ = m.Write(body[:32<<10])
			_, _ = m.Write(body[32<<10:])
			if _, err := m.FinishBody(func(yield func([]byte) bool) { _ = yield(body[:32<<10]) && yield(body[32<<10:]) }); err != nil {
				t.Fatal(err)
			}
		},
	} {
		if n := testing.AllocsPerRun(50, run); n != 0 {
			t.Errorf("%s: %v allocations per delivery", name, n)
		}
	}
}
