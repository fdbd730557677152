package openaiwebhook

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/spf13/cobra"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/webhookgate/caddy-openai-webhook/internal/demo"
	"github.com/webhookgate/caddy-openai-webhook/internal/freeport"
	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// runCommand runs `caddy openai-webhook args...` with stdin as standard
// input, and returns what it wrote and its error (a non-zero exit).
func runCommand(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := &cobra.Command{Use: "openai-webhook", SilenceUsage: true, SilenceErrors: true}
	addCommands(root)
	var out, errOut bytes.Buffer
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	err = root.Execute()
	return out.String(), errOut.String(), err
}

// noSecretIn fails if any form of the test secrets shows in text.
func noSecretIn(t *testing.T, text string) {
	t.Helper()
	for _, s := range []string{webhooktest.Secret, strings.TrimPrefix(webhooktest.Secret, "whsec_"), "c2lnbmluZy1zZWNyZXQ"} {
		if strings.Contains(text, s) {
			t.Errorf("a secret is shown: %q", text)
		}
	}
}

func TestSecretCommand(t *testing.T) {
	first, _, err := runCommand(t, "", "secret")
	if err != nil {
		t.Fatal(err)
	}
	second, _, _ := runCommand(t, "", "secret")
	if !regexp.MustCompile(`^whsec_[A-Za-z0-9+/]{43}=\n$`).MatchString(first) || first == second {
		t.Fatalf("secrets %q and %q: want two different lines of whsec_ and 32 bytes in base64", first, second)
	}
	key, err := verifier.ParseSecret(strings.TrimSpace(first))
	if err != nil || len(key) != 32 {
		t.Fatalf("the handler would refuse it: %v", err)
	}
	if _, _, err := runCommand(t, "", "secret", "extra"); err == nil {
		t.Fatal("an argument was accepted")
	}
}

// TestSignCommand: what sign prints is exactly three header lines, which
// the handler's verifier and the reference library both accept, byte for
// byte.
func TestSignCommand(t *testing.T) {
	body := `{"object":"event","type":"response.completed","data":{"id":"resp_1"}}` + "\n"
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	out, _, err := runCommand(t, body, "sign", "--secret", webhooktest.Secret, "--id", "wh_sign_1", "--timestamp", ts)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 3 || lines[0] != "webhook-id: wh_sign_1" || lines[1] != "webhook-timestamp: "+ts || !strings.HasPrefix(lines[2], "webhook-signature: v1,") {
		t.Fatalf("sign printed %q", out)
	}
	hdr := http.Header{}
	for _, l := range lines {
		name, value, _ := strings.Cut(l, ": ")
		hdr.Set(name, value)
	}
	key, _ := verifier.ParseSecret(webhooktest.Secret)
	v, err := verifier.New(verifier.Config{Keys: [][]byte{key}, Tolerance: verifier.DefaultTolerance})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(verifier.Headers{ID: hdr.Get("webhook-id"), Timestamp: hdr.Get("webhook-timestamp"), Signature: hdr.Get("webhook-signature")}, []byte(body)); err != nil {
		t.Fatalf("the handler's verifier refuses it: %v", err)
	}
	wh, err := standardwebhooks.NewWebhook(webhooktest.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := wh.Verify([]byte(body), hdr); err != nil {
		t.Fatalf("the reference library refuses it: %v", err)
	}

	// Defaults: a new wh_ id and now; the secret from the environment;
	// the body from a file.
	t.Setenv(secretEnv, webhooktest.Secret)
	file := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err = runCommand(t, "", "sign", "--file", file)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^webhook-id: wh_[0-9a-f]{32}\nwebhook-timestamp: \d+\nwebhook-signature: v1,\S{44}\n$`).MatchString(out) {
		t.Fatalf("sign with defaults printed %q", out)
	}
	noSecretIn(t, out)
}

// TestCommandErrors: every command checks its flags and the secret like
// the handler does, fails with a message naming the flag, and never shows
// a secret.
func TestCommandErrors(t *testing.T) {
	dir := t.TempDir()
	headers := filepath.Join(dir, "headers")
	if err := os.WriteFile(headers, []byte("webhook-id: wh_x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(secretEnv, "")
	bad := "whsec_c2lnbmluZy1zZWNyZXQ" // too short, and not canonical
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"sign"}, "no secret: give --secret or set " + secretEnv},
		{[]string{"sign", "--secret", strings.TrimPrefix(webhooktest.Secret, "whsec_")}, `--secret: secret does not start with "whsec_"`},
		{[]string{"sign", "--secret", bad}, "--secret"},
		{[]string{"sign", "--secret", webhooktest.Secret, "--secret", webhooktest.Secret}, "--secret: give one secret"},
		{[]string{"sign", "--secret", webhooktest.Secret, "--id", "wh.dot"}, "--id: invalid webhook-id"},
		{[]string{"sign", "--secret", webhooktest.Secret, "--timestamp", "017"}, "--timestamp: invalid webhook-timestamp"},
		{[]string{"sign", "--secret", webhooktest.Secret, "--file", filepath.Join(dir, "absent")}, "--file"},
		{[]string{"sign", "--secret", webhooktest.Secret, "body.json"}, "openai-webhook sign takes no arguments, but was given 1"},
		{[]string{"secret", "foo"}, "openai-webhook secret takes no arguments, but was given 1"},
		{[]string{"sned"}, `openai-webhook: "sned" is not a command; one of demo, secret, send, sign, verify; did you mean send?`},
		{[]string{webhooktest.Secret}, "openai-webhook: an argument is not a command"},
		{[]string{}, "openai-webhook needs a command: demo, secret, send, sign, verify"},
		{[]string{"send", "--secret", webhooktest.Secret, "--url", "http://127.0.0.1:1/", "--file", headers, "--type", "batch.completed"}, "--type and --file: give one or the other"},
		{[]string{"send", "--secret", webhooktest.Secret}, "--url: an http:// or https:// URL is required"},
		{[]string{"send", "--secret", webhooktest.Secret, "--url", "ftp://x/"}, "--url"},
		{[]string{"send", "--secret", webhooktest.Secret, "--url", "http://127.0.0.1:1/", "--insecure", "--ca", headers}, "--insecure and --ca"},
		{[]string{"send", "--secret", webhooktest.Secret, "--url", "http://127.0.0.1:1/", "--ca", headers}, "--ca: no PEM certificate"},
		{[]string{"send", "--secret", webhooktest.Secret, "--url", "http://127.0.0.1:1/", "--type", "batch.*"}, "--type"},
		{[]string{"send", "--url", "http://127.0.0.1:1/", "--secret", bad}, "--secret"},
		{[]string{"verify", "--secret", webhooktest.Secret}, "--headers: the file of the delivery's headers is required"},
		{[]string{"verify", "--secret", webhooktest.Secret, "--headers", filepath.Join(dir, "absent")}, "--headers"},
		{[]string{"verify", "--secret", webhooktest.Secret, "--headers", headers, "--tolerance", "10"}, "--tolerance"},
		{[]string{"verify", "--secret", webhooktest.Secret, "--headers", headers, "--tolerance", "500ms"}, "--tolerance"},
		{[]string{"verify", "--secret", bad, "--headers", headers}, "--secret"},
	} {
		_, stderr, err := runCommand(t, "{}", tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.wantErr)
		}
		if err != nil {
			noSecretIn(t, err.Error())
		}
		noSecretIn(t, stderr)
	}
}

// writeHeaders writes a header file for verify.
func writeHeaders(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "headers")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestVerifyCommand: the verdict and its precise reason, exit 0 only for a
// valid delivery.
func TestVerifyCommand(t *testing.T) {
	body := `{"object":"event","type":"batch.completed"}`
	now := time.Now()
	clock = func() time.Time { return now } // ages in whole seconds, however long the test takes
	t.Cleanup(func() { clock = time.Now })
	signed := func(id string, ts time.Time, b string) string {
		h := webhooktest.Headers(t, webhooktest.Secret, id, ts, []byte(b))
		return fmt.Sprintf("webhook-id: %s\nwebhook-timestamp: %s\nwebhook-signature: %s\n", h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature"))
	}
	other := "whsec_" + strings.Repeat("A", 43) + "="
	for _, tc := range []struct {
		name    string
		headers string
		body    string
		secrets []string
		valid   bool
		want    string // in what verify prints
	}{
		{"as sign prints them", signed("wh_v1", now, body), body, nil, true, "valid: webhook-id wh_v1"},
		{"a curl -D dump", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + strings.ReplaceAll(signed("wh_v2", now, body), "\n", "\r\n") + "\r\n", body, nil, true, "valid"},
		{"while rotating, the second secret", signed("wh_v3", now, body), body, []string{other, webhooktest.Secret}, true, "with secret 1 (of 2 given, counting from 0),"},
		{"stale", signed("wh_v4", now.Add(-10*time.Minute), body), body, nil, false, "refused: 401 stale: webhook-timestamp " + strconv.FormatInt(now.Add(-10*time.Minute).Unix(), 10) + " is 600 seconds in the past, beyond the tolerance of 5m0s"},
		{"from the future", signed("wh_v5", now.Add(7*time.Minute), body), body, nil, false, "is 420 seconds in the future, beyond the tolerance of 5m0s"},
		{"another secret", signed("wh_v6", now, body), body, []string{other}, false, "refused: 401 bad_signature: no webhook-signature entry matches the body under the 1 secret(s) given"},
		{"body changed", signed("wh_v7", now, body), body + " ", nil, false, "bad_signature"},
		{"no signature", "webhook-id: wh_v8\nwebhook-timestamp: " + strconv.FormatInt(now.Unix(), 10) + "\n", body, nil, false, "refused: 401 malformed: missing or empty header: webhook-signature"},
		{"repeated header", signed("wh_v9", now, body) + "Webhook-Id: wh_v9\n", body, nil, false, "refused: 401 malformed: signature header sent more than once: Webhook-Id"},
		{"malformed timestamp", "webhook-id: wh_v10\nwebhook-timestamp: 0123\nwebhook-signature: v1,x\n", body, nil, false, "invalid webhook-timestamp: leading zero"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"verify", "--headers", writeHeaders(t, tc.headers)}
			for _, s := range append([]string{}, tc.secrets...) {
				args = append(args, "--secret", s)
			}
			if len(tc.secrets) == 0 {
				args = append(args, "--secret", webhooktest.Secret)
			}
			out, _, err := runCommand(t, tc.body, args...)
			if (err == nil) != tc.valid || !strings.Contains(out, tc.want) {
				t.Fatalf("printed %q, error %v; want %q and valid=%v", out, err, tc.want, tc.valid)
			}
			noSecretIn(t, out)
		})
	}
	if _, _, err := runCommand(t, "", "verify", "--secret", webhooktest.Secret, "--headers", writeHeaders(t, "not a header line\n")); err == nil || !strings.Contains(err.Error(), "line 1 is not a header field") {
		t.Fatalf("a header file with a bad line: %v", err)
	}
}

// TestSampleEvents: send's events are shaped as OpenAI's for each family.
func TestSampleEvents(t *testing.T) {
	now := time.Unix(1_750_287_018, 0)
	for typ, check := range map[string]func(data map[string]any) bool{
		"response.completed":        func(d map[string]any) bool { return strings.HasPrefix(d["id"].(string), "resp_") },
		"batch.failed":              func(d map[string]any) bool { return strings.HasPrefix(d["id"].(string), "batch_") },
		"fine_tuning.job.succeeded": func(d map[string]any) bool { return strings.HasPrefix(d["id"].(string), "ftjob_") },
		"eval.run.canceled":         func(d map[string]any) bool { return strings.HasPrefix(d["id"].(string), "evalrun_") },
		"realtime.call.incoming": func(d map[string]any) bool {
			headers, ok := d["sip_headers"].([]any)
			return strings.HasPrefix(d["call_id"].(string), "rtc_") && ok && len(headers) > 0
		},
	} {
		raw, err := sampleEvent(typ, now)
		if err != nil {
			t.Fatal(err)
		}
		var ev struct {
			Object, ID, Type string
			CreatedAt        int64 `json:"created_at"`
			Data             map[string]any
		}
		if err := json.Unmarshal(raw, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Object != "event" || !strings.HasPrefix(ev.ID, "evt_") || ev.Type != typ || ev.CreatedAt != now.Unix() || !check(ev.Data) {
			t.Errorf("%s: %s", typ, raw)
		}
	}
}

// TestSendCommand: send signs now and reports the answer; exit 0 only for
// a 2xx; TLS with --ca or --insecure.
func TestSendCommand(t *testing.T) {
	var got struct {
		header http.Header
		body   []byte
	}
	key, _ := verifier.ParseSecret(webhooktest.Secret)
	v, err := verifier.New(verifier.Config{Keys: [][]byte{key}, Tolerance: verifier.DefaultTolerance})
	if err != nil {
		t.Fatal(err)
	}
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.header = r.Header.Clone()
		got.body, _ = io.ReadAll(r.Body)
		h, _ := signatureHeaders(r.Header)
		if _, err := v.Verify(h, got.body); err != nil {
			http.Error(w, "refused: "+err.Error(), http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, "accepted")
	})
	plain := httptest.NewServer(app)
	defer plain.Close()

	out, _, err := runCommand(t, "", "send", "--url", plain.URL, "--secret", webhooktest.Secret, "--type", "batch.completed", "--id", "wh_send_1")
	if err != nil || out != "HTTP/1.1 200 OK\naccepted\n" {
		t.Fatalf("send: %q, %v", out, err)
	}
	var ev struct{ Type string }
	if json.Unmarshal(got.body, &ev) != nil || ev.Type != "batch.completed" || got.header.Get("webhook-id") != "wh_send_1" {
		t.Fatalf("the app got %s with webhook-id %q", got.body, got.header.Get("webhook-id"))
	}
	out, _, err = runCommand(t, "", "send", "--url", plain.URL, "--secret", "whsec_"+strings.Repeat("A", 43)+"=")
	if err == nil || !strings.HasPrefix(out, "HTTP/1.1 401 Unauthorized\nrefused: ") {
		t.Fatalf("send with another secret: %q, %v; want the 401 printed and a failure", out, err)
	}
	file := filepath.Join(t.TempDir(), "raw.bin")
	if err := os.WriteFile(file, []byte{0, 1, 2, 0xff}, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCommand(t, "", "send", "--url", plain.URL, "--secret", webhooktest.Secret, "--file", file); err != nil || !bytes.Equal(got.body, []byte{0, 1, 2, 0xff}) {
		t.Fatalf("send --file: %v, the app got %q", err, got.body)
	}

	secure := httptest.NewTLSServer(app)
	defer secure.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: secure.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, trust := range [][]string{{"--ca", ca}, {"--insecure"}} {
		if out, _, err := runCommand(t, "", append([]string{"send", "--url", secure.URL, "--secret", webhooktest.Secret}, trust...)...); err != nil || !strings.HasPrefix(out, "HTTP/1.1 200 OK") {
			t.Errorf("send %v over TLS: %q, %v", trust, out, err)
		}
	}
	if _, _, err := runCommand(t, "", "send", "--url", secure.URL, "--secret", webhooktest.Secret); err == nil {
		t.Error("a certificate of an unknown CA was accepted")
	}
}

// demoPorts are the ports of demo.Addresses.
func demoPorts(t *testing.T) []int {
	t.Helper()
	var ports []int
	for _, addr := range demo.Addresses {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(port)
		ports = append(ports, n)
	}
	return ports
}

// TestDemo starts the embedded demo, as `caddy openai-webhook demo` does,
// and sends it a test event with send, and one unsigned delivery.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Caddy on the demo's ports: not in -short mode")
	}
	// The README has newcomers start the demo, then run the tests; the
	// end-to-end tests start it too.
	if !freeport.Hold(t, demoPorts(t)...) {
		t.Skipf("one of %v is in use, probably by the running demo: stop it to run this test", demo.Addresses)
	}
	t.Setenv(secretEnv, "")
	root := &cobra.Command{}
	var notice bytes.Buffer
	root.SetErr(&notice)
	secretArg, err := startDemo(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	if secretArg != " --secret '"+demo.Secret+"'" || !strings.Contains(notice.String(), "public demo secret") {
		t.Fatalf("the demo's send flag %q, notice %q", secretArg, notice.String())
	}

	out, _, err := runCommand(t, "", "send", "--url", demo.Gateway, "--secret", demo.Secret, "--id", "wh_demo")
	if err != nil || !strings.HasPrefix(out, "HTTP/1.1 200 OK\ndelivered response.completed wh_demo: {\"object\":\"event\"") {
		t.Fatalf("send to the demo: %q, %v", out, err)
	}
	out, _, err = runCommand(t, "", "send", "--url", demo.Gateway, "--secret", demo.Secret, "--type", "fine_tuning.job.succeeded")
	if err != nil || out != "HTTP/1.1 200 OK\n" {
		t.Fatalf("a type the demo filters: %q, %v; want 200 and no body", out, err)
	}
	resp, err := http.Post(demo.Gateway, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("an unsigned delivery: %d, want 401", resp.StatusCode)
	}
}
