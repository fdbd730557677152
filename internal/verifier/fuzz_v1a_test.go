package verifier

// Fuzz targets for the asymmetric (v1a) half and the secret forms. The
// reference library has no v1a, so crypto/ed25519 is the reference for v1a
// entries, with the header grammar restated independently (encoding/base64
// decoding and re-encoding, math/big for the canonical-S rule); for v1 the
// Standard Webhooks library still is. To fuzz one target for a bounded time:
//
//	go test -run='^$' -fuzz='^FuzzDifferentialV1a$' -fuzztime=30s -parallel=1 ./internal/verifier

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// fuzzOrder is ℓ, the ed25519 group order, computed with math/big rather
// than taken from groupOrder.
var fuzzOrder = func() *big.Int {
	l, _ := new(big.Int).SetString("27742317777372353535851937790883648493", 10)
	return l.Add(l, new(big.Int).Lsh(big.NewInt(1), 252))
}()

// fuzzCanonicalEdSig reports whether p is the one standard padded base64
// spelling of 64 bytes whose last 32, little-endian, are below ℓ.
func fuzzCanonicalEdSig(p string) bool {
	b, err := base64.StdEncoding.DecodeString(p)
	if err != nil || len(b) != ed25519.SignatureSize || base64.StdEncoding.EncodeToString(b) != p {
		return false
	}
	s := make([]byte, 32)
	for i := range s {
		s[i] = b[63-i] // to big-endian
	}
	return new(big.Int).SetBytes(s).Cmp(fuzzOrder) < 0
}

// fuzzExpectHeader models the signature header's verdict for a verifier
// that accepts v1 and/or v1a entries: nil or the sentinel.
func fuzzExpectHeader(sig string, v1, v1a bool) error {
	if sig == "" {
		return ErrMissingHeader
	}
	maxLen := MaxSignatures*len("v1,"+strings.Repeat("A", 43)+"= ") - 1
	if v1a {
		maxLen += MaxAsymmetricSignatures * (len("v1a,"+strings.Repeat("A", 86)+"==") - len("v1,"+strings.Repeat("A", 43)+"="))
	}
	if len(sig) > maxLen {
		return ErrTooManySignatures
	}
	nv1a := 0
	for i, entry := range strings.Split(sig, " ") {
		if i == MaxSignatures {
			return ErrTooManySignatures
		}
		if p, ok := strings.CutPrefix(entry, "v1,"); ok && v1 {
			if !fuzzCanonicalMAC(p) {
				return ErrInvalidSignature
			}
			continue
		}
		p, ok := strings.CutPrefix(entry, "v1a,")
		if !ok || !v1a {
			return ErrInvalidSignature
		}
		if nv1a++; nv1a > MaxAsymmetricSignatures {
			return ErrTooManySignatures
		}
		if !fuzzCanonicalEdSig(p) {
			return ErrInvalidSignature
		}
	}
	return nil
}

// Signature choices of FuzzDifferentialV1a (mode % fuzzV1aModes).
const (
	fuzzV1aSigned      = iota // v1a by the key, with crypto/ed25519.Sign
	fuzzV1aOtherKey           // v1a by another key
	fuzzV1aRaw                // the fuzz-provided header as it is
	fuzzV1aRawThenGood        // the fuzz-provided entries, then the good v1a
	fuzzV1aMixed              // a library-signed v1 entry, then the good v1a
	fuzzV1aForged             // v1a of 64 bytes taken from raw: well-formed or not
	fuzzV1aModes
)

// FuzzDifferentialV1a compares the final verdict, for v1a and mixed
// headers against verifiers of public keys, HMAC keys or both, with
// crypto/ed25519 (v1a entries) and the Standard Webhooks library (v1).
//
// mode picks the signature (mode % fuzzV1aModes) and, in its higher bits,
// the configuration: an HMAC key besides the public key, a second public key
// (another key's, listed first), SkipUnkeyed, and public keys left out.
//
// Asserted: Begin's verdict equals the grammar model; when Begin accepts,
// the verdict is "some v1 entry verifies under the HMAC key, by the library,
// or some v1a entry verifies under a public key, by crypto/ed25519", the key
// reported is the HMAC key or the last public key that verifies, and the
// verifications run are at most entries x keys and none after an HMAC
// match; a genuine v1a delivery is always accepted, and one by another key
// always refused.
func FuzzDifferentialV1a(f *testing.F) {
	for mode := range uint8(fuzzV1aModes * 16) {
		f.Add([]byte("seed"), "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", []byte(`{"test": 2432232314}`), mode, "")
	}
	good := edSign(edKey("x"), "msg_1", "1750000000", []byte("{}"))
	for _, raw := range []string{
		"", " ", "v1a,", "v1a", good, good + " " + good, "v1," + strings.Repeat("A", 43) + "=",
		strings.Repeat(good+" ", 4) + good, good + ",x", "V1A," + good[4:], "v1a," + good[4:90], good + "=",
		"v1a," + strings.Repeat("/", 86) + "==", "v1a," + strings.Repeat("A", 85) + "B==",
		strings.Repeat("v1,"+strings.Repeat("A", 43)+"= ", 12) + strings.Repeat(good+" ", 3) + good,
		string(make([]byte, 64)), string(bytes.Repeat([]byte{0xff}, 64)),
		string(append(make([]byte, 32), groupOrder[:]...)),
	} {
		for _, mode := range []uint8{fuzzV1aRaw, fuzzV1aRawThenGood, fuzzV1aForged, fuzzV1aRaw + 16*fuzzV1aModes/2, fuzzV1aRawThenGood + 3*fuzzV1aModes} {
			f.Add([]byte("seed"), "msg_1", "1750000000", []byte("{}"), mode, raw)
		}
	}
	f.Add([]byte{}, strings.Repeat("~", MaxIDLen), "9223372036854775807", bytes.Repeat([]byte("x"), 70000), uint8(fuzzV1aSigned), "")
	f.Add([]byte("k"), "a.b", "1", []byte(""), uint8(fuzzV1aSigned), "")
	f.Add([]byte("k"), "msg", "01", []byte(""), uint8(fuzzV1aMixed), "")

	f.Fuzz(func(t *testing.T, seed []byte, id, ts string, body []byte, mode uint8, raw string) {
		s1 := sha256.Sum256(seed)
		priv := ed25519.NewKeyFromSeed(s1[:])
		s2 := sha256.Sum256(append([]byte("other"), seed...))
		other := ed25519.NewKeyFromSeed(s2[:])
		hmacKey := fuzzDeriveKey(seed)
		cfgBits := mode / fuzzV1aModes
		withHMAC, twoPubs, skip, noPubs := cfgBits&1 != 0, cfgBits&2 != 0, cfgBits&4 != 0, cfgBits&8 != 0
		if noPubs && !withHMAC {
			withHMAC = true
		}
		var cfg Config
		var pubs []ed25519.PublicKey
		if withHMAC {
			cfg.Keys = [][]byte{hmacKey}
		}
		if !noPubs {
			if twoPubs {
				pubs = append(pubs, other.Public().(ed25519.PublicKey))
			}
			pubs = append(pubs, priv.Public().(ed25519.PublicKey))
			for _, p := range pubs {
				cfg.PublicKeys = append(cfg.PublicKeys, p)
			}
		}
		cfg.SkipUnkeyed = skip

		msg := append([]byte(id+"."+ts+"."), body...)
		goodV1a := "v1a," + base64.StdEncoding.EncodeToString(ed25519.Sign(priv, msg))
		var sig string
		switch mode % fuzzV1aModes {
		case fuzzV1aSigned:
			sig = goodV1a
		case fuzzV1aOtherKey:
			sig = "v1a," + base64.StdEncoding.EncodeToString(ed25519.Sign(other, msg))
			if twoPubs { // other is configured then: a third key
				s3 := sha256.Sum256(append([]byte("third"), seed...))
				sig = "v1a," + base64.StdEncoding.EncodeToString(ed25519.Sign(ed25519.NewKeyFromSeed(s3[:]), msg))
			}
		case fuzzV1aRaw:
			sig = raw
		case fuzzV1aRawThenGood:
			sig = raw + " " + goodV1a
		case fuzzV1aMixed:
			lib, _ := standardwebhooks.NewWebhookRaw(hmacKey)
			parsed, _ := strconv.ParseInt(ts, 10, 64)
			v1, err := lib.Sign(id, time.Unix(parsed, 0), body)
			if err != nil {
				t.Fatal(err)
			}
			sig = v1 + " " + goodV1a
		case fuzzV1aForged:
			forged := make([]byte, 64)
			copy(forged, raw)
			sig = "v1a," + base64.StdEncoding.EncodeToString(forged)
		}
		sent, tsErr := ParseTimestamp(ts)
		v, err := New(Config{Keys: cfg.Keys, PublicKeys: cfg.PublicKeys, SkipUnkeyed: skip, Tolerance: DefaultTolerance, Now: func() time.Time { return time.Unix(sent, 0) }})
		if err != nil {
			t.Fatal(err)
		}
		h := Headers{ID: id, Timestamp: ts, Signature: sig}
		m, err := v.Begin(h)
		headersOK := fuzzIDOK(id) && tsErr == nil
		if headersOK {
			want := fuzzExpectHeader(sig, withHMAC || skip, !noPubs || skip)
			if (err == nil) != (want == nil) || want != nil && !errors.Is(err, want) {
				t.Fatalf("Begin(%q) with hmac %v, %d public keys, skip %v: got %v, want %v", h, withHMAC, len(pubs), skip, err, want)
			}
		}
		genuine := mode%fuzzV1aModes == fuzzV1aSigned && headersOK && !noPubs
		if err != nil {
			fuzzCheckOneSentinel(t, err)
			if genuine {
				t.Fatalf("genuine v1a delivery refused by Begin: %v (headers %q)", err, h)
			}
			return
		}
		split := int(mode) % (len(body) + 1)
		_, _ = m.Write(body[:split])
		_, _ = m.Write(body[split:])
		at := (len(body) + 1) / 3
		r, ours := m.FinishBody(func(yield func([]byte) bool) {
			_ = yield(body[:at]) && yield(body[at:2*at]) && yield(body[2*at:])
		})
		if ours != nil && !errors.Is(ours, ErrNoMatchingSignature) {
			t.Fatalf("FinishBody: got %v, want nil or ErrNoMatchingSignature", ours)
		}

		// The references.
		hmacOK := false
		if withHMAC {
			lib, _ := standardwebhooks.NewWebhookRaw(hmacKey)
			hdr := http.Header{}
			hdr.Set(HeaderID, id)
			hdr.Set(HeaderTimestamp, ts)
			hdr.Set(HeaderSignature, sig)
			hmacOK = lib.VerifyIgnoringTimestamp(body, hdr) == nil
		}
		edKey, entries := -1, 0
		for entry := range strings.SplitSeq(sig, " ") {
			p, ok := strings.CutPrefix(entry, "v1a,")
			if !ok {
				continue
			}
			entries++
			raw, err := base64.StdEncoding.DecodeString(p)
			if err != nil {
				continue
			}
			for k, pub := range pubs {
				if ed25519.Verify(pub, msg, raw) && k > edKey {
					edKey = k
				}
			}
		}
		if (ours == nil) != (hmacOK || edKey >= 0) {
			t.Fatalf("verdicts differ: ours %v (%+v), v1 library %v, v1a crypto/ed25519 key %d\nheaders %q\nbody %q", ours, r, hmacOK, edKey, h, body)
		}
		switch {
		case hmacOK:
			if r.Key != 0 || r.Kind != KindHMAC || r.Ed25519Verifications != 0 {
				t.Fatalf("HMAC match reported as %+v", r)
			}
		case edKey >= 0:
			if r.Key != len(cfg.Keys)+edKey || r.Kind != KindEd25519 {
				t.Fatalf("v1a match by public key %d reported as %+v", edKey, r)
			}
		default:
			if r.Key != -1 {
				t.Fatalf("refusal reported key %+v", r)
			}
		}
		if r.Ed25519Verifications > entries*len(pubs) || r.Ed25519Verifications > MaxAsymmetricSignatures*len(pubs) {
			t.Fatalf("%d verifications for %d v1a entries and %d public keys", r.Ed25519Verifications, entries, len(pubs))
		}
		if genuine && ours != nil {
			t.Fatalf("genuine v1a delivery refused: %v (headers %q)", ours, h)
		}
		if mode%fuzzV1aModes == fuzzV1aOtherKey && ours == nil {
			t.Fatalf("v1a delivery by an unconfigured key accepted (headers %q)", h)
		}
	})
}

// fuzzSecretVocabulary is every text ParseHMACSecret's errors are made of,
// digit runs as "0": a secret that is a substring of it may appear in an
// error without being leaked.
var fuzzSecretVocabulary = fuzzNormDigits(strings.Join([]string{
	"secret is empty",
	"secret begins or ends with a space or a line break: give it without them",
	"secret after v1,whsec_: ", "secret after whsec_: ",
	`secret starts with "whpk_": that is an ed25519 public key, for v1a signatures, not an HMAC secret`,
	`secret starts with "whsk_": that is an ed25519 signing key, which stays with the sender; verify with its whpk_ public key`,
	`secret starts with "v1," but not "v1,whsec_"; ` + secretForms,
	"secret starts with an unknown version (the text before its first ','); " + secretForms,
	"secret starts with an unknown prefix (the text before its first '_'), or is in the URL-safe base64 alphabet; " + secretForms,
	"secret is not valid bare base64 (" + secretForms + "): ",
	"secret decodes to 0 bytes, want 0 to 0",
	"the base64 uses the URL-safe alphabet ('-' or '_'); want standard base64 ('+' and '/')",
	"a space or a line break at character 0 of the base64",
	"character 0 of the base64 is not a base64 character",
	"the base64 lacks its padding: it should end with 0 '='",
	"the base64 is cut short, or has characters too many (its length is not a multiple of 0)",
	"not canonical base64 ('=' only at the end, unused bits zero)",
}, "\x00"))

// FuzzParseHMACSecret checks ParseHMACSecret against a model of its three
// forms (encoding/base64 decoding and re-encoding), that every form of a
// key decodes to it, that it agrees with ParseSecret on whsec_ secrets, and
// that no error quotes the secret.
func FuzzParseHMACSecret(f *testing.F) {
	const b64 = "RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="
	for _, s := range []string{
		"", " ", b64, "whsec_" + b64, "v1,whsec_" + b64, "v1," + b64, "v1,whsec_", "whsec_", "whpk_" + b64, "whsk_" + b64,
		"WHSEC_" + b64, "whsec_" + b64 + " ", "\t" + b64, b64[:43], b64[:42] + "d=", b64[:42] + "g=", "whsec_whsec_" + b64,
		"v1,v1,whsec_" + b64, "v2,whsec_" + b64, strings.Replace(b64, "+", "-", 1), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
		strings.Repeat("A", 32), strings.Repeat("A", 88), strings.Repeat("A", 84) + "==", "a_" + b64, "_" + b64, "," + b64,
		"abcdefghijkl_" + b64, "abcdefghijklm_" + b64, "whsec_" + b64[:20] + "\n" + b64[20:],
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		key, err := ParseHMACSecret(s)
		payload, form := s, ""
		for _, prefix := range []string{"v1,whsec_", "whsec_"} {
			if rest, ok := strings.CutPrefix(s, prefix); ok {
				payload, form = rest, prefix
				break
			}
		}
		decoded, decErr := base64.StdEncoding.DecodeString(payload)
		ok := strings.TrimSpace(s) == s && decErr == nil && base64.StdEncoding.EncodeToString(decoded) == payload &&
			len(decoded) >= MinKeyLen && len(decoded) <= MaxKeyLen
		if ok != (err == nil) {
			t.Fatalf("ParseHMACSecret(%q): %v, model says ok %v", s, err, ok)
		}
		if err != nil {
			if key != nil {
				t.Fatalf("ParseHMACSecret(%q) returned a key and %v", s, err)
			}
			if p := strings.TrimSpace(payload); p != "" && !strings.Contains(fuzzSecretVocabulary, fuzzNormDigits(p)) && strings.Contains(err.Error(), p) {
				t.Fatalf("error %q quotes the secret %q", err, p)
			}
			if form == "whsec_" {
				if _, err2 := ParseSecret(s); err2 == nil {
					t.Fatalf("ParseSecret accepts %q, ParseHMACSecret refuses it: %v", s, err)
				}
			}
			return
		}
		if !bytes.Equal(key, decoded) {
			t.Fatalf("ParseHMACSecret(%q) = %x, want %x", s, key, decoded)
		}
		for _, other := range []string{payload, "whsec_" + payload, "v1,whsec_" + payload} {
			if k, err := ParseHMACSecret(other); err != nil || !bytes.Equal(k, key) {
				t.Fatalf("%q: %x, %v; want %x as for %q", other, k, err, key, s)
			}
		}
		if k, err := ParseSecret("whsec_" + payload); err != nil || !bytes.Equal(k, key) {
			t.Fatalf("ParseSecret disagrees on %q: %x, %v", s, k, err)
		}
		if kind, k, err := ParseKey(s); err != nil || kind != KindHMAC || !bytes.Equal(k, key) {
			t.Fatalf("ParseKey(%q): %v %x %v", s, kind, k, err)
		}
	})
}
