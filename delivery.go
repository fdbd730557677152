package openaiwebhook

import (
	"io"
	"net/http"
	"strconv"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
)

// delivery is one request on its way through the handler, in one
// allocation: its body, held in pooled chunks until Caddy is done with the
// request; once verified, its signature headers and the series it counts
// in; what the placeholders read of its event; and its replay claim.
type delivery struct {
	body   bufferedBody
	reader bodyReader // the request's Body once verified; GetBody makes others
	hdr    verifier.Headers
	series *serverSeries
	event  event
	// eventLabel is its event type's value of the type label, once the
	// allow-list read it; "" without events.
	eventLabel string
	claim      claim
	h          *Handler // the handler it goes through
}

// placeholder resolves the handler's placeholders for Caddy's replacer:
// one provider for the four, and the event read from the body only when
// one of its two is used.
func (d *delivery) placeholder(key string) (any, bool) {
	switch key {
	case "http.openai_webhook.id":
		return d.hdr.ID, true
	case "http.openai_webhook.timestamp":
		return d.hdr.Timestamp, true
	case "http.openai_webhook.event_type":
		typ, _ := d.event.fields()
		return typ, true
	case "http.openai_webhook.event_id":
		_, id := d.event.fields()
		return id, true
	}
	return nil, false
}

// passOn returns r carrying the verified body, framed by an exact
// Content-Length and nothing else.
func (d *delivery) passOn(r *http.Request) *http.Request {
	d.reader = bodyReader{body: &d.body}
	r.Body = &d.reader
	r.GetBody = d.body.getBody
	r.ContentLength = d.body.size
	var digits [20]byte
	size := strconv.AppendInt(digits[:0], d.body.size, 10)
	if cl := r.Header["Content-Length"]; len(cl) != 1 || cl[0] != string(size) {
		// Chunked: the header is written only then, so that a delivery
		// that declared its length allocates nothing here.
		r.Header.Set("Content-Length", string(size))
	}
	if key := d.h.signKey; key != nil {
		// The headers were verified, so they sign.
		sig, _ := verifier.NewSignature(key, d.hdr.ID, d.hdr.Timestamp)
		d.body.writeTo(sig)
		r.Header.Set("Webhook-Signature", sig.String())
	}
	r.TransferEncoding = nil
	// Trailers are not signed: nothing unverified goes upstream.
	r.Trailer = nil
	// The body is already here: the app must not answer 100 Continue again.
	r.Header.Del("Expect")
	return r
}

// getBody returns a reader over the whole body, for a transport that sends
// it again.
func (b *bufferedBody) getBody() (io.ReadCloser, error) {
	return b.newReader(), nil
}

// passedOn counts a delivery that goes on to the next handler with outcome
// o; and its event type, when the handler has events.
func (d *delivery) passedOn(o outcome) {
	d.series.requests[o.name].Inc()
	if d.eventLabel != "" {
		eventsTotal.WithLabelValues(d.series.server, d.eventLabel).Inc()
	}
}
