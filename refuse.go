package openaiwebhook

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
)

// refuse counts and logs a refusal and returns it for Caddy's error
// handling. Only the reason and the (already validated) id are logged:
// never a secret, a signature or any of the body.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, o outcome, reason error, id string) error {
	h.seriesOf(r).requests[o.name].Inc()
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set(h.face.errorKey, o.name)
	}
	if o == outcomeOverloaded {
		w.Header().Set("Retry-After", h.retryAfter)
	}
	settleBody(w, r, o)
	if ce := h.logger.Check(zap.DebugLevel, "webhook refused"); ce != nil {
		fields := []zap.Field{zap.Int("status", o.status), zap.String("outcome", o.name), zap.String("reason", reason.Error())}
		if id != "" {
			fields = append(fields, zap.String("webhook_id", id))
		}
		ce.Write(fields...)
	}
	return caddyhttp.Error(o.status, reason)
}

// Bounds on what is read of a refused request's body before the answer.
const (
	maxDiscard     = 16 << 20
	discardTime    = 2 * time.Second
	discardIdleFor = 500 * time.Millisecond
)

// settleBody makes sure an HTTP/1 sender that is still writing the body of
// a refused request reads the answer. If the server closed the connection
// with bytes of the body unread, the sender's kernel would get a reset and
// might drop the answer with it. Go's server already reads and discards up
// to 256 KiB of an unread body when the answer's header is written, and
// otherwise closes the connection after the answer, waiting 500 ms for the
// sender to read it; its read is bounded only by the server's read timeout.
// What settleBody adds is the range above that, up to maxDiscard bytes, and
// bounds on time: discardTime in all, discardIdleFor without a byte. A body
// that ends within those leaves the connection open; any other is closed
// after the answer. Nothing read is held. The reading comes before the
// answer, because Caddy writes it (handle_errors) once the handler has
// returned, when Go's server allows no read but its own.
//
// HTTP/2 and HTTP/3 end a refused stream on their own, without touching the
// connection.
func settleBody(w http.ResponseWriter, r *http.Request, o outcome) {
	if r.ProtoMajor != 1 || r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return
	}
	closeAfter := func() { w.Header().Set("Connection", "close") }
	switch {
	case o == outcomeBodyTimeout || o == outcomeUnreadableBody:
		closeAfter() // what is left of the stream cannot be trusted
		return
	case r.ContentLength > maxDiscard:
		closeAfter()
		return
	case httpguts.HeaderValuesContainsToken(r.Header["Expect"], "100-continue"):
		// Reading would invite the body the sender is waiting to send.
		closeAfter()
		return
	}
	rc := http.NewResponseController(w)
	start := time.Now()
	if rc.SetReadDeadline(start.Add(discardIdleFor)) != nil {
		closeAfter() // no bound on the time a read may take
		return
	}
	end := start.Add(discardTime)
	ended := discard(r.Body, maxDiscard, func() {
		deadline := time.Now().Add(discardIdleFor)
		if deadline.After(end) {
			deadline = end
		}
		_ = rc.SetReadDeadline(deadline)
	})
	_ = rc.SetReadDeadline(time.Time{})
	if !ended {
		closeAfter()
	}
}

// errBadFraming refuses a request that, though it may be signed, asks the
// gateway to pass more or less than one verified request upstream.
var errBadFraming = errors.New("request framing refused")

// checkFraming refuses requests whose framing would carry more or less than
// the verified bytes and headers to the app: a request asking to upgrade
// the connection (reverse_proxy would tunnel whatever the client sends after
// it, unverified, to an app that answers 101), a Connection header naming a
// signature header (Caddy would strip it as hop-by-hop before the app sees
// it), and a Content-Length given more than once (possible on HTTP/2 and
// HTTP/3; Go's HTTP/1 server refuses it itself). The signature headers are
// those of families.
func checkFraming(hdr http.Header, families []headerFamily) error {
	if len(hdr["Content-Length"]) > 1 {
		return fmt.Errorf("%w: Content-Length sent more than once", errBadFraming)
	}
	if _, ok := hdr["Upgrade"]; ok {
		return fmt.Errorf("%w: the request asks to upgrade the connection", errBadFraming)
	}
	connection := hdr["Connection"]
	if len(connection) == 0 {
		return nil // most deliveries: HTTP/2, or HTTP/1.1 keeping its connection by default
	}
	if httpguts.HeaderValuesContainsToken(connection, "upgrade") {
		return fmt.Errorf("%w: the request asks to upgrade the connection", errBadFraming)
	}
	for _, f := range families {
		n := f.Names()
		for _, name := range []string{n.ID, n.Timestamp, n.Signature} {
			if httpguts.HeaderValuesContainsToken(connection, name) {
				return fmt.Errorf("%w: the Connection header names %s, which would be removed before the app sees it", errBadFraming, name)
			}
		}
	}
	return nil
}
