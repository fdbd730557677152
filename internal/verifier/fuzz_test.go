package verifier

// Native fuzz targets for the verification core. Plain `go test` runs only
// the f.Add seeds and the checked-in corpus under testdata/fuzz/; to fuzz one
// target for a bounded time:
//
//	go test -run='^$' -fuzz='^FuzzDifferential$' -fuzztime=30s -parallel=1 ./internal/verifier
//
// Every target checks its verdict against an independent model (strconv for
// timestamps, a byte loop for ids, encoding/base64 for signature entries, and
// the Standard Webhooks reference library for the final accept/refuse), so
// the fuzzer finds wrong answers, not only panics.

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// fuzzSentinels are the exported refusal reasons; every error from the
// package wraps exactly one of them.
var fuzzSentinels = []error{
	ErrMissingHeader,
	ErrInvalidID,
	ErrInvalidTimestamp,
	ErrTimestampTooOld,
	ErrTimestampTooNew,
	ErrInvalidSignature,
	ErrTooManySignatures,
	ErrNoMatchingSignature,
}

// fuzzCheckOneSentinel fails unless err wraps exactly one sentinel.
func fuzzCheckOneSentinel(t *testing.T, err error) {
	t.Helper()
	var hits []string
	for _, s := range fuzzSentinels {
		if errors.Is(err, s) {
			hits = append(hits, s.Error())
		}
	}
	if len(hits) != 1 {
		t.Fatalf("error %q wraps %d sentinels %q, want exactly one", err, len(hits), hits)
	}
}

// fuzzHostileTimestamps are timestamp spellings at and past every edge of
// the grammar: signs, leading zeros, int64 limits, 20 digits, non-digits.
var fuzzHostileTimestamps = []string{
	"", "0", "00", "01", "1", "-0", "-1", "+1", " 1", "1 ", "1\n", "1.0", "1e9", "0x10", "1_000",
	"1614265330", "+1614265330", "01614265330", "-1614265330",
	"9223372036854775807",  // max int64: accepted
	"9223372036854775808",  // max int64 + 1
	"-9223372036854775808", // min int64
	"09223372036854775807", // max int64 with a leading zero (20 bytes)
	"9999999999999999999",  // 19 digits, overflows
	"10000000000000000000", // 20 digits
	"17500000000000000000", // 20 digits
	"１２３",                  // full-width digits
	"2025-06-25T14:20:10Z",
}

// fuzzTimestampOK is the timestamp grammar restated with strconv: exactly the
// canonical decimal spellings of 0..MaxInt64.
func fuzzTimestampOK(ts string) (int64, bool) {
	n, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != ts {
		return 0, false
	}
	return n, true
}

func FuzzParseTimestamp(f *testing.F) {
	for _, vec := range webhooktest.LoadVectors(f).Vectors {
		f.Add(vec.Timestamp)
	}
	for _, ts := range fuzzHostileTimestamps {
		f.Add(ts)
	}
	f.Fuzz(func(t *testing.T, ts string) {
		n, err := ParseTimestamp(ts)
		want, ok := fuzzTimestampOK(ts)
		if ok {
			if err != nil {
				t.Fatalf("ParseTimestamp(%q) refused a canonical timestamp: %v", ts, err)
			}
			if n != want {
				t.Fatalf("ParseTimestamp(%q) = %d, want %d", ts, n, want)
			}
			if len(ts) < 1 || len(ts) > MaxTimestampLen {
				t.Fatalf("ParseTimestamp(%q) accepted %d digits", ts, len(ts))
			}
			return
		}
		if err == nil {
			t.Fatalf("ParseTimestamp(%q) = %d, want an error", ts, n)
		}
		if n != 0 {
			t.Fatalf("ParseTimestamp(%q) = %d with error %v, want 0", ts, n, err)
		}
		fuzzCheckOneSentinel(t, err)
		want2 := ErrInvalidTimestamp
		if ts == "" {
			want2 = ErrMissingHeader
		}
		if !errors.Is(err, want2) {
			t.Fatalf("ParseTimestamp(%q): got %v, want %v", ts, err, want2)
		}
	})
}

// fuzzIDOK is the webhook-id grammar restated: 1..MaxIDLen bytes, each in
// '!'..'~' except '.'.
func fuzzIDOK(id string) bool {
	if len(id) < 1 || len(id) > MaxIDLen {
		return false
	}
	for _, c := range []byte(id) {
		if c < '!' || c > '~' || c == '.' {
			return false
		}
	}
	return true
}

func FuzzCheckID(f *testing.F) {
	for _, vec := range webhooktest.LoadVectors(f).Vectors {
		f.Add(vec.ID)
	}
	for _, id := range []string{
		"", ".", "a", "!", "~", " ", "\x7f", "\x00", "a.b", "msg_1 ", "wh_é", "\xff",
		strings.Repeat("a", MaxIDLen), strings.Repeat("a", MaxIDLen+1), strings.Repeat("~", MaxIDLen-1) + ".",
	} {
		f.Add(id)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := CheckID(id)
		if fuzzIDOK(id) {
			if err != nil {
				t.Fatalf("CheckID(%q) refused a valid id: %v", id, err)
			}
			return
		}
		if err == nil {
			t.Fatalf("CheckID(%q) accepted an invalid id", id)
		}
		fuzzCheckOneSentinel(t, err)
		want := ErrInvalidID
		if id == "" {
			want = ErrMissingHeader
		}
		if !errors.Is(err, want) {
			t.Fatalf("CheckID(%q): got %v, want %v", id, err, want)
		}
	})
}

// fuzzCanonicalMAC reports whether p is the one standard, padded base64
// spelling of a 32-byte MAC, by decoding and re-encoding (the verifier uses
// strict decoding instead).
func fuzzCanonicalMAC(p string) bool {
	b, err := base64.StdEncoding.DecodeString(p)
	return err == nil && len(b) == sha256.Size && base64.StdEncoding.EncodeToString(b) == p
}

// fuzzFullHeaderLen is the length of MaxSignatures well-formed entries; a
// longer header is refused as too many signatures before it is split.
var fuzzFullHeaderLen = MaxSignatures*len("v1,"+strings.Repeat("A", 43)+"= ") - 1

// fuzzExpectSignature models parseSignatures' verdict: nil or the sentinel.
func fuzzExpectSignature(sig string) error {
	if sig == "" {
		return ErrMissingHeader
	}
	if len(sig) > fuzzFullHeaderLen {
		return ErrTooManySignatures
	}
	for i, entry := range strings.Split(sig, " ") {
		if i == MaxSignatures {
			return ErrTooManySignatures
		}
		p, ok := strings.CutPrefix(entry, "v1,")
		if !ok || !fuzzCanonicalMAC(p) {
			return ErrInvalidSignature
		}
	}
	return nil
}

// fuzzExpectBegin models Begin's verdict with the clock at now (Unix
// seconds): nil or the sentinel the first failing check wraps.
func fuzzExpectBegin(h Headers, now int64) error {
	if h.ID == "" {
		return ErrMissingHeader
	}
	if !fuzzIDOK(h.ID) {
		return ErrInvalidID
	}
	if h.Timestamp == "" {
		return ErrMissingHeader
	}
	sent, ok := fuzzTimestampOK(h.Timestamp)
	if !ok {
		return ErrInvalidTimestamp
	}
	tol := int64(DefaultTolerance / time.Second)
	if now-sent > tol { // both non-negative: no overflow
		return ErrTimestampTooOld
	}
	if sent-now > tol {
		return ErrTimestampTooNew
	}
	return fuzzExpectSignature(h.Signature)
}

// fuzzErrorVocabulary is every error text Begin can produce, with each digit
// run replaced by "0". A signature payload that is a substring of it may
// show up in an error without being leaked ("entry", "v1", "base64"...).
var fuzzErrorVocabulary = fuzzNormDigits(strings.Join([]string{
	ErrMissingHeader.Error() + ": " + HeaderID,
	ErrMissingHeader.Error() + ": " + HeaderTimestamp,
	ErrMissingHeader.Error() + ": " + HeaderSignature,
	ErrInvalidID.Error() + ": longer than 0 bytes",
	ErrInvalidID.Error() + ": byte 0 is not a visible ASCII character other than '.'",
	ErrInvalidTimestamp.Error() + ": more than 0 digits",
	ErrInvalidTimestamp.Error() + ": leading zero",
	ErrInvalidTimestamp.Error() + ": not decimal digits",
	ErrInvalidTimestamp.Error() + ": out of range",
	ErrTimestampTooOld.Error(),
	ErrTimestampTooNew.Error(),
	ErrInvalidSignature.Error() + ": entry 0 is not a v0 signature",
	ErrInvalidSignature.Error() + ": entry 0 is not a 0-byte signature",
	ErrInvalidSignature.Error() + ": entry 0 is not canonical base0",
	ErrTooManySignatures.Error(),
	ErrNoMatchingSignature.Error(),
}, "\x00"))

var fuzzDigitRun = regexp.MustCompile(`[0-9]+`)

func fuzzNormDigits(s string) string { return fuzzDigitRun.ReplaceAllString(s, "0") }

// fuzzCheckNoLeak fails if the error text contains a payload of the
// signature header: the part of an entry after its first comma, or the whole
// entry if it has none. Payloads that occur in the fixed error vocabulary
// are skipped: if p is a substring of the text, its digit-normalised form is
// a substring of the normalised text, so these are the only ones that can
// appear without a leak.
func fuzzCheckNoLeak(t *testing.T, err error, sig string) {
	t.Helper()
	text := err.Error()
	for entry := range strings.SplitSeq(sig, " ") {
		p := entry
		if _, after, ok := strings.Cut(entry, ","); ok {
			p = after
		}
		if p == "" || strings.Contains(fuzzErrorVocabulary, fuzzNormDigits(p)) {
			continue
		}
		if strings.Contains(text, p) {
			t.Fatalf("error text %q contains signature payload %q", text, p)
		}
	}
}

// fuzzKey is the fuzz target's key for the vector C secret.
func fuzzKey(t testing.TB) []byte {
	t.Helper()
	key, err := ParseSecret(webhooktest.Secret)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// fuzzHostileSignatures are webhook-signature values around every edge of
// the entry grammar. good is a well-formed entry.
func fuzzHostileSignatures(good string) []string {
	mac := strings.TrimPrefix(good, "v1,")
	zero := "v1," + strings.Repeat("A", 43) + "="
	return []string{
		"", " ", "v1,", "v1", ",", "v1, ", "v1a," + mac, "v2," + mac, "V1," + mac, mac, "v1,," + mac,
		good + ",junk", good + ",", "v1," + mac + "," + mac, good + " ", " " + good, good + "  " + good,
		good + "," + good, good + "\t" + good, good + "\n",
		"v1," + mac[:43], "v1," + mac + "=", "v1," + strings.TrimRight(mac, "="), "v1," + mac[:40] + "\r\n" + mac[40:],
		"v1," + strings.ReplaceAll(strings.ReplaceAll(mac, "+", "-"), "/", "_"),
		"v1," + mac[:42] + "B=", "v1," + mac[:42] + "F=", // unused low bits non-zero
		"v1," + strings.Repeat("A", 42) + "==",
		strings.Repeat(zero+" ", MaxSignatures-1) + good, // 16 entries: the longest valid header
		strings.Repeat(zero+" ", MaxSignatures) + good,   // 17 entries
		strings.Repeat(good+" ", MaxSignatures-1) + good + " v1,",
		strings.Repeat("v1,x ", 200),
		strings.Repeat(" ", 16),
	}
}

func FuzzBegin(f *testing.F) {
	vectors := webhooktest.LoadVectors(f)
	for _, vec := range vectors.Vectors {
		for _, skew := range []int16{0, -300, 300, -301, 301} {
			f.Add(vec.ID, vec.Timestamp, vec.Signature, skew)
		}
		for _, wrong := range vectors.WrongSignatures {
			f.Add(vec.ID, vec.Timestamp, wrong, int16(0))
			f.Add(vec.ID, vec.Timestamp, vec.Signature+" "+wrong, int16(0))
		}
	}
	vec := vectors.Vectors[0]
	for _, sig := range fuzzHostileSignatures(vec.Signature) {
		f.Add(vec.ID, vec.Timestamp, sig, int16(0))
	}
	for _, ts := range fuzzHostileTimestamps {
		f.Add(vec.ID, ts, vec.Signature, int16(0))
	}
	for _, id := range []string{"", "a.b", "a b", strings.Repeat("i", MaxIDLen), strings.Repeat("i", MaxIDLen+1), "wh_é"} {
		f.Add(id, vec.Timestamp, vec.Signature, int16(0))
	}
	key := fuzzKey(f)

	f.Fuzz(func(t *testing.T, id, ts, sig string, skew int16) {
		// The clock is skew seconds after the header's own time, so the
		// freshness window is exercised on both sides; for a timestamp
		// the grammar refuses the clock does not matter.
		now := int64(1_750_000_000)
		if sent, err := ParseTimestamp(ts); err == nil {
			switch {
			case skew > 0 && sent > math.MaxInt64-int64(skew):
				now = math.MaxInt64
			case sent+int64(skew) < 0:
				now = 0
			default:
				now = sent + int64(skew)
			}
		}
		v, err := New(Config{Keys: [][]byte{key}, Tolerance: DefaultTolerance, Now: func() time.Time { return time.Unix(now, 0) }})
		if err != nil {
			t.Fatal(err)
		}
		h := Headers{ID: id, Timestamp: ts, Signature: sig}
		want := fuzzExpectBegin(h, now)
		m, err := v.Begin(h)
		if err == nil {
			if want != nil {
				t.Fatalf("Begin(%q) accepted at %d, want %v", h, now, want)
			}
			m.Discard()
			return
		}
		if m != nil {
			t.Fatalf("Begin(%q) returned a Message with error %v", h, err)
		}
		fuzzCheckOneSentinel(t, err)
		if !errors.Is(err, want) {
			t.Fatalf("Begin(%q) at %d: got %v, want %v", h, now, err, want)
		}
		fuzzCheckNoLeak(t, err, sig)
	})
}

// fuzzDeriveKey makes a usable key (MinKeyLen..MaxKeyLen bytes) from any
// fuzz bytes: longer seeds are cut, shorter ones padded with their SHA-256.
func fuzzDeriveKey(seed []byte) []byte {
	key := append([]byte(nil), seed[:min(len(seed), MaxKeyLen)]...)
	if len(key) < MinKeyLen {
		pad := sha256.Sum256(seed)
		key = append(key, pad[:MinKeyLen-len(key)]...)
	}
	return key
}

// Signature choices of FuzzDifferential (mode % fuzzModes).
const (
	fuzzModeSigned      = iota // signed by the library with the key
	fuzzModeOtherKey           // signed by the library with a different key
	fuzzModeRaw                // the fuzz-provided header as it is
	fuzzModeRawThenGood        // the fuzz-provided entries, then the good one
	fuzzModes
)

// FuzzDifferential compares the final verdict with the Standard Webhooks Go
// library, the reference implementation.
//
// The headers are "well-formed for both" when our Begin accepts them with
// the clock at the header's own timestamp. That means: an id of 1..256
// visible ASCII bytes without '.', a timestamp that is the canonical decimal
// spelling of 0..MaxInt64, and 1..16 space-separated "v1,<canonical base64
// of 32 bytes>" entries. The library's parsing then succeeds too (no header
// is empty, strconv.ParseInt takes the timestamp, every entry splits into
// exactly "v1" and the base64), and the text it signs, fmt %d of the parsed
// timestamp, is the header's own spelling, as ours hashes. The library is
// laxer elsewhere ("+5", "05", ids with '.', "v1,<sig>,junk", stray
// entries), so headers our Begin refuses are not compared: being stricter
// than the reference is the point of this verifier. The library has no
// injectable clock, so it is asked with VerifyIgnoringTimestamp and ours runs
// at the header's time.
//
// Asserted: whenever our Begin accepts, our verdict equals the library's;
// a library-signed delivery with a well-formed id and a canonical timestamp
// is always accepted (no genuine delivery is ever refused); and a delivery
// signed with another key is always refused.
func FuzzDifferential(f *testing.F) {
	vectors := webhooktest.LoadVectors(f)
	for _, vec := range vectors.Vectors {
		key, err := ParseSecret(vec.Secret)
		if err != nil {
			f.Fatal(err)
		}
		for mode := range uint8(fuzzModes) {
			f.Add(key, vec.ID, vec.Timestamp, []byte(vec.Payload), mode, vec.Signature)
		}
		for _, wrong := range vectors.WrongSignatures {
			f.Add(key, vec.ID, vec.Timestamp, []byte(vec.Payload), uint8(fuzzModeRaw), wrong)
			f.Add(key, vec.ID, vec.Timestamp, []byte(vec.Payload), uint8(fuzzModeRawThenGood), wrong)
		}
	}
	vec := vectors.Vectors[2]
	key := fuzzKey(f)
	for _, sig := range fuzzHostileSignatures(vec.Signature) {
		f.Add(key, vec.ID, vec.Timestamp, []byte(vec.Payload), uint8(fuzzModeRaw), sig)
		f.Add(key, vec.ID, vec.Timestamp, []byte(vec.Payload), uint8(fuzzModeRawThenGood), sig)
	}
	for _, ts := range fuzzHostileTimestamps {
		f.Add(key, vec.ID, ts, []byte(vec.Payload), uint8(fuzzModeSigned), "")
	}
	long := append(append([]byte(nil), key...), key...) // 64 bytes
	zeroed := append(append([]byte(nil), key...), 0)    // same HMAC key as key
	for _, seed := range [][]byte{nil, key[:MinKeyLen-1], long, zeroed, append(long, 1)} {
		f.Add(seed, vec.ID, vec.Timestamp, []byte(vec.Payload), uint8(fuzzModeSigned), "")
		f.Add(seed, vec.ID, vec.Timestamp, []byte(vec.Payload), uint8(fuzzModeOtherKey), "")
	}
	for _, body := range []string{"", ".", "\x00", "a.b.c", strings.Repeat("x", 5000)} {
		f.Add(key, vec.ID, vec.Timestamp, []byte(body), uint8(fuzzModeSigned+4*7), "")
	}
	f.Add(key, strings.Repeat("~", MaxIDLen), "9223372036854775807", []byte("{}"), uint8(fuzzModeSigned), "")
	f.Add(key, "a.b", vec.Timestamp, []byte("{}"), uint8(fuzzModeSigned), "")
	f.Add(key, "msg_1", "0", []byte(""), uint8(fuzzModeSigned), "")

	f.Fuzz(func(t *testing.T, keySeed []byte, id, ts string, body []byte, mode uint8, raw string) {
		key := fuzzDeriveKey(keySeed)
		other := append([]byte(nil), key...)
		other[0] ^= 0x5a // an HMAC-different key (appending zero bytes would not be)
		lib, _ := standardwebhooks.NewWebhookRaw(key)
		libOther, _ := standardwebhooks.NewWebhookRaw(other)

		// What the library signs: the value it parses back from ts.
		parsed, _ := strconv.ParseInt(ts, 10, 64)
		signedAt := time.Unix(parsed, 0)
		sign := func(wh *standardwebhooks.Webhook) string {
			s, err := wh.Sign(id, signedAt, body)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		var sig string
		switch mode % fuzzModes {
		case fuzzModeSigned:
			sig = sign(lib)
		case fuzzModeOtherKey:
			sig = sign(libOther)
		case fuzzModeRaw:
			sig = raw
		case fuzzModeRawThenGood:
			sig = raw + " " + sign(lib)
		}
		_, tsOK := fuzzTimestampOK(ts)
		genuine := mode%fuzzModes == fuzzModeSigned && tsOK && fuzzIDOK(id)

		sent, _ := ParseTimestamp(ts) // 0 if refused: Begin refuses first then
		v, err := New(Config{Keys: [][]byte{key}, Tolerance: DefaultTolerance, Now: func() time.Time { return time.Unix(sent, 0) }})
		if err != nil {
			t.Fatalf("New refused a %d-byte key: %v", len(key), err)
		}
		h := Headers{ID: id, Timestamp: ts, Signature: sig}
		m, err := v.Begin(h)
		if err != nil {
			if genuine {
				t.Fatalf("genuine delivery refused by Begin: %v (headers %q)", err, h)
			}
			return
		}
		// Stream the body in two pieces, split where mode says.
		split := int(mode/fuzzModes) % (len(body) + 1)
		_, _ = m.Write(body[:split])
		_, _ = m.Write(body[split:])
		_, ours := m.Finish()
		if ours != nil && !errors.Is(ours, ErrNoMatchingSignature) {
			t.Fatalf("Finish: got %v, want nil or ErrNoMatchingSignature", ours)
		}

		hdr := http.Header{}
		hdr.Set(HeaderID, id)
		hdr.Set(HeaderTimestamp, ts)
		hdr.Set(HeaderSignature, sig)
		theirs := lib.VerifyIgnoringTimestamp(body, hdr)

		if (ours == nil) != (theirs == nil) {
			t.Fatalf("verdicts differ: ours %v, library %v\nkey %x\nheaders %q\nbody %q", ours, theirs, key, h, body)
		}
		if genuine && ours != nil {
			t.Fatalf("genuine delivery refused: %v (headers %q)", ours, h)
		}
		if mode%fuzzModes == fuzzModeOtherKey && ours == nil {
			t.Fatalf("delivery signed with another key accepted (headers %q)", h)
		}
	})
}
