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
	family *headerFamily // the one hdr came in
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
	switch f := d.h.face; key {
	case f.id:
		return d.hdr.ID, true
	case f.timestamp:
		return d.hdr.Timestamp, true
	case f.eventType:
		typ, _ := d.event.fields()
		return typ, true
	case f.eventID:
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
		for p := range d.body.all {
			_, _ = sig.Write(p)
		}
		// In every family the request has: the app reads one of them,
		// and all carried the same values.
		signature := sig.String()
		for i := range d.h.families {
			if f := &d.h.families[i]; f == d.family || f.present(r.Header) {
				r.Header.Set(f.signature, signature)
			}
		}
	}
	// Unverified: the app might read them.
	for _, name := range d.h.unread {
		delete(r.Header, name)
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
		d.h.face.metrics.events.WithLabelValues(d.series.server, d.eventLabel).Inc()
	}
}
