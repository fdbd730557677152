package e2e_test

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// standard_webhooks against signers nobody here wrote, pinned in e2e/node:
// the npm svix package (svix-* headers), the npm standardwebhooks package
// (with every form of secret in the Caddyfile) and Node's own ed25519 (v1a
// signatures); and what `caddy openai-webhook sign --key` prints, judged
// by Node's ed25519.

// svixSecret is the example secret of Svix's documentation: 24 bytes, the
// length Svix hands out.
const svixSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// startStandard runs Caddy with standard_webhooks { <handler> } in front
// of the upstream on upstreamPort, with env (NAME=value) in Caddy's
// environment.
func startStandard(t *testing.T, e *e2e, upstreamPort int, handler string, env ...string) *caddyServer {
	t.Helper()
	return startCaddy(t, e, caddyConfig{Directive: "standard_webhooks", Handler: handler, UpstreamPort: upstreamPort, Env: env})
}

// standardRequest returns a POST of body to gw with the id, timestamp and
// signature in the headers of family: "webhook" (webhook-id, ...) or "svix"
// (svix-id, ...).
func standardRequest(t *testing.T, gw *caddyServer, family, id, ts, sig string, body []byte) *http.Request {
	t.Helper()
	req := gw.request(t.Context(), "", "", "", body)
	req.Header.Set(family+"-id", id)
	req.Header.Set(family+"-timestamp", ts)
	req.Header.Set(family+"-signature", sig)
	return req
}

// nodeOutput runs a Node script that must succeed and returns its output,
// trimmed.
func nodeOutput(t *testing.T, e *e2e, stdin []byte, script string, args ...string) string {
	t.Helper()
	out, ok := node(t, e, stdin, script, args...)
	if !ok {
		t.Fatalf("node %s: %s", script, out)
	}
	return strings.TrimSpace(out)
}

// textBodies are nodeBodies without the bytes that are not UTF-8: the svix
// and standardwebhooks packages sign text.
func textBodies() map[string][]byte {
	bodies := nodeBodies()
	for name, body := range bodies {
		if !utf8.Valid(body) {
			delete(bodies, name)
		}
	}
	return bodies
}

// checkAccepted sends req, which the gateway must accept, and checks that
// the upstream got the exact body and the three signature headers of
// family as sent, once each.
func checkAccepted(t *testing.T, req *http.Request, family string, body []byte) {
	t.Helper()
	sent := req.Header.Clone()
	got := deliver(t, req)
	got.checkBody(t, body)
	for _, name := range []string{family + "-id", family + "-timestamp", family + "-signature"} {
		if vals := got.header(name); len(vals) != 1 || vals[0] != sent.Get(name) {
			t.Errorf("upstream got %s %q, want exactly %q", name, vals, sent.Get(name))
		}
	}
}

// checkRefused sends req, which the gateway must refuse with status, and
// checks that it never reached the upstream.
func checkRefused(t *testing.T, up *upstream, req *http.Request, status int) {
	t.Helper()
	before := up.count(t)
	resp, answer := send(t, req)
	if resp.StatusCode != status {
		t.Errorf("status %d %q, want %d", resp.StatusCode, answer, status)
	}
	if n := up.count(t) - before; n != 0 {
		t.Errorf("%d refused requests reached the upstream", n)
	}
}

// TestStandardSvix: what the npm svix package's Webhook.sign signs, sent
// with the svix-* headers as Svix and its customers (Resend, Clerk, ...)
// send it, standard_webhooks accepts with headers auto (the default) and
// svix, and refuses with headers webhook, which looks for webhook-* only.
func TestStandardSvix(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	for _, tc := range []struct {
		headers string
		status  int
	}{
		{"auto", http.StatusOK},
		{"svix", http.StatusOK},
		{"webhook", http.StatusUnauthorized},
	} {
		t.Run("headers "+tc.headers, func(t *testing.T) {
			gw := startStandard(t, e, up.port, "secret {env.SVIX_SECRET}\n\t\theaders "+tc.headers, "SVIX_SECRET="+svixSecret)
			for name, body := range textBodies() {
				t.Run(name, func(t *testing.T) {
					id, ts := "msg_svix_"+tc.headers+"_"+slug(name), unix(time.Now())
					sig := nodeOutput(t, e, body, "svix-sign.mjs", svixSecret, id, ts)
					req := standardRequest(t, gw, "svix", id, ts, sig, body)
					if tc.status != http.StatusOK {
						checkRefused(t, up, req, tc.status)
						return
					}
					checkAccepted(t, req, "svix", body)
				})
			}
		})
	}
}

// TestStandardSecretForms: the secret as each sender hands it out —
// whsec_<base64> (OpenAI, Svix), v1,whsec_<base64> (Supabase) and bare
// base64 (Brex) — is the same key: what the npm standardwebhooks package
// signs with it is accepted under each form, and what it signs with
// another secret is refused.
func TestStandardSecretForms(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	for _, form := range []struct{ name, secret string }{
		{"whsec_", webhooktest.Secret},
		{"v1,whsec_", "v1," + webhooktest.Secret},
		{"bare base64", strings.TrimPrefix(webhooktest.Secret, "whsec_")},
	} {
		t.Run(form.name, func(t *testing.T) {
			gw := startStandard(t, e, up.port, "secret {env.SENDER_SECRET}", "SENDER_SECRET="+form.secret)
			for name, body := range textBodies() {
				t.Run(name, func(t *testing.T) {
					id, ts := "msg_form_"+slug(form.name)+"_"+slug(name), unix(time.Now())
					sig := nodeOutput(t, e, body, "sign.mjs", webhooktest.Secret, id, ts)
					checkAccepted(t, standardRequest(t, gw, "webhook", id, ts, sig, body), "webhook", body)

					other := nodeOutput(t, e, body, "sign.mjs", secretC, id+"_c", ts)
					checkRefused(t, up, standardRequest(t, gw, "webhook", id+"_c", ts, other, body), http.StatusUnauthorized)
				})
			}
		})
	}
}

// nodeKeys returns a new ed25519 key pair made by Node: the whpk_ public
// key and the private key for ed25519.mjs sign.
func nodeKeys(t *testing.T, e *e2e) (public, private string) {
	t.Helper()
	public, private, ok := strings.Cut(nodeOutput(t, e, nil, "ed25519.mjs", "keys"), "\n")
	if !ok || !strings.HasPrefix(public, "whpk_") {
		t.Fatalf("ed25519.mjs keys printed %q", public)
	}
	return public, strings.TrimSpace(private)
}

// TestStandardV1aNode: v1a signatures made with Node's own
// crypto.sign(null, …) and an ed25519 key generated in Node are accepted
// by a gateway with the key's whpk_ public key, for text, bytes that are
// not UTF-8 and nothing, and refused by one with another public key.
func TestStandardV1aNode(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	public, private := nodeKeys(t, e)
	another, _ := nodeKeys(t, e)
	for _, tc := range []struct {
		name, key string
		status    int
	}{
		{"matching public key", public, http.StatusOK},
		{"another public key", another, http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := startStandard(t, e, up.port, "public_key {env.PUBLIC_KEY}", "PUBLIC_KEY="+tc.key)
			for name, body := range nodeBodies() {
				t.Run(name, func(t *testing.T) {
					id, ts := "msg_v1a_"+slug(tc.name)+"_"+slug(name), unix(time.Now())
					sig := nodeOutput(t, e, body, "ed25519.mjs", "sign", private, id, ts)
					req := standardRequest(t, gw, "webhook", id, ts, sig, body)
					if tc.status != http.StatusOK {
						checkRefused(t, up, req, tc.status)
						return
					}
					checkAccepted(t, req, "webhook", body)
				})
			}
		})
	}
}

// TestStandardSignKey: what `caddy openai-webhook sign --key whsk_…`
// prints, with a key pair from `secret --asymmetric`, Node's own ed25519
// verifies under the pair's whpk_ public key, and under no other key, for
// no other body.
func TestStandardSignKey(t *testing.T) {
	e := setup(t)
	pair, code := e.command(t, "", "secret", "--asymmetric")
	if code != 0 {
		t.Fatalf("secret --asymmetric exited %d: %s", code, pair)
	}
	// The tokens, wherever secret puts them (one per line, after a label,
	// as NAME=value): the key's text is base64.
	token := func(prefix string) string {
		found := regexp.MustCompile(`\b`+prefix+`[A-Za-z0-9+/]+={0,2}`).FindAllString(pair, -1)
		slices.Sort(found)
		found = slices.Compact(found)
		if len(found) != 1 {
			t.Fatalf("secret --asymmetric printed %d different %s… tokens, want 1:\n%s", len(found), prefix, pair)
		}
		return found[0]
	}
	signing, public := token("whsk_"), token("whpk_")
	another, _ := nodeKeys(t, e)

	body := []byte(`{"object":"event","id":"evt_sign_key","type":"batch.completed","created_at":1750287018,"data":{"id":"batch_1","note":"naïve ✓"}}`)
	dir := t.TempDir()
	bodyFile := filepath.Join(dir, "body")
	if err := os.WriteFile(bodyFile, body, 0o600); err != nil {
		t.Fatal(err)
	}
	headers, code := e.command(t, "", "sign", "--key", signing, "--file", bodyFile)
	if code != 0 {
		t.Fatalf("sign --key exited %d: %s", code, headers)
	}
	for _, name := range []string{"webhook-id: ", "webhook-timestamp: ", "webhook-signature: "} {
		if !strings.Contains(headers, name) {
			t.Fatalf("sign --key printed no %s line: %q", strings.TrimSuffix(name, ": "), headers)
		}
	}
	headersFile := filepath.Join(dir, "headers")
	if err := os.WriteFile(headersFile, []byte(headers), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		key      string
		body     []byte
		verifies bool
	}{
		{"the pair's public key", public, body, true},
		{"another public key", another, body, false},
		{"a changed body", public, append(body[:len(body):len(body)], ' '), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, ok := node(t, e, tc.body, "ed25519.mjs", "verify", tc.key, headersFile)
			if ok != tc.verifies {
				t.Errorf("Node's ed25519 verify: %s(exit 0: %v, want %v)\nsign --key printed:\n%s", out, ok, tc.verifies, headers)
			}
		})
	}
}
