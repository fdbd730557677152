// Package webhooktest signs test deliveries with the Standard Webhooks
// reference library and loads the published vectors, so every test signs
// the way a real sender does.
package webhooktest

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// Secret is a valid secret for tests (vector C's, OpenAI's SDK test secret).
const Secret = "whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="

// Vector is one published signing vector.
type Vector struct {
	Name      string `json:"name"`
	Secret    string `json:"secret"`
	ID        string `json:"id"`
	Timestamp string `json:"timestamp"`
	Payload   string `json:"payload"`
	Signature string `json:"signature"`
}

// Vectors are the contents of testdata/standard-webhooks.json.
type Vectors struct {
	Vectors         []Vector `json:"vectors"`
	WrongSignatures []string `json:"wrong_signatures"`
}

// LoadVectors reads the project's copy of the published vectors.
func LoadVectors(t testing.TB) Vectors {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(file), "..", "..", "testdata", "standard-webhooks.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v Vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Vectors) == 0 {
		t.Fatal("no vectors in " + path)
	}
	return v
}

// Sign returns the webhook-signature value the reference library produces.
func Sign(t testing.TB, secret, id string, ts time.Time, body []byte) string {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := wh.Sign(id, ts, body)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// Headers returns the three signature headers of a delivery signed now-ish
// at ts with secret.
func Headers(t testing.TB, secret, id string, ts time.Time, body []byte) http.Header {
	t.Helper()
	h := http.Header{}
	h.Set("webhook-id", id)
	h.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
	h.Set("webhook-signature", Sign(t, secret, id, ts, body))
	return h
}

// WaitBound bounds how long WaitFor waits; running out of it means the
// state never came (none of the tests' waits is an assertion on time).
const WaitBound = time.Minute

// WaitFor polls cond until it holds: a test waits for a state it needs
// (a process's log line, a queue emptied), and fails after WaitBound
// without it.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(WaitBound); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s after %s", what, WaitBound)
		}
	}
}

// PaddingBitSet respells mac, the canonical base64 of a 32-byte MAC, with
// the lowest of the bits its last digit leaves unused set: the same 32
// bytes to a lenient decoder, not to a strict one.
func PaddingBitSet(mac string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	last := strings.IndexByte(alphabet, mac[42])
	return mac[:42] + string(alphabet[last|1]) + mac[43:]
}
