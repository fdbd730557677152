package openaiwebhook

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		input   string
		want    Handler
		wantErr string
	}{
		{
			name:  "env placeholder argument",
			input: `openai_webhook {env.OPENAI_WEBHOOK_SECRET}`,
			want:  Handler{Secrets: []string{"{env.OPENAI_WEBHOOK_SECRET}"}},
		},
		{
			name: "block",
			input: `openai_webhook {
				secret {env.NEW}
				secret {file./run/secrets/old}
				tolerance 2m
				max_size 64KiB
			}`,
			want: Handler{Secrets: []string{"{env.NEW}", "{file./run/secrets/old}"}, Tolerance: caddy.Duration(2 * time.Minute), MaxSize: 64 << 10},
		},
		{
			name:  "argument and block",
			input: "openai_webhook {env.A} {\n secret {env.B}\n max_size 1MB\n}",
			want:  Handler{Secrets: []string{"{env.A}", "{env.B}"}, MaxSize: 1_000_000},
		},
		{
			name:  "replay options",
			input: "openai_webhook {env.A} {\n replay_window 1h\n replay_capacity 5000\n}",
			want:  Handler{Secrets: []string{"{env.A}"}, ReplayWindow: caddy.Duration(time.Hour), ReplayCapacity: 5000},
		},
		{
			name:  "replay off",
			input: "openai_webhook {env.A} {\n replay_window off\n}",
			want:  Handler{Secrets: []string{"{env.A}"}, ReplayWindow: -1},
		},
		{name: "bad replay_window", input: "openai_webhook {\n replay_window never\n}", wantErr: "replay_window"},
		{name: "zero replay_window", input: "openai_webhook {\n replay_window 0s\n}", wantErr: "replay_window"},
		{name: "bad replay_capacity", input: "openai_webhook {\n replay_capacity -3\n}", wantErr: "replay_capacity"},
		{name: "no secret is a provision error, not a parse error", input: `openai_webhook`, want: Handler{}},
		{name: "two arguments", input: `openai_webhook {env.A} {env.B}`, wantErr: "wrong argument count"},
		{name: "secret without value", input: "openai_webhook {\n secret\n}", wantErr: "wrong argument count"},
		{name: "secret with two values", input: "openai_webhook {\n secret a b\n}", wantErr: "wrong argument count"},
		{name: "bad tolerance", input: "openai_webhook {\n tolerance soon\n}", wantErr: "tolerance"},
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
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got.Secrets, ",") != strings.Join(tc.want.Secrets, ",") || got.Tolerance != tc.want.Tolerance || got.MaxSize != tc.want.MaxSize ||
				got.ReplayWindow != tc.want.ReplayWindow || got.ReplayCapacity != tc.want.ReplayCapacity {
				t.Fatalf("got %+v, want %+v", got, tc.want)
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
