package e2e_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/freeport"
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// OpenAI's own Node SDK and the Standard Webhooks npm package, pinned in
// e2e/node/package.json and its lock file, against the gateway.

var npmInstall struct {
	sync.Once
	err error
	out []byte
}

// nodeDir returns e2e/node with its packages installed (npm ci, once per
// test run).
func nodeDir(t *testing.T, e *e2e) string {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatalf("node runs these checks and must be installed: %v", err)
	}
	dir := filepath.Join(e.root, "e2e", "node")
	npmInstall.Do(func() {
		cmd := exec.CommandContext(e.ctx, "npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		npmInstall.out, npmInstall.err = cmd.CombinedOutput()
	})
	if npmInstall.err != nil {
		t.Fatalf("npm ci: %v\n%s", npmInstall.err, npmInstall.out)
	}
	return dir
}

// node runs script with args and stdin in e2e/node, and returns its
// output and whether it exited 0.
func node(t *testing.T, e *e2e, stdin []byte, script string, args ...string) (string, bool) {
	t.Helper()
	cmd := exec.CommandContext(e.ctx, "node", append([]string{script}, args...)...)
	cmd.Dir = nodeDir(t, e)
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if _, exited := err.(*exec.ExitError); err != nil && !exited {
		t.Fatalf("node %s: %v", script, err)
	}
	return string(out), err == nil
}

// nodeBodies are the bodies the Node checks send: text (OpenAI's JSON, and
// other UTF-8), bytes that are not UTF-8, and nothing.
func nodeBodies() map[string][]byte {
	return map[string][]byte{
		"event":      []byte(`{"object":"event","id":"evt_node","type":"response.completed","created_at":1750287018,"data":{"id":"resp_node"}}`),
		"utf8 text":  []byte("naïve ünïcode ✓, a NUL \x00 and CRLF\r\n"),
		"not utf8":   binaryBody(),
		"empty":      {},
		"large json": []byte(`{"type":"batch.completed","pad":"` + strings.Repeat("p", 50_000) + `"}`),
	}
}

// TestStandardWebhooksSigns: what the npm standardwebhooks package signs
// (Node's own crypto for bytes that are not UTF-8), the gateway accepts.
func TestStandardWebhooksSigns(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	gw := startCaddy(t, e, caddyConfig{UpstreamPort: up.port})
	for name, body := range nodeBodies() {
		t.Run(name, func(t *testing.T) {
			id, ts := "msg_node_sw_"+slug(name), strconv.FormatInt(time.Now().Unix(), 10)
			sig, ok := node(t, e, body, "sign.mjs", webhooktest.Secret, id, ts)
			if !ok {
				t.Fatalf("sign.mjs: %s", sig)
			}
			deliver(t, gw.request(t.Context(), id, ts, strings.TrimSpace(sig), body)).checkBody(t, body)
		})
	}
}

// TestOpenAISDKAcceptsSign: what `caddy openai-webhook sign` prints, the
// openai package's webhooks.verifySignature and webhooks.unwrap accept.
func TestOpenAISDKAcceptsSign(t *testing.T) {
	e := setup(t)
	body := []byte(`{"object":"event","id":"evt_sign","type":"batch.completed","created_at":1750287018,"data":{"id":"batch_1"}}`)
	headers, code := e.command(t, string(body), "sign")
	if code != 0 {
		t.Fatalf("sign: %s", headers)
	}
	file := filepath.Join(t.TempDir(), "headers")
	if err := os.WriteFile(file, []byte(headers), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, ok := node(t, e, body, "verify.mjs", webhooktest.Secret, file); !ok || !strings.Contains(out, "verified and unwrapped: batch.completed") {
		t.Fatalf("the openai package on what sign printed: %s", out)
	}
	if out, ok := node(t, e, append(body, ' '), "verify.mjs", webhooktest.Secret, file); ok {
		t.Fatalf("the openai package accepted a changed body: %s", out)
	}
}

// TestNodeAppReverifies: an app in Node that trusts nothing re-verifies
// everything the gateway forwards, with the openai package where it can
// (UTF-8 bodies), and accepts all of it: the exact bytes and the signature
// headers reach the app, sent whole or chunked.
func TestNodeAppReverifies(t *testing.T) {
	e := setup(t)
	port := freeport.Get(t)
	cmd := exec.CommandContext(e.ctx, "node", "upstream.mjs", strconv.Itoa(port), webhooktest.Secret)
	cmd.Dir = nodeDir(t, e)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close() })
	start(t, cmd, "node upstream", fmt.Sprintf("127.0.0.1:%d", port))
	gw := startCaddy(t, e, caddyConfig{UpstreamPort: port, Handler: "secret {env.OPENAI_WEBHOOK_SECRET}"})

	want := map[string]string{
		"event": "openai.webhooks.unwrap", "large json": "openai.webhooks.unwrap", "utf8 text": "openai.webhooks.verifySignature",
		"empty": "openai.webhooks.verifySignature", "not utf8": "node:crypto",
	}
	for name, body := range nodeBodies() {
		for _, chunked := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, chunked %v", name, chunked), func(t *testing.T) {
				id := fmt.Sprintf("msg_node_app_%s_%v", slug(name), chunked)
				req := gw.delivery(t, id, time.Now(), body)
				if chunked {
					sendChunked(req, body)
				}
				resp, answer := send(t, req)
				var got struct {
					WebhookID     string `json:"webhook_id"`
					Bytes         int
					SHA256        string
					ContentLength string `json:"content_length"`
					VerifiedBy    string `json:"verified_by"`
					Error         string
				}
				if err := json.Unmarshal(answer, &got); err != nil {
					t.Fatalf("%s: %q", resp.Status, answer)
				}
				sum := sha256.Sum256(body)
				if resp.StatusCode != http.StatusOK || got.Error != "" {
					t.Fatalf("the app refused it: %s %s", resp.Status, got.Error)
				}
				if got.WebhookID != id || got.Bytes != len(body) || got.SHA256 != hex.EncodeToString(sum[:]) || got.ContentLength != strconv.Itoa(len(body)) {
					t.Fatalf("the app got %+v, want %d bytes with SHA-256 %x and Content-Length", got, len(body), sum)
				}
				if got.VerifiedBy != want[name] {
					t.Errorf("verified by %s, want %s", got.VerifiedBy, want[name])
				}
			})
		}
	}
}
