package openaiwebhook

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// provisionedStandard returns a StandardWebhooks provisioned like Caddy
// does, in a config of its own.
func provisionedStandard(t testing.TB, s *StandardWebhooks) *StandardWebhooks {
	t.Helper()
	ctx, cancel := configContext(t)
	t.Cleanup(cancel)
	if err := s.Provision(ctx); err != nil {
		t.Fatalf("provision: %v", err)
	}
	t.Cleanup(func() { _ = s.Cleanup() })
	return s
}

// standardPlaceholders are standard_webhooks' placeholders of a delivery.
var standardPlaceholders = []string{"http.standard_webhooks.id", "http.standard_webhooks.timestamp", "http.standard_webhooks.event_type"}

// serveStandard runs one request through s as Caddy's server would, the
// next handler reading standard_webhooks' placeholders.
func serveStandard(s *StandardWebhooks, r *http.Request) (*nextApp, error) {
	next := &nextApp{read: standardPlaceholders}
	err := s.ServeHTTP(httptest.NewRecorder(), withReplacer(r), next)
	return next, err
}

// familyRequest is a delivery of body with id, signed now with the test
// secret, whose three headers are set under each of the families given.
func familyRequest(t *testing.T, id string, body []byte, families ...verifier.Family) *http.Request {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/webhook", bytes.NewReader(body))
	signed := webhooktest.Headers(t, webhooktest.Secret, id, time.Now(), body)
	for _, f := range families {
		n := f.Names()
		r.Header.Set(n.ID, signed.Get("webhook-id"))
		r.Header.Set(n.Timestamp, signed.Get("webhook-timestamp"))
		r.Header.Set(n.Signature, signed.Get("webhook-signature"))
	}
	return r
}

// TestStandardWebhooksHeaderFamilies: which header names each headers
// setting reads, and the refusal of a request whose two families
// disagree, which the gateway and the app could read differently.
func TestStandardWebhooksHeaderFamilies(t *testing.T) {
	body := []byte(`{"type":"email.sent"}`)
	webhook, svix := verifier.FamilyWebhook, verifier.FamilySvix
	for _, tc := range []struct {
		name     string
		headers  string
		families []verifier.Family
		modify   func(r *http.Request)
		want     outcome
		unread   string // a header of a family not read: not passed on
	}{
		{name: "auto, webhook-*", headers: "auto", families: []verifier.Family{webhook}, want: outcomeForwarded},
		{name: "auto, svix-*", headers: "auto", families: []verifier.Family{svix}, want: outcomeForwarded},
		{name: "default is auto, svix-*", headers: "", families: []verifier.Family{svix}, want: outcomeForwarded},
		{name: "auto, both alike", headers: "auto", families: []verifier.Family{webhook, svix}, want: outcomeForwarded},
		{name: "auto, both, svix-signature differs", headers: "auto", families: []verifier.Family{webhook, svix},
			modify: func(r *http.Request) {
				r.Header.Set("svix-signature", "v1,"+base64.StdEncoding.EncodeToString(make([]byte, 32)))
			},
			want: outcomeBadFraming},
		{name: "auto, both, svix-id differs", headers: "auto", families: []verifier.Family{webhook, svix},
			modify: func(r *http.Request) { r.Header.Set("svix-id", "msg_other") }, want: outcomeBadFraming},
		{name: "auto, a stray svix-id beside webhook-*", headers: "auto", families: []verifier.Family{webhook},
			modify: func(r *http.Request) { r.Header.Set("svix-id", r.Header.Get("webhook-id")) }, want: outcomeBadFraming},
		{name: "auto, webhook-id only beside svix-*", headers: "auto", families: []verifier.Family{svix},
			modify: func(r *http.Request) { r.Header.Set("webhook-id", r.Header.Get("svix-id")) }, want: outcomeBadFraming},
		{name: "auto, svix-id twice", headers: "auto", families: []verifier.Family{svix},
			modify: func(r *http.Request) { r.Header.Add("svix-id", "msg_other") }, want: outcomeMalformed},
		{name: "auto, none", headers: "auto", want: outcomeMalformed},
		{name: "svix, svix-*", headers: "svix", families: []verifier.Family{svix}, want: outcomeForwarded},
		{name: "svix, webhook-* only", headers: "svix", families: []verifier.Family{webhook}, want: outcomeMalformed},
		{name: "svix, both, webhook-* other: not read", headers: "svix", families: []verifier.Family{webhook, svix},
			modify: func(r *http.Request) { r.Header.Set("webhook-id", "msg_other") }, want: outcomeForwarded, unread: "webhook-id"},
		{name: "webhook, stray svix-*: not read", headers: "webhook", families: []verifier.Family{webhook, svix},
			modify: func(r *http.Request) {
				r.Header.Set("svix-signature", "v1,"+base64.StdEncoding.EncodeToString(make([]byte, 32)))
			},
			want: outcomeForwarded, unread: "svix-signature"},
		{name: "webhook, svix-* only", headers: "webhook", families: []verifier.Family{svix}, want: outcomeMalformed},
		{name: "auto, Connection names svix-signature", headers: "auto", families: []verifier.Family{svix},
			modify: func(r *http.Request) { r.Header.Set("Connection", "svix-signature") }, want: outcomeBadFraming},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := provisionedStandard(t, &StandardWebhooks{Handler: Handler{Secrets: []string{testSecret}}, Headers: tc.headers})
			id := "msg_" + randomHex(8)
			r := familyRequest(t, id, body, tc.families...)
			if tc.modify != nil {
				tc.modify(r)
			}
			got, err := serveStandard(s, r)
			if tc.want != outcomeForwarded {
				if status := statusOf(err); status != tc.want.status || got.calls != 0 {
					t.Fatalf("status %d (%v), %d forwarded; want %d (%s), none", status, err, got.calls, tc.want.status, tc.want.name)
				}
				return
			}
			if err != nil || got.calls != 1 || !bytes.Equal(got.body, body) {
				t.Fatalf("err %v, %d forwarded; want the body forwarded once", err, got.calls)
			}
			if got.placeholders["http.standard_webhooks.id"] != id || got.placeholders["http.standard_webhooks.event_type"] != "email.sent" {
				t.Fatalf("placeholders %v", got.placeholders)
			}
			if _, ok := got.header[http.CanonicalHeaderKey(tc.unread)]; tc.unread != "" && ok {
				t.Fatalf("%s, of a family not read, was passed on", tc.unread)
			}
		})
	}
}

// TestStandardWebhooksSecretForms: every form senders hand a secret out
// in verifies with the same key, and openai_webhook keeps taking
// OpenAI's form only.
func TestStandardWebhooksSecretForms(t *testing.T) {
	bare := strings.TrimPrefix(webhooktest.Secret, verifier.SecretPrefix)
	for _, tc := range []struct{ name, secret string }{
		{"whsec_", webhooktest.Secret},
		{"Supabase's v1,whsec_", "v1," + webhooktest.Secret},
		{"Brex's bare base64", bare},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("STANDARD_TEST_SECRET", tc.secret)
			s := provisionedStandard(t, &StandardWebhooks{Handler: Handler{Secrets: []string{"{env.STANDARD_TEST_SECRET}"}}})
			body := []byte(`{"type":"user.created"}`)
			got, err := serveStandard(s, familyRequest(t, "msg_"+randomHex(8), body, verifier.FamilyWebhook))
			if err != nil || got.calls != 1 {
				t.Fatalf("err %v, %d forwarded", err, got.calls)
			}
			if tc.secret == webhooktest.Secret {
				return
			}
			ctx, cancel := configContext(t)
			defer cancel()
			err = (&Handler{Secrets: []string{"{env.STANDARD_TEST_SECRET}"}}).Provision(ctx)
			if err == nil || !strings.Contains(err.Error(), "secrets[0]") || strings.Contains(err.Error(), bare) {
				t.Fatalf("openai_webhook with %s: %v; want an error naming secrets[0], without the secret", tc.name, err)
			}
		})
	}
}

// ed25519Pair is a v1a signer's key pair in the forms a config holds.
type ed25519Pair struct {
	priv   ed25519.PrivateKey
	public string // whpk_...
}

func newEd25519Pair(t testing.TB) ed25519Pair {
	t.Helper()
	signing, public, err := verifier.GenerateKeyPair(nil)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := verifier.ParseSigningKey(signing)
	if err != nil {
		t.Fatal(err)
	}
	return ed25519Pair{priv, public}
}

// v1aRequest is a delivery of body signed now with the signature entries
// that sign returns for its id and timestamp.
func v1aRequest(t *testing.T, id string, body []byte, sign func(id, ts string) []string) *http.Request {
	t.Helper()
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	r := httptest.NewRequest(http.MethodPost, "/webhook", bytes.NewReader(body))
	r.Header.Set("webhook-id", id)
	r.Header.Set("webhook-timestamp", ts)
	r.Header.Set("webhook-signature", strings.Join(sign(id, ts), " "))
	return r
}

// TestStandardWebhooksPublicKeys: v1a entries verify with the public key
// of the private key that made them and no other; an entry matches only
// a key of its own version; the v1a entries a request may carry are
// bounded before any cryptography, and the verifications run are counted.
func TestStandardWebhooksPublicKeys(t *testing.T) {
	sender, other, stranger := newEd25519Pair(t), newEd25519Pair(t), newEd25519Pair(t)
	t.Setenv("STANDARD_TEST_PUBLIC_KEY", sender.public)
	t.Setenv("STANDARD_TEST_OTHER_KEY", other.public)
	body := []byte(`{"type":"agent.completed"}`)
	key, err := verifier.ParseSecret(webhooktest.Secret)
	if err != nil {
		t.Fatal(err)
	}
	v1a := func(priv ed25519.PrivateKey) func(id, ts string) string {
		return func(id, ts string) string {
			sig, err := verifier.SignV1a(priv, id, ts, body)
			if err != nil {
				t.Fatal(err)
			}
			return sig
		}
	}
	v1 := func(id, ts string) string {
		sig, err := verifier.Sign(key, id, ts, body)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
	bogus := v1a(stranger.priv) // well-formed, and checked in full
	entries := func(fs ...func(id, ts string) string) func(id, ts string) []string {
		return func(id, ts string) []string {
			var out []string
			for _, f := range fs {
				out = append(out, f(id, ts))
			}
			return out
		}
	}
	for _, tc := range []struct {
		name       string
		secrets    []string
		publicKeys []string
		sign       func(id, ts string) []string
		want       outcome
		wantKey    string // the verified series' secret label
		wantEd     int    // ed25519 verifications counted
	}{
		{name: "v1a, its public key", publicKeys: []string{"{env.STANDARD_TEST_PUBLIC_KEY}"},
			sign: entries(v1a(sender.priv)), want: outcomeForwarded, wantKey: "0", wantEd: 1},
		{name: "v1a, rotated: the last public key, tried first", publicKeys: []string{"{env.STANDARD_TEST_OTHER_KEY}", "{env.STANDARD_TEST_PUBLIC_KEY}"},
			sign: entries(v1a(sender.priv)), want: outcomeForwarded, wantKey: "1", wantEd: 1},
		{name: "v1a, rotated: the first public key", publicKeys: []string{"{env.STANDARD_TEST_PUBLIC_KEY}", "{env.STANDARD_TEST_OTHER_KEY}"},
			sign: entries(v1a(sender.priv)), want: outcomeForwarded, wantKey: "0", wantEd: 2},
		{name: "v1a, another public key", publicKeys: []string{"{env.STANDARD_TEST_OTHER_KEY}"},
			sign: entries(v1a(sender.priv)), want: outcomeBadSignature, wantEd: 1},
		{name: "v1a, secrets only", secrets: []string{testSecret},
			sign: entries(v1a(sender.priv)), want: outcomeBadSignature},
		{name: "v1 and v1a, secrets only", secrets: []string{testSecret},
			sign: entries(v1, v1a(sender.priv)), want: outcomeForwarded, wantKey: "0"},
		{name: "v1 and v1a, public key only", publicKeys: []string{"{env.STANDARD_TEST_PUBLIC_KEY}"},
			sign: entries(v1, v1a(sender.priv)), want: outcomeForwarded, wantKey: "0", wantEd: 1},
		{name: "v1 and v1a, both: the secret's index first", secrets: []string{testSecret}, publicKeys: []string{"{env.STANDARD_TEST_PUBLIC_KEY}"},
			sign: entries(v1a(sender.priv), v1), want: outcomeForwarded, wantKey: "0"},
		{name: "v1a, both: the public key's index after the secrets", secrets: []string{testSecret}, publicKeys: []string{"{env.STANDARD_TEST_PUBLIC_KEY}"},
			sign: entries(v1a(sender.priv)), want: outcomeForwarded, wantKey: "1", wantEd: 1},
		{name: "v1 only, public key only", publicKeys: []string{"{env.STANDARD_TEST_PUBLIC_KEY}"},
			sign: entries(v1), want: outcomeBadSignature},
		{name: "4 bogus v1a, 2 public keys: 8 verifications", publicKeys: []string{"{env.STANDARD_TEST_OTHER_KEY}", "{env.STANDARD_TEST_PUBLIC_KEY}"},
			sign: entries(bogus, bogus, bogus, bogus), want: outcomeBadSignature, wantEd: 8},
		{name: "5 v1a entries, the last genuine: refused unread", publicKeys: []string{"{env.STANDARD_TEST_PUBLIC_KEY}"},
			sign: entries(bogus, bogus, bogus, bogus, v1a(sender.priv)), want: outcomeMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := provisionedStandard(t, &StandardWebhooks{Handler: Handler{Secrets: tc.secrets}, PublicKeys: tc.publicKeys})
			ed := standardFace.metrics.ed25519.WithLabelValues("UNKNOWN")
			verified := standardFace.metrics.verified.WithLabelValues("UNKNOWN", tc.wantKey)
			before, verifiedBefore := testutil.ToFloat64(ed), testutil.ToFloat64(verified)
			got, err := serveStandard(s, v1aRequest(t, "msg_"+randomHex(8), body, tc.sign))
			if n := int(testutil.ToFloat64(ed) - before); n != tc.wantEd {
				t.Errorf("%d ed25519 verifications counted, want %d", n, tc.wantEd)
			}
			if tc.want != outcomeForwarded {
				if status := statusOf(err); status != tc.want.status || got.calls != 0 {
					t.Fatalf("status %d (%v), %d forwarded; want %d (%s), none", status, err, got.calls, tc.want.status, tc.want.name)
				}
				return
			}
			if err != nil || got.calls != 1 {
				t.Fatalf("err %v, %d forwarded", err, got.calls)
			}
			if n := testutil.ToFloat64(verified) - verifiedBefore; n != 1 {
				t.Errorf("%v counted as verified with key %s, want 1", n, tc.wantKey)
			}
		})
	}
}

// TestStandardWebhooksConfigErrors: a config mistake fails the load with
// an error that names the field and never shows a key.
func TestStandardWebhooksConfigErrors(t *testing.T) {
	// Not a public key: the base64 of 31 bytes.
	short := verifier.PublicKeyPrefix + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 31))
	t.Setenv("STANDARD_TEST_SHORT_KEY", short)
	t.Setenv("STANDARD_TEST_SIGNING_KEY", verifier.SigningKeyPrefix+base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 64)))
	for _, tc := range []struct {
		name    string
		s       StandardWebhooks
		wantErr string
	}{
		{"no key", StandardWebhooks{}, "secrets, public_keys: at least one secret or public key is required"},
		{"public key too short", StandardWebhooks{PublicKeys: []string{"{env.STANDARD_TEST_SHORT_KEY}"}}, "public_keys[0]: "},
		{"a signing key given as the public key", StandardWebhooks{PublicKeys: []string{"{env.STANDARD_TEST_SIGNING_KEY}"}}, "public_keys[0]: "},
		{"public key placeholder unset", StandardWebhooks{PublicKeys: []string{"{env.STANDARD_TEST_UNSET}"}}, "public_keys[0]: "},
		{"unknown headers", StandardWebhooks{Handler: Handler{Secrets: []string{testSecret}}, Headers: "stripe"}, `headers: "stripe" is not one of auto, webhook, svix`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := configContext(t)
			defer cancel()
			err := tc.s.Provision(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
			for _, key := range []string{short, os.Getenv("STANDARD_TEST_SIGNING_KEY")} {
				if strings.Contains(err.Error(), key[len(key)-12:]) {
					t.Fatalf("error shows a key: %v", err)
				}
			}
		})
	}
}

// TestStandardWebhooksSignWithSvix: sign_with re-signs under the names
// the delivery came in, so an app that reads svix-* verifies the
// gateway's signature, and adds no family the sender did not use.
func TestStandardWebhooksSignWithSvix(t *testing.T) {
	appSecret := verifier.SecretPrefix + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{5}, 32))
	t.Setenv("STANDARD_TEST_APP_SECRET", appSecret)
	body := []byte(`{"type":"email.delivered"}`)
	appKey, err := verifier.ParseSecret(appSecret)
	if err != nil {
		t.Fatal(err)
	}
	app, err := verifier.New(verifier.Config{Keys: [][]byte{appKey}, Tolerance: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		families []verifier.Family
	}{
		{"svix-*", []verifier.Family{verifier.FamilySvix}},
		{"both alike", []verifier.Family{verifier.FamilyWebhook, verifier.FamilySvix}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := provisionedStandard(t, &StandardWebhooks{Handler: Handler{Secrets: []string{testSecret}, SignWith: "{env.STANDARD_TEST_APP_SECRET}"}})
			got, err := serveStandard(s, familyRequest(t, "msg_"+randomHex(8), body, tc.families...))
			if err != nil || got.calls != 1 {
				t.Fatalf("err %v, %d forwarded", err, got.calls)
			}
			for _, f := range verifier.Families {
				n := f.Names()
				sent := slices.Contains(tc.families, f)
				if _, ok := got.header[http.CanonicalHeaderKey(n.Signature)]; ok != sent {
					t.Fatalf("%s passed on: %v, sent: %v", n.Signature, ok, sent)
				}
				if !sent {
					continue
				}
				h := verifier.Headers{ID: got.header.Get(n.ID), Timestamp: got.header.Get(n.Timestamp), Signature: got.header.Get(n.Signature)}
				if _, err := app.Verify(h, got.body); err != nil {
					t.Fatalf("the app cannot verify the %s headers with its secret: %v", f, err)
				}
			}
		})
	}
}

// FuzzSignatureHeaders checks how headers auto reads the two families
// against a model of it: the webhook-* headers whole if the request has
// any of them, else the svix-* ones, never a mix of the two, and a
// refusal when both are there and differ.
func FuzzSignatureHeaders(f *testing.F) {
	f.Add("wh_1", "1700000000", "v1,c2ln", "wh_1", "1700000000", "v1,c2ln", uint8(0b111111))
	f.Add("wh_1", "1700000000", "v1,c2ln", "msg_2", "1700000000", "v1,c2ln", uint8(0b001111))
	f.Add("", "", "", "msg_2", "1", "v1a,c2ln", uint8(0b111000))
	f.Fuzz(func(t *testing.T, webhookID, webhookTS, webhookSig, svixID, svixTS, svixSig string, present uint8) {
		values := []string{webhookID, webhookTS, webhookSig, svixID, svixTS, svixSig}
		names := []string{"Webhook-Id", "Webhook-Timestamp", "Webhook-Signature", "Svix-Id", "Svix-Timestamp", "Svix-Signature"}
		hdr := http.Header{}
		sent := make([]string, len(values))
		for i := range values {
			if present&(1<<i) != 0 {
				hdr[names[i]] = []string{values[i]}
				sent[i] = values[i]
			}
		}
		webhook := verifier.Headers{ID: sent[0], Timestamp: sent[1], Signature: sent[2]}
		svix := verifier.Headers{ID: sent[3], Timestamp: sent[4], Signature: sent[5]}
		hasWebhook, hasSvix := present&0b000111 != 0, present&0b111000 != 0

		got, family, err := signatureHeaders(hdr, headerFamilies["auto"])
		want, wantFamily := verifier.Headers{}, verifier.FamilyWebhook
		switch {
		case hasWebhook && hasSvix && webhook != svix:
			if !errors.Is(err, errFamiliesDiffer) {
				t.Fatalf("two families that differ: err %v, want errFamiliesDiffer", err)
			}
			return
		case hasWebhook:
			want = webhook
		case hasSvix:
			want, wantFamily = svix, verifier.FamilySvix
		}
		if err != nil || got != want || family.Family != wantFamily {
			t.Fatalf("got %+v from %v (err %v), want %+v from %v", got, family.Family, err, want, wantFamily)
		}
	})
}

// TestOpenAIWebhookPassesNoSvixHeaders: openai_webhook reads webhook-*
// only, so svix-* headers beside a genuine delivery were verified by
// nothing, and the app does not get them.
func TestOpenAIWebhookPassesNoSvixHeaders(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}})
	body := []byte(`{"type":"response.completed"}`)
	r := familyRequest(t, "msg_"+randomHex(8), body, verifier.FamilyWebhook)
	r.Header.Set("svix-id", "msg_forged")
	r.Header.Set("svix-signature", "v1,"+base64.StdEncoding.EncodeToString(make([]byte, 32)))
	got, err := serve(h, r)
	if err != nil || got.calls != 1 {
		t.Fatalf("err %v, %d forwarded", err, got.calls)
	}
	for _, name := range []string{"Svix-Id", "Svix-Signature"} {
		if v, ok := got.header[name]; ok {
			t.Errorf("the app got %s: %q", name, v)
		}
	}
}
