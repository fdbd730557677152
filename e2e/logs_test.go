package e2e_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// TestLogHygiene runs Caddy with debug logging, written to files, sends
// every kind of refusal and some genuine deliveries, and reads every log
// line Caddy wrote (files and stderr). The handler's own lines give each
// refusal's reason and never a secret, a signature or body bytes; no line
// holds the secret or body bytes. Caddy's own loggers do log request
// headers, webhook-signature included: unfiltered, in the access log (if
// enabled), and at DEBUG for every refusal and every forward, and at ERROR
// for a failed forward. The config the docs suggest (a filter on the
// site's access log) hides it from the access log only; a filter on the
// default log too hides it everywhere.
func TestLogHygiene(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)

	const filter = `format filter {
			request>headers>Webhook-Signature delete
		}`
	for _, tc := range []struct {
		name                  string
		siteFilter, allFilter bool
		// where signatures show up, by logger (a prefix of its name)
		signaturesIn []string
	}{
		{"unfiltered", false, false, []string{"http.log.access", "http.log.error", "http.handlers.reverse_proxy"}},
		{"access log filtered, as the docs suggest", true, false, []string{"http.log.error", "http.handlers.reverse_proxy"}},
		{"every log filtered", true, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			defaultLog, accessLog := filepath.Join(dir, "caddy.log"), filepath.Join(dir, "access.log")
			global := "debug\n\tlog {\n\t\toutput file " + defaultLog + "\n"
			site := "log {\n\t\toutput file " + accessLog + "\n"
			if tc.allFilter {
				global += "\t\t" + filter + "\n"
			}
			if tc.siteFilter {
				site += "\t\t" + filter + "\n"
			}
			gw := startCaddy(t, e, caddyConfig{
				UpstreamPort: up.port,
				Global:       global + "\t}",
				Site:         site + "\t}",
				Proxy: `transport http {
			response_header_timeout 6s
		}`,
			})
			l := &logProbe{gw: gw, up: up, marker: fmt.Sprintf("BODY-MARKER-%x", time.Now().UnixNano())}
			l.sendAll(t)
			gw.stop(t) // every line is written

			var all []logLine
			for _, f := range []string{defaultLog, accessLog} {
				all = append(all, readLog(t, f)...)
			}
			all = append(all, parseLog(t, "stderr", []byte(gw.output.String()))...)
			l.check(t, all, tc.signaturesIn)
		})
	}
}

// logProbe sends requests whose secrets, signatures and bodies must not be
// logged, and remembers them.
type logProbe struct {
	gw     *caddyServer
	up     *upstream
	marker string   // in every body sent, and in every id
	n      int      // bodies made
	sigs   []string // every MAC sent, base64
}

// id returns the webhook-id name of this probe: the suffix keeps probes
// that share an upstream from seeing each other's records.
func (l *logProbe) id(name string) string {
	return name + "_" + strings.TrimPrefix(l.marker, "BODY-MARKER-")
}

// body returns a new body with the marker.
func (l *logProbe) body() []byte {
	l.n++
	return fmt.Appendf(nil, `{"object":"event","data":{"secret_note":"%s-%d"}}`, l.marker, l.n)
}

// sig returns a signature header for id, ts and body under secret and
// remembers its MAC.
func (l *logProbe) sig(secret, id, ts string, body []byte) string {
	m := mac(secret, id, ts, body)
	l.sigs = append(l.sigs, m)
	return "v1," + m
}

// expect sends req and checks its status.
func (l *logProbe) expect(t *testing.T, req *http.Request, status int) {
	t.Helper()
	resp, answer := send(t, req)
	if resp.StatusCode != status {
		t.Fatalf("%s: status %d, want %d (%.200q)", req.Header.Get("webhook-id"), resp.StatusCode, status, answer)
	}
}

// sendAll sends every refusal kind and some genuine deliveries.
func (l *logProbe) sendAll(t *testing.T) {
	gw := l.gw
	now := time.Now()
	ts := unix(now)
	req := func(id, ts, sig string, body []byte) *http.Request {
		return gw.request(t.Context(), id, ts, sig, body)
	}
	signed := func(id, ts string, body []byte) *http.Request {
		return req(id, ts, l.sig(webhooktest.Secret, id, ts, body), body)
	}
	// raw sends header lines edited from a signed delivery's.
	raw := func(id string, status int, edit func(hdr []string) []string, end rawEnd) {
		body := l.body()
		hdr := edit(lines(id, ts, l.sig(webhooktest.Secret, id, ts, body), body))
		resp := sendRaw(t, gw.addr, rawMessage(post, gw.addr, hdr, body), end)
		if resp.StatusCode != status {
			t.Fatalf("%s: status %d, want %d", id, resp.StatusCode, status)
		}
	}

	// Genuine deliveries, and a repeat of one.
	delivered := l.body()
	deliver(t, signed(l.id("msg_log_ok_1"), ts, delivered)).checkBody(t, delivered)
	b := l.body()
	deliver(t, sendChunked(signed(l.id("msg_log_ok_2"), ts, b), b)).checkBody(t, b)
	l.expect(t, signed(l.id("msg_log_ok_1"), ts, delivered), http.StatusOK) // duplicate

	// Missing, repeated and malformed headers.
	for _, name := range []string{"webhook-id", "webhook-timestamp", "webhook-signature"} {
		r := signed(l.id("msg_log_missing"), ts, l.body())
		r.Header.Del(name)
		l.expect(t, r, http.StatusUnauthorized)
	}
	raw(l.id("msg_log_repeated"), http.StatusUnauthorized, func(hdr []string) []string {
		return append(hdr, hdr[2]) // webhook-signature twice
	}, readAnswer)
	l.expect(t, signed(l.id("msg_log.malformed_id"), ts, l.body()), http.StatusUnauthorized)
	l.expect(t, signed(l.id("msg_log_malformed_ts"), "0"+ts, l.body()), http.StatusUnauthorized)
	body := l.body()
	l.expect(t, req(l.id("msg_log_malformed_sig"), ts, "v1a,"+strings.TrimPrefix(l.sig(webhooktest.Secret, l.id("msg_log_malformed_sig"), ts, body), "v1,"), body), http.StatusUnauthorized)
	body = l.body()
	many := strings.Repeat(zeroEntry+" ", 16) + l.sig(webhooktest.Secret, l.id("msg_log_many"), ts, body)
	l.expect(t, req(l.id("msg_log_many"), ts, many, body), http.StatusUnauthorized)

	// Stale either way, and signatures that do not match.
	l.expect(t, signed(l.id("msg_log_old"), strconv.FormatInt(now.Unix()-3600, 10), l.body()), http.StatusUnauthorized)
	l.expect(t, signed(l.id("msg_log_new"), strconv.FormatInt(now.Unix()+3600, 10), l.body()), http.StatusUnauthorized)
	body = l.body()
	l.expect(t, req(l.id("msg_log_tampered"), ts, l.sig(webhooktest.Secret, l.id("msg_log_tampered"), ts, body), l.body()), http.StatusUnauthorized)
	body = l.body()
	l.expect(t, req(l.id("msg_log_other_secret"), ts, l.sig(secretC, l.id("msg_log_other_secret"), ts, body), body), http.StatusUnauthorized)

	// Bodies too large, or cut short.
	big := append(l.body(), randomBytes(maxSize)...)
	l.expect(t, signed(l.id("msg_log_large"), ts, big), http.StatusRequestEntityTooLarge)
	l.expect(t, sendChunked(signed(l.id("msg_log_large_chunked"), ts, big), big), http.StatusRequestEntityTooLarge)
	raw(l.id("msg_log_truncated"), http.StatusBadRequest, func(hdr []string) []string {
		return replace(hdr, "Content-Length:", "Content-Length: 1000") // more than sent
	}, halfClose)

	// A delivery whose signature headers would not reach the app.
	framed := signed(l.id("msg_log_framing"), ts, l.body())
	framed.Header.Set("Connection", "webhook-signature")
	l.expect(t, framed, http.StatusBadRequest)

	// Wrong method.
	get := signed(l.id("msg_log_get"), ts, l.body())
	get.Method = http.MethodGet
	l.expect(t, get, http.StatusMethodNotAllowed)

	// An id in flight: 409. The held forward must outlast the time this
	// takes on a loaded machine, hence the proxy's 6s timeout.
	l.sigs = append(l.sigs, mac(webhooktest.Secret, l.id("msg_log_held"), ts, event(l.id("msg_log_held")))) // hold's
	release := hold(t, gw, l.up, l.id("msg_log_held"), now)
	l.expect(t, signed(l.id("msg_log_held"), ts, l.body()), http.StatusConflict)
	release()

	// A forward that fails: 504, logged at ERROR by Caddy.
	slow := signed(l.id("msg_log_slow"), ts, l.body())
	slow.Header.Set("X-Upstream-Delay", "7")
	l.expect(t, slow, http.StatusGatewayTimeout)
}

// refusals are the reasons the handler must have logged, by status, as
// its "webhook refused" lines give them (module.go, internal/verifier).
var refusals = []struct {
	status int
	reason string
}{
	{401, "missing or empty header: webhook-id"},
	{401, "missing or empty header: webhook-timestamp"},
	{401, "missing or empty header: webhook-signature"},
	{401, "signature header sent more than once: Webhook-Signature"},
	{401, "invalid webhook-id"},
	{401, "invalid webhook-timestamp: leading zero"},
	{401, "malformed webhook-signature"},
	{401, "too many webhook-signature entries"},
	{401, "webhook-timestamp is too old"},
	{401, "webhook-timestamp is too far in the future"},
	{401, "no webhook-signature entry matches"},
	{413, "body exceeds max_size"},
	{400, "reading body"},
	{400, "request framing refused: the Connection header names webhook-signature"},
	{405, "method not allowed"},
	{409, "a delivery with this webhook-id is being forwarded"},
}

// logLine is one line Caddy wrote.
type logLine struct {
	source string
	text   string
	fields map[string]any // nil if the line is not JSON
}

func (l logLine) logger() string {
	s, _ := l.fields["logger"].(string)
	return s
}

func readLog(t *testing.T, path string) []logLine {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parseLog(t, filepath.Base(path), raw)
}

func parseLog(t *testing.T, source string, raw []byte) []logLine {
	t.Helper()
	var out []logLine
	for line := range strings.Lines(string(raw)) {
		l := logLine{source: source, text: line}
		if json.Unmarshal([]byte(line), &l.fields) != nil {
			l.fields = nil
		}
		out = append(out, l)
	}
	return out
}

// secretForms are the spellings of the gateway's secret that must never be
// logged.
func secretForms(t *testing.T) []string {
	b64 := strings.TrimPrefix(webhooktest.Secret, "whsec_")
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	return []string{
		webhooktest.Secret,
		b64,
		base64.RawStdEncoding.EncodeToString(key),
		base64.URLEncoding.EncodeToString(key),
		base64.RawURLEncoding.EncodeToString(key),
		hex.EncodeToString(key),
		strings.ToUpper(hex.EncodeToString(key)),
	}
}

func (l *logProbe) check(t *testing.T, lines []logLine, signaturesIn []string) {
	t.Helper()
	secrets := secretForms(t)
	found := map[string]bool{} // refusals logged, "status reason"
	duplicates := 0
	var withSignature []string // loggers of lines with a signature
	var in []string            // and where they wrote them
	atError := 0               // lines at ERROR, which logs at the default level hold too
	for _, line := range lines {
		for _, s := range secrets {
			if strings.Contains(line.text, s) {
				t.Errorf("%s: a line holds the secret (as %.12s…): %.300s", line.source, s, line.text)
			}
		}
		if strings.Contains(line.text, l.marker) {
			t.Errorf("%s: a line holds body bytes: %.300s", line.source, line.text)
		}
		handler := line.logger() == "http.handlers.openai_webhook"
		if handler && line.fields["msg"] == "webhook refused" {
			status, _ := line.fields["status"].(float64)
			reason, _ := line.fields["reason"].(string)
			for _, r := range refusals {
				if int(status) == r.status && strings.HasPrefix(reason, r.reason) {
					found[fmt.Sprint(r.status, " ", r.reason)] = true
				}
			}
		}
		if handler && line.fields["msg"] == "duplicate delivery answered without forwarding" {
			duplicates++
		}
		if !l.hasSignature(line.text) {
			continue
		}
		if handler {
			t.Errorf("%s: the handler logged a signature: %.300s", line.source, line.text)
		}
		withSignature = append(withSignature, line.logger())
		if line.fields["level"] == "error" {
			atError++
		}
		if where := line.logger() + " (" + line.source + ")"; !slices.Contains(in, where) {
			in = append(in, where)
		}
		// Caddy logs it as a request header, and nowhere else.
		if l.hasSignature(withoutSignatureHeader(line)) {
			t.Errorf("%s: a signature outside request>headers>Webhook-Signature: %.300s", line.source, line.text)
		}
	}
	for _, r := range refusals {
		if !found[fmt.Sprint(r.status, " ", r.reason)] {
			t.Errorf("no %q line with status %d and reason %q", "webhook refused", r.status, r.reason)
		}
	}
	if duplicates != 1 {
		t.Errorf("%d duplicate lines, want 1", duplicates)
	}

	// Where Caddy's own loggers put signatures: exactly the expected ones.
	for _, want := range signaturesIn {
		if !slices.ContainsFunc(withSignature, func(logger string) bool { return strings.HasPrefix(logger, want) }) {
			t.Errorf("no %s line holds a signature; expected some", want)
		}
	}
	for _, logger := range withSignature {
		if !slices.ContainsFunc(signaturesIn, func(want string) bool { return strings.HasPrefix(logger, want) }) {
			t.Errorf("a %s line holds a signature", logger)
		}
	}
	// The failed forward (504) is logged at ERROR with the request's
	// headers: without debug too.
	if wantError := slices.Contains(signaturesIn, "http.log.error"); wantError != (atError > 0) {
		t.Errorf("%d ERROR lines hold a signature; want some: %v", atError, wantError)
	}
	t.Logf("%d lines; signatures in %d lines (%d at ERROR), from %v", len(lines), len(withSignature), atError, in)
}

// hasSignature reports whether text holds any MAC sent.
func (l *logProbe) hasSignature(text string) bool {
	return slices.ContainsFunc(l.sigs, func(m string) bool {
		// JSON escapes '+' and '/' as is; "\u002b" would be a surprise.
		return strings.Contains(text, m)
	})
}

// withoutSignatureHeader returns the line without the one field where
// Caddy logs webhook-signature, request>headers>Webhook-Signature.
func withoutSignatureHeader(line logLine) string {
	if line.fields == nil {
		return line.text
	}
	if req, ok := line.fields["request"].(map[string]any); ok {
		if h, ok := req["headers"].(map[string]any); ok {
			delete(h, "Webhook-Signature")
		}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(line.fields)
	return b.String()
}
