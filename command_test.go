package openaiwebhook

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
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

// noSecretIn fails if any form of the test secrets, or of keys, shows in
// text.
func noSecretIn(t *testing.T, text string, keys ...string) {
	t.Helper()
	for _, s := range append([]string{webhooktest.Secret, "c2lnbmluZy1zZWNyZXQ"}, keys...) {
		_, encoded, _ := strings.Cut(s, "_")
		if strings.Contains(text, s) || len(encoded) >= 16 && strings.Contains(text, encoded[:16]) {
			t.Errorf("a secret or key is shown: %q", text)
		}
	}
}

// keyPair returns a new ed25519 key pair, whsk_ and whpk_, as
// `secret --asymmetric` prints it.
func keyPair(t *testing.T) (signing, public string) {
	t.Helper()
	out, stderr, err := runCommand(t, "", "secret", "--asymmetric")
	m := regexp.MustCompile(`^signing key \(keep secret\): (whsk_[A-Za-z0-9+/]{86}==)\npublic key: (whpk_[A-Za-z0-9+/]{43}=)\n$`).FindStringSubmatch(out)
	if err != nil || m == nil || stderr != "" {
		t.Fatalf("secret --asymmetric printed %q and %q, error %v", out, stderr, err)
	}
	return m[1], m[2]
}

// verifierFor returns the handler's verifier for the secrets and public
// keys given, whsec_ and whpk_.
func verifierFor(t *testing.T, keys ...string) *verifier.Verifier {
	t.Helper()
	var cfg verifier.Config
	for _, k := range keys {
		kind, key, err := verifier.ParseKey(k)
		if err != nil {
			t.Fatal(err)
		}
		if kind == verifier.KindEd25519 {
			cfg.PublicKeys = append(cfg.PublicKeys, key)
		} else {
			cfg.Keys = append(cfg.Keys, key)
		}
	}
	cfg.Tolerance = verifier.DefaultTolerance
	v, err := verifier.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
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

// TestSecretAsymmetric: secret --asymmetric prints a new pair, each key in
// the form the parsers take, and the pair matches: what the signing key
// signs verifies under the public key, and under another pair's not.
func TestSecretAsymmetric(t *testing.T) {
	signing, public := keyPair(t)
	otherSigning, otherPublic := keyPair(t)
	if signing == otherSigning || public == otherPublic {
		t.Fatal("secret --asymmetric printed the same pair twice")
	}
	priv, err := verifier.ParseSigningKey(signing)
	if err != nil {
		t.Fatalf("the signing key: %v", err)
	}
	if _, err := verifier.ParsePublicKey(public); err != nil {
		t.Fatalf("the public key: %v", err)
	}
	body := []byte(`{"object":"event"}`)
	h := verifier.Headers{ID: "wh_pair", Timestamp: strconv.FormatInt(time.Now().Unix(), 10)}
	if h.Signature, err = verifier.SignV1a(priv, h.ID, h.Timestamp, body); err != nil {
		t.Fatal(err)
	}
	if _, err := verifierFor(t, public).Verify(h, body); err != nil {
		t.Errorf("refused under the pair's public key: %v", err)
	}
	if _, err := verifierFor(t, otherPublic).Verify(h, body); !errors.Is(err, verifier.ErrNoMatchingSignature) {
		t.Errorf("under another pair's public key: %v, want no matching signature", err)
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
	if _, err := verifierFor(t, webhooktest.Secret).Verify(verifier.Headers{ID: hdr.Get("webhook-id"), Timestamp: hdr.Get("webhook-timestamp"), Signature: hdr.Get("webhook-signature")}, []byte(body)); err != nil {
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

// TestSignKeysAndHeaders: sign --key signs v1a, verified under the pair's
// public key and refused under another's; --headers svix names the headers
// svix-*; a flag wins over the other kind's variable.
func TestSignKeysAndHeaders(t *testing.T) {
	signing, public := keyPair(t)
	_, otherPublic := keyPair(t)
	other := "whsec_" + strings.Repeat("A", 43) + "="
	body := `{"object":"event","type":"batch.completed","data":{"id":"batch_1"}}`
	for _, tc := range []struct {
		name           string
		secretEnv, key string // the environment
		args           []string
		family         verifier.Family
		version        string // of the signature entry
		valid, refused string // keys that verify it, and one that does not
	}{
		{"--key", "", "", []string{"--key", signing}, verifier.FamilyWebhook, "v1a,", public, otherPublic},
		{"--key --headers svix", "", "", []string{"--key", signing, "--headers", "svix"}, verifier.FamilySvix, "v1a,", public, otherPublic},
		{"--secret --headers svix", "", "", []string{"--secret", webhooktest.Secret, "--headers", "svix"}, verifier.FamilySvix, "v1,", webhooktest.Secret, other},
		{"--headers webhook", "", "", []string{"--secret", webhooktest.Secret, "--headers", "webhook"}, verifier.FamilyWebhook, "v1,", webhooktest.Secret, other},
		{"$" + signingKeyEnv, "", signing, nil, verifier.FamilyWebhook, "v1a,", public, otherPublic},
		{"--key, with $" + secretEnv + " set", webhooktest.Secret, "", []string{"--key", signing}, verifier.FamilyWebhook, "v1a,", public, otherPublic},
		{"--secret, with $" + signingKeyEnv + " set", "", signing, []string{"--secret", webhooktest.Secret}, verifier.FamilyWebhook, "v1,", webhooktest.Secret, other},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(secretEnv, tc.secretEnv)
			t.Setenv(signingKeyEnv, tc.key)
			out, _, err := runCommand(t, body, append([]string{"sign", "--id", "wh_keys"}, tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			names := tc.family.Names()
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if len(lines) != 3 || lines[0] != names.ID+": wh_keys" || !strings.HasPrefix(lines[1], names.Timestamp+": ") ||
				!strings.HasPrefix(lines[2], names.Signature+": "+tc.version) {
				t.Fatalf("sign printed %q", out)
			}
			h := verifier.Headers{ID: "wh_keys"}
			h.Timestamp = strings.TrimPrefix(lines[1], names.Timestamp+": ")
			h.Signature = strings.TrimPrefix(lines[2], names.Signature+": ")
			if _, err := verifierFor(t, tc.valid).Verify(h, []byte(body)); err != nil {
				t.Errorf("refused under its key: %v", err)
			}
			if _, err := verifierFor(t, tc.refused).Verify(h, []byte(body)); !errors.Is(err, verifier.ErrNoMatchingSignature) {
				t.Errorf("under another key: %v, want no matching signature", err)
			}
			noSecretIn(t, out, signing)
		})
	}
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
	t.Setenv(signingKeyEnv, "")
	bad := "whsec_c2lnbmluZy1zZWNyZXQ" // too short, and not canonical
	signing, public := keyPair(t)
	// Signing keys that are not: cut short (to one character past a
	// multiple of 4, which no base64 is, whatever the key's bits: cut to
	// two past, a random key read as unpadded base64 one time in 16), of
	// the wrong length, with a space inside.
	badKeys := []string{signing[:len(signing)-7], "whsk_" + base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", 48))), signing[:40] + " " + signing[41:]}
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"sign"}, "no secret or signing key: give --secret or --key, or set " + secretEnv + " or " + signingKeyEnv},
		{[]string{"sign", "--secret", webhooktest.Secret, "--key", signing}, "--secret and --key: give one or the other"},
		{[]string{"sign", "--key", signing, "--key", signing}, "--key: give one signing key to sign with"},
		{[]string{"sign", "--key", badKeys[0]}, "--key: signing key after whsk_: the base64 is cut short"},
		{[]string{"sign", "--key", badKeys[1]}, "--key: signing key decodes to 48 bytes, want 32 (a seed) or 64 (seed and public key)"},
		{[]string{"sign", "--key", badKeys[2]}, "--key: signing key after whsk_: a space or a line break"},
		{[]string{"sign", "--key", public}, `--key: signing key does not start with "whsk_"`},
		{[]string{"sign", "--key", webhooktest.Secret}, `--key: signing key does not start with "whsk_"`},
		{[]string{"sign", "--secret", signing}, `--secret: secret does not start with "whsec_"`},
		{[]string{"sign", "--secret", webhooktest.Secret, "--headers", "svx"}, "--headers: give webhook or svix"},
		{[]string{"sign", "--secret", webhooktest.Secret, "--headers", "auto"}, "--headers: give webhook or svix"},
		{[]string{"sign", "--headers", signing, "--key", signing}, "--headers: give webhook or svix"},
		{[]string{"send", "--url", "http://127.0.0.1:1/", "--secret", webhooktest.Secret, "--key", signing}, "--secret and --key: give one or the other"},
		{[]string{"send", "--url", "http://127.0.0.1:1/", "--key", badKeys[0]}, "--key"},
		{[]string{"send", "--url", "http://127.0.0.1:1/", "--key", signing, "--headers", "Svix"}, "--headers"},
		{[]string{"verify", "--headers", headers}, "no key: give --secret or --public-key, or set " + secretEnv},
		{[]string{"verify", "--public-key", signing, "--headers", headers}, `--public-key: public key starts with "whsk_": that is the sender's secret signing key`},
		{[]string{"verify", "--public-key", public[:20], "--headers", headers}, "--public-key: public key after whpk_"},
		{[]string{"verify", "--secret", webhooktest.Secret, "--public-key", public, "--public-key", webhooktest.Secret, "--headers", headers}, "--public-key"},
		{[]string{"sign", "--secret", strings.TrimPrefix(webhooktest.Secret, "whsec_")}, `--secret: secret does not start with "whsec_"`},
		{[]string{"sign", "--secret", bad}, "--secret"},
		{[]string{"sign", "--secret", webhooktest.Secret, "--secret", webhooktest.Secret}, "--secret: give one secret"},
		{[]string{"sign", "--secret", webhooktest.Secret, "--id", "wh.dot"}, "--id: invalid webhook-id"},
		{[]string{"sign", "--secret", webhooktest.Secret, "--timestamp", "017"}, "--timestamp: invalid webhook-timestamp"},
		{[]string{"sign", "--secret", webhooktest.Secret, "--file", filepath.Join(dir, "absent")}, "--file"},
		{[]string{"sign", "--secret", webhooktest.Secret, "body.json"}, "openai-webhook sign takes no arguments, but was given 1"},
		{[]string{"secret", "foo"}, "openai-webhook secret takes no arguments, but was given 1"},
		{[]string{"sned"}, `openai-webhook: "sned" is not a command; one of demo, secret, send, sign, verify; did you mean send?`},
		{[]string{"sned", "--secret", webhooktest.Secret}, `openai-webhook: "sned" is not a command; one of demo, secret, send, sign, verify; did you mean send?`},
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
			noSecretIn(t, err.Error(), append([]string{signing}, badKeys...)...)
		}
		noSecretIn(t, stderr, append([]string{signing}, badKeys...)...)
	}

	// The keys from the environment: both kinds at once is ambiguous, and
	// a malformed key is named by its variable, never shown.
	for _, tc := range []struct {
		secret, key string
		wantErr     string
	}{
		{webhooktest.Secret, signing, "$" + secretEnv + " and $" + signingKeyEnv + " are both set: choose with --secret or --key"},
		{"", badKeys[0], "$" + signingKeyEnv + ": signing key after whsk_: the base64 is cut short"},
		{"", badKeys[1], "$" + signingKeyEnv + ": signing key decodes to 48 bytes"},
	} {
		t.Setenv(secretEnv, tc.secret)
		t.Setenv(signingKeyEnv, tc.key)
		_, stderr, err := runCommand(t, "{}", "sign")
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("sign with the environment: error %v, want one containing %q", err, tc.wantErr)
		}
		if err != nil {
			noSecretIn(t, err.Error(), append([]string{signing}, badKeys...)...)
		}
		noSecretIn(t, stderr, append([]string{signing}, badKeys...)...)
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
	t.Setenv(secretEnv, "")
	body := `{"object":"event","type":"batch.completed"}`
	now := time.Now()
	clock = func() time.Time { return now } // ages in whole seconds, however long the test takes
	t.Cleanup(func() { clock = time.Now })
	signed := func(id string, ts time.Time, b string) string {
		h := webhooktest.Headers(t, webhooktest.Secret, id, ts, []byte(b))
		return fmt.Sprintf("webhook-id: %s\nwebhook-timestamp: %s\nwebhook-signature: %s\n", h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature"))
	}
	// signedWith is what sign prints for the key (--secret or --key) and
	// header family.
	signedWith := func(key, family, id string, ts time.Time, b string) string {
		flag := "--secret"
		if strings.HasPrefix(key, verifier.SigningKeyPrefix) {
			flag = "--key"
		}
		out, _, err := runCommand(t, b, "sign", flag, key, "--headers", family, "--id", id, "--timestamp", strconv.FormatInt(ts.Unix(), 10))
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	other := "whsec_" + strings.Repeat("A", 43) + "="
	signing, public := keyPair(t)
	_, otherPublic := keyPair(t)
	for _, tc := range []struct {
		name    string
		headers string
		body    string
		keys    []string // --secret for whsec_, --public-key for whpk_; none: webhooktest.Secret
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

		{"v1a, under its public key", signedWith(signing, "webhook", "wh_a1", now, body), body, []string{public}, true, "valid: webhook-id wh_a1, signed this second (tolerance 5m0s) with public key 0 (of 1 given, counting from 0), 43 bytes of body"},
		{"v1a, after secrets and another public key", signedWith(signing, "webhook", "wh_a2", now, body), body, []string{webhooktest.Secret, otherPublic, public}, true, "with public key 1 (of 2 given, counting from 0; key 2 of all 3, secrets first),"},
		{"v1, with public keys too", signed("wh_a3", now, body), body, []string{public, other, webhooktest.Secret}, true, "with secret 1 (of 2 given, counting from 0; key 1 of all 3, secrets first),"},
		{"v1a, another public key", signedWith(signing, "webhook", "wh_a4", now, body), body, []string{otherPublic}, false, "refused: 401 bad_signature: no webhook-signature entry matches the body under the 1 public key(s) given"},
		{"v1a, body changed", signedWith(signing, "webhook", "wh_a5", now, body), body + " ", []string{public}, false, "bad_signature"},
		{"v1a, secrets only", signedWith(signing, "webhook", "wh_a6", now, body), body, nil, false, "refused: 401 malformed: malformed webhook-signature: entry 1 is not a v1 signature"},
		{"v1, public keys only", signed("wh_a7", now, body), body, []string{public}, false, "refused: 401 malformed: malformed webhook-signature: entry 1 is not a v1a signature"},
		{"svix, v1a", signedWith(signing, "svix", "wh_s1", now, body), body, []string{public}, true, "valid: svix-id wh_s1,"},
		{"svix, v1", signedWith(webhooktest.Secret, "svix", "wh_s2", now, body), body, nil, true, "valid: svix-id wh_s2,"},
		{"svix, stale", signedWith(signing, "svix", "wh_s3", now.Add(-10*time.Minute), body), body, []string{public}, false, "refused: 401 stale: svix-timestamp "},
		{"svix, another key", signedWith(signing, "svix", "wh_s4", now, body), body, []string{other, otherPublic}, false, "no svix-signature entry matches the body under the 1 secret(s) and 1 public key(s) given"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"verify", "--headers", writeHeaders(t, tc.headers)}
			for _, k := range tc.keys {
				flag := "--secret"
				if strings.HasPrefix(k, verifier.PublicKeyPrefix) {
					flag = "--public-key"
				}
				args = append(args, flag, k)
			}
			if len(tc.keys) == 0 {
				args = append(args, "--secret", webhooktest.Secret)
			}
			out, _, err := runCommand(t, tc.body, args...)
			if (err == nil) != tc.valid || !strings.Contains(out, tc.want) {
				t.Fatalf("printed %q, error %v; want %q and valid=%v", out, err, tc.want, tc.valid)
			}
			noSecretIn(t, out, signing)
		})
	}
	// The secret from the environment, with a public key.
	t.Setenv(secretEnv, webhooktest.Secret)
	out, _, err := runCommand(t, body, "verify", "--public-key", public, "--headers", writeHeaders(t, signed("wh_e1", now, body)))
	if err != nil || !strings.Contains(out, "with secret 0 (of 1 given, counting from 0; key 0 of all 2, secrets first),") {
		t.Fatalf("$%s and --public-key: printed %q, error %v", secretEnv, out, err)
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
		"eval.run.cancelled":        func(d map[string]any) bool { return strings.HasPrefix(d["id"].(string), "evalrun_") },
		"safety.alert.created": func(d map[string]any) bool {
			return regexp.MustCompile(`^alert_[0-9a-f]{32}$`).MatchString(d["id"].(string)) && len(d) == 1
		},
		// Ids of a form OpenAI does not document: neutral.
		"safety.warning_issued": func(d map[string]any) bool { return strings.HasPrefix(d["id"].(string), "obj_") && len(d) == 1 },
		"agent.session.created": func(d map[string]any) bool {
			return strings.HasPrefix(d["id"].(string), "sess_") && d["environment_type"] == "none"
		},
		"agent.session.idle": func(d map[string]any) bool {
			return strings.HasPrefix(d["id"].(string), "sess_") && d["environment_type"] == "none"
		},
		"agent.session.action_required": func(d map[string]any) bool {
			action, ok := d["required_action"].(map[string]any)
			return strings.HasPrefix(d["id"].(string), "sess_") && ok && action["type"] == "function_call"
		},
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
	signing, public := keyPair(t)
	otherSigning, _ := keyPair(t)
	v := verifierFor(t, webhooktest.Secret, public)
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.header = r.Header.Clone()
		got.body, _ = io.ReadAll(r.Body)
		h, _, _ := signatureHeaders(r.Header, headerFamilies["auto"])
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
	// v1a, in svix-* headers.
	out, _, err = runCommand(t, "", "send", "--url", plain.URL, "--key", signing, "--headers", "svix", "--type", "safety.alert.created", "--id", "wh_send_2")
	if err != nil || out != "HTTP/1.1 200 OK\naccepted\n" {
		t.Fatalf("send --key --headers svix: %q, %v", out, err)
	}
	if got.header.Get("svix-id") != "wh_send_2" || !strings.HasPrefix(got.header.Get("svix-signature"), "v1a,") || got.header.Get("webhook-id") != "" {
		t.Fatalf("the app got the headers %v", got.header)
	}
	out, _, err = runCommand(t, "", "send", "--url", plain.URL, "--key", otherSigning)
	if err == nil || !strings.HasPrefix(out, "HTTP/1.1 401 Unauthorized\nrefused: ") {
		t.Fatalf("send with another signing key: %q, %v; want the 401 printed and a failure", out, err)
	}
	noSecretIn(t, out, signing, otherSigning)
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
