package openaiwebhook

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
)

// TestUnmarshalCaddyfile: the directive, as the JSON it becomes (every
// field, so that a new one cannot go unchecked), and its errors.
func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		input   string
		want    string // the handler's JSON
		wantErr string
	}{
		{
			name:  "env placeholder argument",
			input: `openai_webhook {env.OPENAI_WEBHOOK_SECRET}`,
			want:  `{"secrets":["{env.OPENAI_WEBHOOK_SECRET}"]}`,
		},
		{
			name: "block",
			input: `openai_webhook {
				secret {env.NEW}
				secret {file./run/secrets/old}
				tolerance 2m
				max_size 64KiB
			}`,
			want: `{"secrets":["{env.NEW}","{file./run/secrets/old}"],"tolerance":120000000000,"max_size":65536}`,
		},
		{
			name:  "argument and block",
			input: "openai_webhook {env.A} {\n secret {env.B}\n max_size 1MB\n}",
			want:  `{"secrets":["{env.A}","{env.B}"],"max_size":1000000}`,
		},
		{
			name:  "replay options",
			input: "openai_webhook {env.A} {\n replay_window 1h\n replay_store memory {\n capacity 5000\n }\n}",
			want:  `{"secrets":["{env.A}"],"replay_window":3600000000000,"replay_store":{"backend":"memory","capacity":5000}}`,
		},
		{
			name:  "sign_with",
			input: "openai_webhook {env.A} {\n sign_with {env.APP_WEBHOOK_SECRET}\n}",
			want:  `{"secrets":["{env.A}"],"sign_with":"{env.APP_WEBHOOK_SECRET}"}`,
		},
		{name: "sign_with twice", input: "openai_webhook {env.A} {\n sign_with {env.A}\n sign_with {env.B}\n}", wantErr: "sign_with: given twice"},
		{
			name:  "replay off",
			input: "openai_webhook {env.A} {\n replay_window off\n}",
			want:  `{"secrets":["{env.A}"],"replay_window":-1}`,
		},
		{name: "bad replay_window", input: "openai_webhook {\n replay_window never\n}", wantErr: "replay_window"},
		{
			name:  "body options",
			input: "openai_webhook {env.A} {\n body_timeout 3s\n max_unverified 16MiB\n}",
			want:  `{"secrets":["{env.A}"],"body_timeout":3000000000,"max_unverified":16777216}`,
		},
		{
			name:  "memory store",
			input: "openai_webhook {env.A} {\n replay_store memory {\n in_flight_ttl 2m\n }\n}",
			want:  `{"secrets":["{env.A}"],"replay_store":{"backend":"memory","in_flight_ttl":120000000000}}`,
		},
		{
			name: "redis store",
			input: `openai_webhook {env.A} {
				replay_store redis {
					address    rediss://redis.internal:6380
					username   {env.REDIS_USERNAME}
					password   {env.REDIS_PASSWORD}
					db         2
					key_prefix hooks:
					tls
					tls_ca     /etc/caddy/redis-ca.pem
					tls_server_name redis.internal
					timeout    250ms
					on_error   forward
					in_flight_ttl 90s
				}
			}`,
			want: `{"secrets":["{env.A}"],"replay_store":{"address":"rediss://redis.internal:6380","backend":"redis","db":2,` +
				`"in_flight_ttl":90000000000,"key_prefix":"hooks:","on_error":"forward","password":"{env.REDIS_PASSWORD}","timeout":250000000,` +
				`"tls":true,"tls_ca":"/etc/caddy/redis-ca.pem","tls_server_name":"redis.internal","username":"{env.REDIS_USERNAME}"}}`,
		},
		{
			name:  "events",
			input: "openai_webhook {env.A} {\n events response.completed batch.*\n events fine_tuning.job.*\n}",
			want:  `{"secrets":["{env.A}"],"events":["response.completed","batch.*","fine_tuning.job.*"]}`,
		},
		{name: "events without a pattern", input: "openai_webhook {\n events\n}", wantErr: "events: at least one"},
		{name: "events, * in the middle", input: "openai_webhook {\n events batch.*.completed\n}", wantErr: `events: "batch.*.completed"`},
		{name: "events, * alone", input: "openai_webhook {\n events *\n}", wantErr: `events: "*"`},
		{name: "events, empty segment", input: "openai_webhook {\n events batch..completed\n}", wantErr: "empty segment"},
		{name: "store without a name", input: "openai_webhook {\n replay_store\n}", wantErr: "replay_store: the name is missing; one of memory, redis"},
		{name: "unknown store", input: "openai_webhook {\n replay_store memroy\n}", wantErr: `replay_store: "memroy" is none of memory, redis`},
		{name: "store twice", input: "openai_webhook {\n replay_store memory\n replay_store memory\n}", wantErr: "given twice"},
		{name: "redis on_error", input: "openai_webhook {\n replay_store redis {\n on_error retry\n }\n}", wantErr: "on_error"},
		{name: "redis unknown option", input: "openai_webhook {\n replay_store redis {\n cluster\n }\n}", wantErr: `unrecognized redis replay store option "cluster"`},
		{name: "redis address with two values", input: "openai_webhook {\n replay_store redis {\n address redis://:pw-url-c93@r:6379 extra\n }\n}", wantErr: "address: takes exactly one value"},
		{name: "redis password with two values", input: "openai_webhook {\n replay_store redis {\n password pw-one-a81 pw-two-b72\n }\n}", wantErr: "password: takes exactly one value"},
		{name: "body_timeout without a unit", input: "openai_webhook {\n body_timeout 10\n}", wantErr: `body_timeout: "10" has no unit: write it as 5s`},
		{name: "tolerance without a unit", input: "openai_webhook {\n tolerance 5\n}", wantErr: `tolerance: "5" has no unit`},
		{name: "negative body_timeout", input: "openai_webhook {\n body_timeout -1s\n}", wantErr: "body_timeout"},
		{name: "max_unverified zero", input: "openai_webhook {\n max_unverified 0\n}", wantErr: "max_unverified"},
		{name: "max_unverified without a value", input: "openai_webhook {\n max_unverified\n}", wantErr: "max_unverified: takes exactly one value"},
		{name: "zero replay_window", input: "openai_webhook {\n replay_window 0s\n}", wantErr: "replay_window"},
		{name: "bad capacity", input: "openai_webhook {\n replay_store memory {\n capacity -3\n }\n}", wantErr: `capacity: "-3" is not a positive whole number`},
		{name: "no secret is a provision error, not a parse error", input: `openai_webhook`, want: `{}`},
		{name: "two arguments", input: `openai_webhook {env.A} {env.B}`, wantErr: "at most one secret argument"},
		{name: "secret without value", input: "openai_webhook {\n secret\n}", wantErr: "secret: takes exactly one value"},
		{name: "secret with two values", input: "openai_webhook {\n secret a b\n}", wantErr: "secret: takes exactly one value"},
		{name: "bad tolerance", input: "openai_webhook {\n tolerance soon\n}", wantErr: `tolerance: "soon" is not a positive duration (such as 5s`},
		{name: "bad max_size", input: "openai_webhook {\n max_size lots\n}", wantErr: "max_size"},
		{name: "zero max_size", input: "openai_webhook {\n max_size 0\n}", wantErr: "max_size"},
		{name: "huge max_size", input: "openai_webhook {\n max_size 2GiB\n}", wantErr: "max_size"},
		{name: "unknown subdirective without value", input: "openai_webhook {\n bogus\n}", wantErr: `unrecognized openai_webhook subdirective "bogus"`},
		{name: "unknown subdirective", input: "openai_webhook {\n secrets x\n}", wantErr: `unrecognized openai_webhook subdirective "secrets"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got Handler
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				// The inputs' credentials all start with "pw-".
				if strings.Contains(err.Error(), "pw-") {
					t.Fatalf("error shows a credential: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			raw, err := json.Marshal(&got)
			if err != nil {
				t.Fatal(err)
			}
			if gotJSON, want := canonicalJSON(t, raw), canonicalJSON(t, []byte(tc.want)); gotJSON != want {
				t.Fatalf("got  %s\nwant %s", gotJSON, want)
			}
		})
	}
}

// TestAdapt: the directive sorts before reverse_proxy without an order
// option, and the env placeholder stays a placeholder in the JSON.
func TestAdapt(t *testing.T) {
	caddytest.AssertAdapt(t, `
	:8080 {
		reverse_proxy 127.0.0.1:8000
		openai_webhook /hooks/* {env.OPENAI_WEBHOOK_SECRET} {
			tolerance 1m
			max_size 64KiB
		}
	}`, "caddyfile", `{
	"apps": {
		"http": {
			"servers": {
				"srv0": {
					"listen": [
						":8080"
					],
					"routes": [
						{
							"match": [
								{
									"path": [
										"/hooks/*"
									]
								}
							],
							"handle": [
								{
									"handler": "openai_webhook",
									"max_size": 65536,
									"secrets": [
										"{env.OPENAI_WEBHOOK_SECRET}"
									],
									"tolerance": 60000000000
								}
							]
						},
						{
							"handle": [
								{
									"handler": "reverse_proxy",
									"upstreams": [
										{
											"dial": "127.0.0.1:8000"
										}
									]
								}
							]
						}
					]
				}
			}
		}
	}
}`)
}

// FuzzUnmarshalCaddyfile parses arbitrary openai_webhook blocks: it never
// panics, what it accepts is within the ranges the parser promises, and no
// error shows a value given to secret or to a store's password.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"{env.A}",
		"{\n secret whsec_c2VjcmV0LXZhbHVlLW9mLWZ1enotc2VlZA==\n tolerance 2m\n}",
		"{\n secret whsec_c2VjcmV0LXZhbHVlLW9mLWZ1enotc2VlZA== extra\n}",
		"{\n secret {file./run/s}\n max_size 64KiB\n body_timeout 3s\n max_unverified 1MiB\n replay_window off\n}",
		"{\n replay_window 1d\n replay_store memory {\n capacity -1\n }\n}",
		"{\n max_size 18446744073709551616\n}",
		"{\n secret whsec_c2VjcmV0LXZhbHVlLW9mLWZ1enotc2VlZA==\n bogus {\n }\n}",
		"whsec_c2VjcmV0LXZhbHVlLW9mLWZ1enotc2VlZA== whsec_b3RoZXItc2VjcmV0LXZhbHVlLWZ1enotc2VlZA==",
		"{\n whsec_c2VjcmV0LXZhbHVlLW9mLWZ1enotc2VlZA==\n}",
		"a b c {\n}\n",
		"{\n replay_store redis {\n address 127.0.0.1:6379\n password pw-fuzz-seed-1 pw-fuzz-seed-2\n db x\n }\n}",
		"{\n replay_store memory {\n in_flight_ttl 0s\n }\n}",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, block string) {
		tokens, err := caddyfile.Tokenize([]byte("openai_webhook "+block), "Caddyfile")
		if err != nil {
			return // not a Caddyfile; the adapter refuses it before any directive sees it
		}
		var h Handler
		err = h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
		if err != nil {
			// Secrets are the directive's arguments, the values of secret
			// lines, and anything spelt like one.
			var secrets []string
			for i := 1; i < len(tokens) && tokens[i].Line == tokens[0].Line && tokens[i].Text != "{"; i++ {
				secrets = append(secrets, tokens[i].Text)
			}
			for i, tok := range tokens {
				after := i > 0 && tokens[i-1].Line == tok.Line && (tokens[i-1].Text == "secret" || tokens[i-1].Text == "password")
				if after || strings.HasPrefix(tok.Text, verifier.SecretPrefix) {
					secrets = append(secrets, tok.Text)
				}
			}
			for _, secret := range secrets {
				if len(secret) >= 8 && strings.Contains(err.Error(), secret) {
					t.Fatalf("error %q shows the secret %q", err, secret)
				}
			}
			return
		}
		if h.Tolerance < 0 || h.BodyTimeout < 0 || h.MaxSize < 0 || h.MaxSize > MaxMaxSize || h.MaxUnverified < 0 ||
			h.ReplayWindow < -1 {
			t.Fatalf("accepted out-of-range values: %+v", h)
		}
	})
}

// canonicalJSON returns raw with its object keys sorted, to compare JSON
// whatever the order of its fields.
func canonicalJSON(t *testing.T, raw []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestUnmarshalStandardCaddyfile: standard_webhooks takes openai_webhook's
// syntax and its own subdirectives, as the JSON it becomes.
func TestUnmarshalStandardCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		input   string
		want    string // the handler's JSON
		wantErr string
	}{
		{
			name:  "secret argument",
			input: `standard_webhooks {env.SECRET}`,
			want:  `{"secrets":["{env.SECRET}"]}`,
		},
		{
			name: "every subdirective of its own, and one of openai_webhook's",
			input: `standard_webhooks {
				headers svix
				public_key {env.NEW_KEY}
				public_key {env.OLD_KEY}
				tolerance 2m
			}`,
			want: `{"headers":"svix","public_keys":["{env.NEW_KEY}","{env.OLD_KEY}"],"tolerance":120000000000}`,
		},
		{name: "headers twice", input: "standard_webhooks {\n headers svix\n headers auto\n}", wantErr: "headers: given twice"},
		{name: "unknown headers", input: "standard_webhooks {\n headers stripe\n}", wantErr: `headers: "stripe" is not one of auto, webhook, svix`},
		{name: "public_key without value", input: "standard_webhooks {\n public_key\n}", wantErr: "public_key: takes exactly one value"},
		{name: "a secret where a subdirective goes", input: "standard_webhooks {\n whsec_pw-c2VjcmV0\n}",
			wantErr: "unrecognized standard_webhooks subdirective that looks like a secret or key"},
		{name: "a bare base64 secret where a subdirective goes", input: "standard_webhooks {\n YSBiYXJlIGJhc2U2NCBzZWNyZXQgb2YgMzIgYnl0ZXM=\n}",
			wantErr: "unrecognized standard_webhooks subdirective that looks like a secret or key"},
		{name: "two arguments", input: `standard_webhooks {env.A} {env.B}`, wantErr: "standard_webhooks takes at most one secret argument"},
		{name: "unknown subdirective", input: "standard_webhooks {\n svix\n}", wantErr: `unrecognized standard_webhooks subdirective "svix"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got StandardWebhooks
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "pw-") {
					t.Fatalf("error shows a credential: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			raw, err := json.Marshal(&got)
			if err != nil {
				t.Fatal(err)
			}
			if gotJSON, want := canonicalJSON(t, raw), canonicalJSON(t, []byte(tc.want)); gotJSON != want {
				t.Fatalf("got  %s\nwant %s", gotJSON, want)
			}
		})
	}
}
