package redact

import (
	"net/url"
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"https://app.internal:8443/hooks/openai", "https://app.internal:8443/hooks/openai"},
		{"https://user:s3cret@app.internal/hooks", "https://user:xxxxx@app.internal/hooks"},
		{"https://s3cret@app.internal/hooks", "https://xxxxx@app.internal/hooks"},
		{"https://:s3cret@app.internal/hooks", "https://:xxxxx@app.internal/hooks"},
		{"https://app.internal/hooks?token=s3cret&x=1", "https://app.internal/hooks?xxxxx"},
		{"redis://u:s3cret@localhost:6379/notanumber", "redis://u:xxxxx@localhost:6379/notanumber"},
	} {
		u, err := url.Parse(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		got := URL(u)
		if got != tc.want {
			t.Errorf("URL(%s) = %s, want %s", tc.in, got, tc.want)
		}
		if strings.Contains(got, "s3cret") {
			t.Errorf("URL(%s) shows the secret", tc.in)
		}
		if u.String() != tc.in {
			t.Errorf("URL changed its argument to %s", u)
		}
	}
}
