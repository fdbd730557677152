package openaiwebhook

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"slices"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
)

// headerFamily is a verifier.Family with its header names as Go's
// server keys them.
type headerFamily struct {
	verifier.Family
	id, timestamp, signature string
}

// newHeaderFamilies returns the header families fs, in the order given,
// which is the order they are looked for in.
func newHeaderFamilies(fs ...verifier.Family) []headerFamily {
	families := make([]headerFamily, 0, len(fs))
	for _, f := range fs {
		n := f.Names()
		families = append(families, headerFamily{f, textproto.CanonicalMIMEHeaderKey(n.ID),
			textproto.CanonicalMIMEHeaderKey(n.Timestamp), textproto.CanonicalMIMEHeaderKey(n.Signature)})
	}
	return families
}

// unreadHeaders returns the names of the signature headers of every
// family but families: a request may carry them, and nothing verified
// them.
func unreadHeaders(families []headerFamily) []string {
	var names []string
	for _, f := range newHeaderFamilies(verifier.Families...) {
		if !slices.ContainsFunc(families, func(read headerFamily) bool { return read.Family == f.Family }) {
			names = append(names, f.id, f.timestamp, f.signature)
		}
	}
	return names
}

// present reports whether hdr has any of the family's headers.
func (f *headerFamily) present(hdr http.Header) bool {
	return len(hdr[f.id]) > 0 || len(hdr[f.timestamp]) > 0 || len(hdr[f.signature]) > 0
}

var (
	// errRepeatedHeader refuses a header sent more than once: which copy a
	// verifier or the upstream reads would otherwise be ambiguous.
	errRepeatedHeader = errors.New("signature header sent more than once")
	// errFamiliesDiffer refuses a request signed under two names: the
	// gateway would verify one and the app might read the other.
	errFamiliesDiffer = fmt.Errorf("%w: webhook-* and svix-* signature headers with different values", errBadFraming)
)

// signatureHeaders returns the three signature headers of the first of
// families the request has any header of, and that family; the first
// family, with nothing in it, when it has none (the verifier then
// refuses). A later family present with other values is errFamiliesDiffer.
func signatureHeaders(hdr http.Header, families []headerFamily) (verifier.Headers, *headerFamily, error) {
	var found verifier.Headers
	var family *headerFamily
	for i := range families {
		f := &families[i]
		if !f.present(hdr) {
			continue
		}
		h, err := f.headers(hdr)
		if err != nil {
			return h, f, err
		}
		if family == nil {
			found, family = h, f
		} else if h != found {
			return found, family, errFamiliesDiffer
		}
	}
	if family == nil {
		family = &families[0]
	}
	return found, family, nil
}

// headers returns the family's three headers.
func (f *headerFamily) headers(hdr http.Header) (verifier.Headers, error) {
	var h verifier.Headers
	var err error
	if h.ID, err = singleHeader(hdr, f.id); err != nil {
		return h, err
	}
	if h.Timestamp, err = singleHeader(hdr, f.timestamp); err != nil {
		return h, err
	}
	h.Signature, err = singleHeader(hdr, f.signature)
	return h, err
}

// singleHeader returns the value of a header that may appear at most once;
// an absent header is "", which the verifier refuses.
func singleHeader(hdr http.Header, canonicalName string) (string, error) {
	values := hdr[canonicalName]
	if len(values) > 1 {
		return "", fmt.Errorf("%w: %s", errRepeatedHeader, canonicalName)
	}
	if len(values) == 0 {
		return "", nil
	}
	return values[0], nil
}
