package verifier

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"net/http"
	"strconv"
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
