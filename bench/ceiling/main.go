// Command ceiling is Caddy with one more handler, verify_only: the least
// any gateway that verifies a Standard Webhooks signature and forwards the
// verified bytes must do, and nothing else. bench/ceiling.sh serves it
// beside openai_webhook, and bench/ab.sh (with CEILING=1) beside the two
// revisions it compares, as the physical limit of the webhook/plain ratio
// on the machine: it reads the body into a reused
// buffer, computes one HMAC-SHA256 over id.timestamp.body with a reused
// hash, compares it with the header's v1 signatures in constant time,
// checks the timestamp's window, and hands the buffer to the next handler.
//
// It has none of what makes openai_webhook fit for production (no bound on
// time or memory for a hostile sender, no replay refusal, no metrics, no
// placeholders, no logs, the buffer reused as soon as the next handler
// returns), so its cost is a lower bound. It is a benchmark tool only:
//
//	go build -o caddy-ceiling ./bench/ceiling
//
// with, in a site, verify_only followed by reverse_proxy:
//
//	verify_only {env.OPENAI_WEBHOOK_SECRET}
//	reverse_proxy 127.0.0.1:PORT
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// openai_webhook too, so that one process can serve both and
	// compare them without the differences between processes.
	_ "github.com/webhookgate/caddy-openai-webhook"
	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
)

func init() {
	caddy.RegisterModule(VerifyOnly{})
	httpcaddyfile.RegisterHandlerDirective("verify_only", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("verify_only", httpcaddyfile.Before, "reverse_proxy")
}

func main() { caddycmd.Main() }

// maxBody bounds a body, as any gateway must; the benchmark's are at most
// 1 MiB.
const maxBody = 4 << 20

// VerifyOnly verifies a Standard Webhooks signature and nothing more.
type VerifyOnly struct {
	// The signing secret, whsec_ and base64; placeholders are expanded.
	Secret string `json:"secret,omitempty"`

	macs    *sync.Pool // of hash.Hash, HMAC-SHA256 keyed with the secret
	buffers *sync.Pool // of *[]byte
}

// CaddyModule returns the Caddy module information.
func (VerifyOnly) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.verify_only",
		New: func() caddy.Module { return new(VerifyOnly) },
	}
}

// Provision parses the secret.
func (v *VerifyOnly) Provision(caddy.Context) error {
	key, err := verifier.ParseSecret(caddy.NewReplacer().ReplaceAll(v.Secret, ""))
	if err != nil {
		return err
	}
	v.macs = &sync.Pool{New: func() any { return hmac.New(sha256.New, key) }}
	v.buffers = &sync.Pool{New: func() any { return new([]byte) }}
	return nil
}

var errUnverified = errors.New("signature not verified")

// ServeHTTP verifies the request and forwards the buffered body.
func (v *VerifyOnly) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	id := r.Header.Get("webhook-id")
	ts := r.Header.Get("webhook-timestamp")
	sent, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || id == "" {
		return caddyhttp.Error(http.StatusUnauthorized, errUnverified)
	}
	if age := time.Since(time.Unix(sent, 0)); age > 5*time.Minute || age < -5*time.Minute {
		return caddyhttp.Error(http.StatusUnauthorized, errUnverified)
	}
	if r.ContentLength < 0 || r.ContentLength > maxBody {
		return caddyhttp.Error(http.StatusRequestEntityTooLarge, errors.New("body too large or of unknown length"))
	}
	// The signed content, id.timestamp.body, in one reused buffer: one
	// write to the hash, no allocation.
	buf := v.buffers.Get().(*[]byte)
	defer v.buffers.Put(buf)
	size := len(id) + len(ts) + 2 + int(r.ContentLength)
	if cap(*buf) < size {
		*buf = make([]byte, 0, size)
	}
	signed := append(append(append(append((*buf)[:0], id...), '.'), ts...), '.')
	body := signed[len(signed):size]
	if _, err := io.ReadFull(r.Body, body); err != nil {
		return caddyhttp.Error(http.StatusBadRequest, err)
	}

	mac := v.macs.Get().(hash.Hash)
	defer v.macs.Put(mac)
	mac.Reset()
	mac.Write(signed[:size])
	var sum, given [sha256.Size]byte
	mac.Sum(sum[:0])
	verified := false
	for sig := range strings.FieldsSeq(r.Header.Get("webhook-signature")) {
		b64, ok := strings.CutPrefix(sig, "v1,")
		if !ok || base64.StdEncoding.DecodedLen(len(b64)) < sha256.Size {
			continue
		}
		n, err := base64.StdEncoding.Decode(given[:], []byte(b64))
		if err == nil && n == sha256.Size && hmac.Equal(sum[:], given[:]) {
			verified = true
		}
	}
	if !verified {
		return caddyhttp.Error(http.StatusUnauthorized, errUnverified)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return next.ServeHTTP(w, r)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	verify_only <secret>
func (v *VerifyOnly) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if !d.Args(&v.Secret) || d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	v := new(VerifyOnly)
	err := v.UnmarshalCaddyfile(h.Dispenser)
	return v, err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*VerifyOnly)(nil)
	_ caddyhttp.MiddlewareHandler = (*VerifyOnly)(nil)
	_ caddyfile.Unmarshaler       = (*VerifyOnly)(nil)
)
