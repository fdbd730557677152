package webhookqueue

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestUnmarshalCaddyfile: the directive, as the JSON it becomes, and its
// errors, which never show a credential.
func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		input   string
		want    string
		wantErr string
	}{
		{
			name: "every option, file store",
			input: `webhook_queue {
				to https://app.internal:8443/hooks/openai
				name hooks
				store file /var/lib/caddy/hooks.queue
				sign_with {env.APP_WEBHOOK_SECRET}
				retry 5s 1m 1h
				timeout 20s
				workers 8
				max_pending 5000
				max_size 64KiB
				retention 24h
				id_header X-Delivery
				rate 50/s
				dead_letters {
					max_age 720h
					max_count 500
				}
				transport http {
					tls_server_name app.internal
				}
			}`,
			want: `{"to":"https://app.internal:8443/hooks/openai","name":"hooks","store":{"backend":"file","path":"/var/lib/caddy/hooks.queue"},` +
				`"sign_with":"{env.APP_WEBHOOK_SECRET}","retry":[5000000000,60000000000,3600000000000],"timeout":20000000000,"workers":8,` +
				`"max_pending":5000,"max_size":65536,"retention":86400000000000,"id_header":"X-Delivery",` +
				`"rate":50,"dead_letters":{"max_age":2592000000000000,"max_count":500},` +
				`"transport":{"protocol":"http","tls":{"server_name":"app.internal"}}}`,
		},
		{
			name: "redis store",
			input: `webhook_queue {
				to http://127.0.0.1:8000/hooks
				store redis {
					address    rediss://redis.internal:6380
					password   {env.REDIS_PASSWORD}
					db         1
					key_prefix hooks:queue:
					timeout    1s
				}
			}`,
			want: `{"to":"http://127.0.0.1:8000/hooks","store":{"address":"rediss://redis.internal:6380","backend":"redis","db":1,` +
				`"key_prefix":"hooks:queue:","password":"{env.REDIS_PASSWORD}","timeout":1000000000}}`,
		},
		{name: "default store", input: "webhook_queue {\n to http://127.0.0.1:8000\n}", want: `{"to":"http://127.0.0.1:8000"}`},
		{name: "rate per minute", input: "webhook_queue {\n to http://127.0.0.1:8000\n rate 30/m\n}", want: `{"to":"http://127.0.0.1:8000","rate":0.5}`},
		{name: "rate without a unit", input: "webhook_queue {\n rate 50\n}", wantErr: `rate: "50" is not a rate such as 50/s`},
		{name: "rate per hour", input: "webhook_queue {\n rate 50/h\n}", wantErr: `rate: "50/h" is not a rate such as 50/s (per s or m)`},
		{name: "rate zero", input: "webhook_queue {\n rate 0/s\n}", wantErr: `rate: "0/s" is not a rate`},
		{name: "rate negative", input: "webhook_queue {\n rate -5/s\n}", wantErr: `rate: "-5/s" is not a rate`},
		{name: "rate NaN", input: "webhook_queue {\n rate NaN/s\n}", wantErr: `rate: "NaN/s" is not a rate`},
		{name: "rate infinite", input: "webhook_queue {\n rate inf/s\n}", wantErr: `rate: "inf/s" is not a rate`},
		{name: "dead_letters, unknown option", input: "webhook_queue {\n dead_letters {\n max_size 5\n }\n}", wantErr: `unrecognized dead_letters option "max_size"`},
		{name: "dead_letters, bad max_age", input: "webhook_queue {\n dead_letters {\n max_age 5\n }\n}", wantErr: `dead_letters: max_age: "5" has no unit`},
		{name: "dead_letters, bad max_count", input: "webhook_queue {\n dead_letters {\n max_count 0\n }\n}", wantErr: `dead_letters: max_count: "0" is not a positive whole number`},
		{name: "an argument", input: "webhook_queue http://x {\n}", wantErr: "wrong argument count"},
		{name: "to without a value", input: "webhook_queue {\n to\n}", wantErr: "to: takes exactly one value"},
		{name: "sign_with twice", input: "webhook_queue {\n sign_with a\n sign_with b\n}", wantErr: "sign_with: given twice"},
		{name: "sign_with with two values", input: "webhook_queue {\n sign_with pw-one pw-two\n}", wantErr: "sign_with: takes exactly one value"},
		{name: "retry without a duration", input: "webhook_queue {\n retry\n}", wantErr: "retry: at least one"},
		{name: "retry not a duration", input: "webhook_queue {\n retry 5s soon\n}", wantErr: `retry: "soon"`},
		{name: "zero workers", input: "webhook_queue {\n workers 0\n}", wantErr: "workers"},
		{name: "max_size too large", input: "webhook_queue {\n max_size 2GiB\n}", wantErr: "max_size"},
		{name: "unknown option", input: "webhook_queue {\n deliver_to x\n}", wantErr: `unrecognized webhook_queue option "deliver_to"`},
		{name: "store without a name", input: "webhook_queue {\n store\n}", wantErr: "store: the name is missing; one of file, redis"},
		{name: "store twice", input: "webhook_queue {\n store file a\n store file b\n}", wantErr: "store: given twice"},
		{name: "unknown store", input: "webhook_queue {\n store fiel\n}", wantErr: `store: "fiel" is none of file, redis`},
		{name: "unknown transport", input: "webhook_queue {\n transport htp\n}", wantErr: `transport: "htp" is none of`},
		{name: "redis store, unknown option", input: "webhook_queue {\n store redis {\n stream x\n }\n}", wantErr: `unrecognized redis queue store option "stream"`},
		{name: "redis store, password with two values", input: "webhook_queue {\n store redis {\n password pw-q-one pw-q-two\n }\n}", wantErr: "password: takes exactly one value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "pw-") {
					t.Fatalf("error %v, want one containing %q and no credential", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.Marshal(&h)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}
