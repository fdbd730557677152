package verifier

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

var benchSizes = []int{1 << 10, 64 << 10, 1 << 20}

func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

// BenchmarkVerify compares, over the same delivery: raw HMAC-SHA256 of
// "id.timestamp.body" with a reused keyed hash (the floor: the check
// itself), this package's Verify, and the standard-webhooks library's Verify.
func BenchmarkVerify(b *testing.B) {
	key := mustKey(b, webhooktest.Secret)
	now := time.Now()
	const id = "wh_685c059ae39c8190af8c71ed1022a24d"
	ts := strconv.FormatInt(now.Unix(), 10)
	v := newVerifier(b, now, webhooktest.Secret)
	lib, err := standardwebhooks.NewWebhook(webhooktest.Secret)
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range benchSizes {
		body := bytes.Repeat([]byte("x"), size)
		sig := webhooktest.Sign(b, webhooktest.Secret, id, now, body)
		h := Headers{ID: id, Timestamp: ts, Signature: sig}
		header := http.Header{}
		header.Set(HeaderID, id)
		header.Set(HeaderTimestamp, ts)
		header.Set(HeaderSignature, sig)
		prefix := []byte(id + "." + ts + ".")

		b.Run(sizeName(size)+"/raw-hmac", func(b *testing.B) {
			mac := hmac.New(sha256.New, key)
			var sum [sha256.Size]byte
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				mac.Reset()
				mac.Write(prefix)
				mac.Write(body)
				mac.Sum(sum[:0])
			}
		})
		b.Run(sizeName(size)+"/verifier", func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(h, body); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(sizeName(size)+"/standardwebhooks", func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if err := lib.Verify(body, header); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// bogusV1 and bogusV1a are well-formed entries no key signed: what an
// attacker without a key sends to make the verifier work.
var (
	bogusV1  = "v1," + strings.Repeat("A", 43) + "="
	bogusV1a = "v1a," + strings.Repeat("A", 86) + "=="
)

// BenchmarkVerifyV1a compares, over the same delivery signed with ed25519:
// crypto/ed25519.Verify of "id.timestamp.body" already in one slice (the
// floor), this package's VerifyResult (the body in one slice, copied after
// the prefix), and Begin/Write/FinishBody with the body in 32 KiB chunks as
// the handler holds it.
func BenchmarkVerifyV1a(b *testing.B) {
	priv := edKey("bench")
	pub := edPub(priv)
	now := time.Now()
	const id = "wh_685c059ae39c8190af8c71ed1022a24d"
	ts := strconv.FormatInt(now.Unix(), 10)
	v, err := New(Config{PublicKeys: [][]byte{pub}, Tolerance: DefaultTolerance, Now: func() time.Time { return now }})
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range benchSizes[:2] {
		body := bytes.Repeat([]byte("x"), size)
		msg := append([]byte(id+"."+ts+"."), body...)
		sig := edSign(priv, id, ts, body)
		raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(sig, "v1a,"))
		h := Headers{ID: id, Timestamp: ts, Signature: sig}

		b.Run(sizeName(size)+"/raw-ed25519", func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if !ed25519.Verify(pub, msg, raw) {
					b.Fatal("refused")
				}
			}
		})
		b.Run(sizeName(size)+"/verifier", func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.VerifyResult(h, body); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(sizeName(size)+"/verifier-chunked", func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				m, err := v.Begin(h)
				if err != nil {
					b.Fatal(err)
				}
				for off := 0; off < size; off += 32 << 10 {
					_, _ = m.Write(body[off:min(off+32<<10, size)])
				}
				if _, err := m.FinishBody(benchChunks(body)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchChunks yields body in 32 KiB pieces, as the handler's pooled chunks.
func benchChunks(body []byte) func(func([]byte) bool) {
	return func(yield func([]byte) bool) {
		for off := 0; off < len(body); off += 32 << 10 {
			if !yield(body[off:min(off+32<<10, len(body))]) {
				return
			}
		}
	}
}

// BenchmarkWorstBogus is the most work a request without a valid signature
// can cause: a v1 header of MaxSignatures bogus entries (one HMAC of the
// body per key, whatever the entries), and a v1a header of
// MaxAsymmetricSignatures bogus entries (one ed25519 verification per entry
// and public key), for 1 and 2 keys.
func BenchmarkWorstBogus(b *testing.B) {
	now := time.Now()
	const id = "wh_685c059ae39c8190af8c71ed1022a24d"
	ts := strconv.FormatInt(now.Unix(), 10)
	v1Header := strings.Repeat(bogusV1+" ", MaxSignatures-1) + bogusV1
	v1aHeader := strings.Repeat(bogusV1a+" ", MaxAsymmetricSignatures-1) + bogusV1a
	hmacKeys := [][]byte{mustKey(b, webhooktest.Secret), mustKey(b, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")}
	pubKeys := [][]byte{edPub(edKey("a")), edPub(edKey("b"))}
	for _, size := range benchSizes[:2] {
		body := bytes.Repeat([]byte("x"), size)
		for _, n := range []int{1, 2} {
			for _, tc := range []struct {
				name   string
				cfg    Config
				header string
			}{
				{fmt.Sprintf("v1-%dentries-%dkeys", MaxSignatures, n), Config{Keys: hmacKeys[:n]}, v1Header},
				{fmt.Sprintf("v1a-%dentries-%dkeys", MaxAsymmetricSignatures, n), Config{PublicKeys: pubKeys[:n]}, v1aHeader},
			} {
				tc.cfg.Tolerance, tc.cfg.Now = DefaultTolerance, func() time.Time { return now }
				v, err := New(tc.cfg)
				if err != nil {
					b.Fatal(err)
				}
				h := Headers{ID: id, Timestamp: ts, Signature: tc.header}
				b.Run(sizeName(size)+"/"+tc.name, func(b *testing.B) {
					b.SetBytes(int64(size))
					b.ReportAllocs()
					for b.Loop() {
						if _, err := v.VerifyResult(h, body); !errors.Is(err, ErrNoMatchingSignature) {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}
