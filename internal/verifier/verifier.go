// Package verifier checks Standard Webhooks signatures, the scheme OpenAI
// signs its webhooks with: HMAC-SHA256 over "id.timestamp.body" with a
// "whsec_" secret, sent as "v1,<base64>" entries in webhook-signature.
//
// It is stricter than the reference libraries (one canonical spelling of every
// header, no extra fields) and streams the body through the HMAC, so callers
// can refuse a request on its headers alone and never hold a body twice. It
// depends on nothing but the standard library.
package verifier

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strings"
	"sync"
	"time"
)

// Header names, as Standard Webhooks spells them.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// Limits on header values. Real ids are under 64 bytes and senders put one
// or two signatures in a header (two while rotating secrets).
const (
	MaxIDLen         = 256
	MaxTimestampLen  = 19 // digits; longer would overflow int64
	MaxSignatures    = 16
	signatureVersion = "v1,"
	encodedMACLen    = 44 // base64 of a 32-byte HMAC-SHA256
	maxSignatureLen  = MaxSignatures*(len(signatureVersion)+encodedMACLen+1) - 1
)

// strictBase64 refuses non-zero padding bits, so each MAC has one spelling.
var strictBase64 = base64.StdEncoding.Strict()

// DefaultTolerance is how far a timestamp may be from now, either way.
const DefaultTolerance = 5 * time.Minute

// Refusal reasons. Every error from this package wraps exactly one of them,
// and no error text contains a secret, a signature or any of the body.
var (
	ErrMissingHeader       = errors.New("missing or empty header")
	ErrInvalidID           = errors.New("invalid webhook-id")
	ErrInvalidTimestamp    = errors.New("invalid webhook-timestamp")
	ErrTimestampTooOld     = errors.New("webhook-timestamp is too old")
	ErrTimestampTooNew     = errors.New("webhook-timestamp is too far in the future")
	ErrInvalidSignature    = errors.New("malformed webhook-signature")
	ErrTooManySignatures   = errors.New("too many webhook-signature entries")
	ErrNoMatchingSignature = errors.New("no webhook-signature entry matches")
)

// Headers holds the three signature header values of one delivery.
type Headers struct {
	ID        string
	Timestamp string
	Signature string
}

// Config configures a Verifier.
type Config struct {
	// Keys are the decoded signing keys (see ParseSecret); a signature made
	// with any of them is accepted.
	Keys [][]byte
	// Tolerance is the freshness window in both directions, at least a second.
	Tolerance time.Duration
	// Now returns the current time; nil means time.Now. Tests inject a clock.
	Now func() time.Time
}

// Verifier checks deliveries against a fixed set of keys. It is safe for
// concurrent use.
type Verifier struct {
	keys             [][]byte
	toleranceSeconds int64
	now              func() time.Time
	messages         sync.Pool // *Message, with one keyed HMAC per key
}

// New returns a Verifier for cfg.
func New(cfg Config) (*Verifier, error) {
	if len(cfg.Keys) == 0 {
		return nil, errors.New("no signing key")
	}
	if cfg.Tolerance < time.Second {
		return nil, fmt.Errorf("tolerance %s is shorter than one second", cfg.Tolerance)
	}
	v := &Verifier{
		toleranceSeconds: int64(cfg.Tolerance / time.Second),
		now:              cfg.Now,
	}
	if v.now == nil {
		v.now = time.Now
	}
	for i, key := range cfg.Keys {
		if len(key) < MinKeyLen || len(key) > MaxKeyLen {
			return nil, fmt.Errorf("key %d is %d bytes, want %d to %d", i, len(key), MinKeyLen, MaxKeyLen)
		}
		v.keys = append(v.keys, append([]byte(nil), key...))
	}
	v.messages.New = func() any {
		m := &Message{v: v, macs: make([]hash.Hash, len(v.keys))}
		for i, key := range v.keys {
			m.macs[i] = hmac.New(sha256.New, key)
		}
		return m
	}
	return v, nil
}

// Message is one delivery being verified: its headers passed Begin and its
// body is written to it. Finish or Discard must be called exactly once.
type Message struct {
	v    *Verifier
	macs []hash.Hash
	sigs [MaxSignatures][sha256.Size]byte
	n    int   // entries in sigs
	sent int64 // webhook-timestamp
	// Scratch space that would escape to the heap if it were on the stack,
	// since hash.Hash methods take it through an interface.
	prefix [MaxIDLen + 1 + MaxTimestampLen + 1]byte
	sum    [sha256.Size]byte
}

// Begin checks the headers and the timestamp's freshness, the checks that
// need no body, and returns a Message ready to hash the body.
func (v *Verifier) Begin(h Headers) (*Message, error) {
	if err := CheckID(h.ID); err != nil {
		return nil, err
	}
	sent, err := v.checkTimestamp(h.Timestamp)
	if err != nil {
		return nil, err
	}
	m := v.messages.Get().(*Message)
	m.sent = sent
	n, err := parseSignatures(h.Signature, &m.sigs)
	if err != nil {
		v.messages.Put(m)
		return nil, err
	}
	m.n = n
	// The headers were checked above, so the prefix fits.
	prefix := append(append(append(append(m.prefix[:0], h.ID...), '.'), h.Timestamp...), '.')
	for _, mac := range m.macs {
		mac.Reset()
		_, _ = mac.Write(prefix) // hash.Hash writes never fail
	}
	return m, nil
}

// Write hashes the next part of the body. It never fails.
func (m *Message) Write(p []byte) (int, error) {
	for _, mac := range m.macs {
		_, _ = mac.Write(p)
	}
	return len(p), nil
}

// Finish reports whether any signature entry matches the body written so far
// under any key, comparing in constant time, and whether the timestamp is
// still within the tolerance now that the body is complete: a body sent
// slowly must not stretch a delivery's freshness window. For a valid
// delivery it returns the index of the key that signed it (the last, if
// several did), so that a rotation can be followed; -1 otherwise. It
// releases the Message.
func (m *Message) Finish() (key int, err error) {
	key = -1
	for k, mac := range m.macs {
		sum := mac.Sum(m.sum[:0])
		match := 0
		for i := range m.n {
			match |= subtle.ConstantTimeCompare(sum, m.sigs[i][:])
		}
		key = subtle.ConstantTimeSelect(match, k, key)
	}
	v, sent := m.v, m.sent
	m.Discard()
	if key < 0 {
		return -1, ErrNoMatchingSignature
	}
	if err := v.checkFreshness(sent); err != nil {
		return -1, err
	}
	return key, nil
}

// Discard releases the Message without a verdict, e.g. when the body could
// not be read.
func (m *Message) Discard() {
	m.sigs = [MaxSignatures][sha256.Size]byte{}
	m.n, m.sent = 0, 0
	m.v.messages.Put(m)
}

// Verify checks a whole delivery at once, as Finish does.
func (v *Verifier) Verify(h Headers, body []byte) (key int, err error) {
	m, err := v.Begin(h)
	if err != nil {
		return -1, err
	}
	_, _ = m.Write(body)
	return m.Finish()
}

// CheckID reports whether id is a usable webhook-id: 1 to MaxIDLen visible
// ASCII characters without '.', which would make "id.timestamp.body"
// ambiguous.
func CheckID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: %s", ErrMissingHeader, HeaderID)
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidID, MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c < '!' || c > '~' || c == '.' {
			return fmt.Errorf("%w: byte %d is not a visible ASCII character other than '.'", ErrInvalidID, i)
		}
	}
	return nil
}

// ParseTimestamp parses a webhook-timestamp: Unix seconds as 1 to 19 ASCII
// digits without a leading zero, so the signed text has one spelling and the
// value always fits an int64.
func ParseTimestamp(ts string) (int64, error) {
	if ts == "" {
		return 0, fmt.Errorf("%w: %s", ErrMissingHeader, HeaderTimestamp)
	}
	if len(ts) > MaxTimestampLen {
		return 0, fmt.Errorf("%w: more than %d digits", ErrInvalidTimestamp, MaxTimestampLen)
	}
	if len(ts) > 1 && ts[0] == '0' {
		return 0, fmt.Errorf("%w: leading zero", ErrInvalidTimestamp)
	}
	var n int64
	for i := 0; i < len(ts); i++ {
		c := ts[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%w: not decimal digits", ErrInvalidTimestamp)
		}
		d := int64(c - '0')
		if n > (1<<63-1-d)/10 {
			return 0, fmt.Errorf("%w: out of range", ErrInvalidTimestamp)
		}
		n = n*10 + d
	}
	return n, nil
}

// CheckTimestamp reports whether ts is a well-formed webhook-timestamp
// within the tolerance of the current time.
func (v *Verifier) CheckTimestamp(ts string) error {
	_, err := v.checkTimestamp(ts)
	return err
}

func (v *Verifier) checkTimestamp(ts string) (int64, error) {
	sent, err := ParseTimestamp(ts)
	if err != nil {
		return 0, err
	}
	return sent, v.checkFreshness(sent)
}

// checkFreshness reports whether sent is within the tolerance of now, in
// whole seconds as the reference libraries judge it.
func (v *Verifier) checkFreshness(sent int64) error {
	now := v.now().Unix()
	// Unsigned differences are exact for any two int64s, whatever the clock says.
	if sent < now && uint64(now)-uint64(sent) > uint64(v.toleranceSeconds) {
		return ErrTimestampTooOld
	}
	if sent > now && uint64(sent)-uint64(now) > uint64(v.toleranceSeconds) {
		return ErrTimestampTooNew
	}
	return nil
}

// parseSignatures decodes a webhook-signature header: 1 to MaxSignatures
// entries of "v1,<base64 of 32 bytes>" separated by single spaces. Any other
// entry refuses the whole header, so a malformed header never verifies.
func parseSignatures(header string, out *[MaxSignatures][sha256.Size]byte) (int, error) {
	if header == "" {
		return 0, fmt.Errorf("%w: %s", ErrMissingHeader, HeaderSignature)
	}
	if len(header) > maxSignatureLen {
		return 0, ErrTooManySignatures
	}
	n := 0
	for entry := range strings.SplitSeq(header, " ") {
		if n == MaxSignatures { // unreachable past the length check; keeps out's bounds local
			return 0, ErrTooManySignatures
		}
		encoded, ok := strings.CutPrefix(entry, signatureVersion)
		if !ok {
			return 0, fmt.Errorf("%w: entry %d is not a v1 signature", ErrInvalidSignature, n+1)
		}
		if len(encoded) != encodedMACLen {
			return 0, fmt.Errorf("%w: entry %d is not a 32-byte signature", ErrInvalidSignature, n+1)
		}
		var src [encodedMACLen]byte
		copy(src[:], encoded)
		var mac [sha256.Size + 1]byte // room for one byte too many
		got, err := strictBase64.Decode(mac[:], src[:])
		if err != nil || got != sha256.Size {
			return 0, fmt.Errorf("%w: entry %d is not canonical base64", ErrInvalidSignature, n+1)
		}
		copy(out[n][:], mac[:sha256.Size])
		n++
	}
	return n, nil
}
