// Package verifier checks Standard Webhooks signatures, the scheme OpenAI
// signs its webhooks with: HMAC-SHA256 over "id.timestamp.body" with a
// "whsec_" secret, sent as "v1,<base64>" entries in webhook-signature, and
// the specification's asymmetric variant: ed25519 over the same text with a
// "whpk_" public key, sent as "v1a,<base64>" entries. Svix senders use the
// same scheme under svix-* header names (see Family).
//
// It is stricter than the reference libraries (one canonical spelling of every
// header, no extra fields) and streams the body through the HMAC, so callers
// can refuse a request on its headers alone and never hold a body twice. It
// depends on nothing but the standard library.
//
// # Signature entries
//
// A signature header is 1 to MaxSignatures entries separated by single
// spaces, each "v1,<base64 of a 32-byte HMAC-SHA256>" or "v1a,<base64 of a
// 64-byte ed25519 signature>" in canonical, padded, standard base64, and at
// most MaxAsymmetricSignatures of them v1a. A v1 entry can match only an
// HMAC key (Config.Keys), a v1a entry only an ed25519 public key
// (Config.PublicKeys).
//
// Versions are strict. An entry of any other version ("v2,...", "V1,...",
// bare base64) refuses the whole header, even next to a valid entry: the
// specification defines v1 and v1a and nothing else, says nothing of senders
// adding versions, and a header this package cannot fully parse is not
// passed on as if it had been (the reference libraries skip such entries;
// see docs/verification.md). By default the same goes for a well-formed
// entry of a version no configured key can check (v1a entries when there is
// no public key, so an HMAC-only verifier refuses v1a as it always has);
// Config.SkipUnkeyed accepts such entries and leaves them unchecked, as the
// specification's mixed example header ("v1,... v1a,...") and a sender
// rotating from one kind of key to the other need.
//
// # Cost
//
// HMAC keys are checked by hashing the body once per key as it streams in,
// whatever the number of entries, with no allocation. An ed25519 check
// (pure Ed25519, as the specification and crypto/ed25519 define it) hashes
// the whole message once per v1a entry and public key and needs it in one
// slice: FinishBody copies "id.timestamp." and the body, which the caller
// hands it again, into a pooled buffer, only when the header has v1a entries,
// public keys are configured and no HMAC key matched, and releases the
// buffer before returning. One verification costs about 70 HMACs of a 1 KiB
// body and 3.7 of a 64 KiB one (54 and 140 µs on the benchmark machine), so
// at most MaxAsymmetricSignatures v1a entries are accepted (more refuse the
// header before any cryptography), and FinishBody reports how many
// verifications it ran. The costliest request without a valid signature is
// then MaxAsymmetricSignatures verifications per public key, against one HMAC
// per HMAC key before: with as many keys of either kind, 110 to 150 times as
// long at 1 KiB and about 15 times at 64 KiB (see BenchmarkWorstBogus).
package verifier

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"iter"
	"strings"
	"sync"
	"time"
)

// Header names, as Standard Webhooks spells them (FamilyWebhook).
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// Family is a set of names for the three signature headers. The scheme is
// the same in every family; the caller reads the headers it names and passes
// their values in Headers.
type Family uint8

const (
	// FamilyWebhook is the Standard Webhooks names: webhook-id,
	// webhook-timestamp, webhook-signature (OpenAI, Supabase, ...).
	FamilyWebhook Family = iota
	// FamilySvix is the names Svix sends by default: svix-id,
	// svix-timestamp, svix-signature (Resend, Clerk, ...).
	FamilySvix
)

// Families lists every Family, in the order of their values.
var Families = []Family{FamilyWebhook, FamilySvix}

// HeaderNames are the names of the three signature headers of a Family, in
// the lower case HTTP/2 sends.
type HeaderNames struct {
	ID        string
	Timestamp string
	Signature string
}

// Names returns the header names of f; FamilyWebhook's for an unknown f.
func (f Family) Names() HeaderNames {
	if f == FamilySvix {
		return HeaderNames{ID: "svix-id", Timestamp: "svix-timestamp", Signature: "svix-signature"}
	}
	return HeaderNames{ID: HeaderID, Timestamp: HeaderTimestamp, Signature: HeaderSignature}
}

// String returns "webhook" or "svix", the prefix of f's header names.
func (f Family) String() string {
	if f == FamilySvix {
		return "svix"
	}
	return "webhook"
}

// Limits on header values. Real ids are under 64 bytes and senders put one
// or two signatures in a header (two while rotating secrets; Svix signs with
// every key rotated out in the last 24 hours too).
const (
	MaxIDLen        = 256
	MaxTimestampLen = 19 // digits; longer would overflow int64
	// MaxSignatures bounds the entries of a header, of both versions.
	MaxSignatures = 16
	// MaxAsymmetricSignatures bounds the v1a entries among them: each is
	// verified against every public key, at about 50 HMACs' cost, so a
	// header with more is refused (ErrTooManySignatures) before any
	// cryptography.
	MaxAsymmetricSignatures = 4

	signatureVersion  = "v1,"
	asymmetricVersion = "v1a,"
	encodedMACLen     = 44 // base64 of a 32-byte HMAC-SHA256
	encodedEdSigLen   = 88 // base64 of a 64-byte ed25519 signature
	// The longest header of v1 entries alone, and of as many v1a entries
	// as allowed with v1 entries for the rest: longer ones are refused
	// before they are split.
	maxV1SignatureLen   = MaxSignatures*(len(signatureVersion)+encodedMACLen+1) - 1
	maxBothSignatureLen = maxV1SignatureLen + MaxAsymmetricSignatures*(len(asymmetricVersion)+encodedEdSigLen-len(signatureVersion)-encodedMACLen)
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
	// Keys are the decoded HMAC signing keys (see ParseSecret and
	// ParseHMACSecret); a v1 signature made with any of them is accepted.
	Keys [][]byte
	// PublicKeys are ed25519 public keys of 32 bytes (see ParsePublicKey); a
	// v1a signature made with the private key of any of them is accepted.
	// Keys and PublicKeys may both be given; at least one key is needed.
	PublicKeys [][]byte
	// SkipUnkeyed accepts well-formed entries of a version that no
	// configured key can check (v1a with no PublicKeys, v1 with no Keys)
	// and leaves them unchecked, instead of refusing the header. Entries
	// of unknown versions refuse the header either way.
	SkipUnkeyed bool
	// Tolerance is the freshness window in both directions, at least a second.
	Tolerance time.Duration
	// Now returns the current time; nil means time.Now. Tests inject a clock.
	Now func() time.Time
}

// Verifier checks deliveries against a fixed set of keys. It is safe for
// concurrent use.
type Verifier struct {
	keys             [][]byte
	pubs             []ed25519.PublicKey
	acceptV1         bool // v1 entries are parsed rather than refused
	acceptV1a        bool // likewise v1a
	maxSignatureLen  int
	versions         string // the versions accepted, for error texts
	toleranceSeconds int64
	now              func() time.Time
	messages         sync.Pool // *Message, with one keyed HMAC per key
}

// New returns a Verifier for cfg.
func New(cfg Config) (*Verifier, error) {
	if len(cfg.Keys) == 0 && len(cfg.PublicKeys) == 0 {
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
	for i, key := range cfg.PublicKeys {
		if len(key) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("public key %d is %d bytes, want %d", i, len(key), ed25519.PublicKeySize)
		}
		v.pubs = append(v.pubs, ed25519.PublicKey(append([]byte(nil), key...)))
	}
	v.acceptV1 = len(v.keys) > 0 || cfg.SkipUnkeyed
	v.acceptV1a = len(v.pubs) > 0 || cfg.SkipUnkeyed
	switch {
	case v.acceptV1 && v.acceptV1a:
		v.versions, v.maxSignatureLen = "v1 or v1a", maxBothSignatureLen
	case v.acceptV1a:
		v.versions, v.maxSignatureLen = "v1a", maxBothSignatureLen
	default:
		v.versions, v.maxSignatureLen = "v1", maxV1SignatureLen
	}
	v.messages.New = func() any {
		m := &Message{v: v, macs: make([]hash.Hash, len(v.keys))}
		m.appendBody = appendBodyTo(m)
		for i, key := range v.keys {
			m.macs[i] = hmac.New(sha256.New, key)
		}
		return m
	}
	return v, nil
}

// Message is one delivery being verified: its headers passed Begin and its
// body is written to it. Finish, FinishBody or Discard must be called
// exactly once.
type Message struct {
	v     *Verifier
	macs  []hash.Hash
	sigs  [MaxSignatures][sha256.Size]byte
	n     int // entries in sigs
	esigs [MaxAsymmetricSignatures][ed25519.SignatureSize]byte
	ne    int   // entries in esigs
	sent  int64 // webhook-timestamp
	size  int64 // body bytes written
	// Scratch space that would escape to the heap if it were on the stack,
	// since hash.Hash methods take it through an interface.
	prefix    [MaxIDLen + 1 + MaxTimestampLen + 1]byte
	prefixLen int
	sum       [sha256.Size]byte
	// The ed25519 message being gathered by FinishBody (see verifyEd25519).
	edMsg      []byte
	edNeed     int
	edLong     bool
	appendBody func([]byte) bool
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
	if err := v.parseSignatures(h.Signature, m); err != nil {
		m.Discard()
		return nil, err
	}
	// The headers were checked above, so the prefix fits.
	prefix := append(append(append(append(m.prefix[:0], h.ID...), '.'), h.Timestamp...), '.')
	m.prefixLen = len(prefix)
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
	m.size += int64(len(p))
	return len(p), nil
}

// KeyKind says which kind of key signed a delivery.
type KeyKind uint8

const (
	KindHMAC    KeyKind = iota // an HMAC key of Config.Keys, a v1 entry
	KindEd25519                // an ed25519 key of Config.PublicKeys, a v1a entry
)

// String returns "hmac" or "ed25519".
func (k KeyKind) String() string {
	if k == KindEd25519 {
		return "ed25519"
	}
	return "hmac"
}

// Result is what FinishBody found, whatever its verdict.
type Result struct {
	// Key is the index of the key that signed the delivery, counting
	// Config.Keys first and then Config.PublicKeys (public key i is
	// len(Config.Keys)+i); -1 when none did. If several did, it is the
	// last HMAC key that did, else the last public key.
	Key int
	// Kind is the kind of Key's key, KindHMAC when Key is -1.
	Kind KeyKind
	// Ed25519Verifications is the number of ed25519 verifications run: at
	// most MaxAsymmetricSignatures times len(Config.PublicKeys), 0 unless
	// the header had v1a entries, public keys are configured and no HMAC
	// key matched.
	Ed25519Verifications int
}

// NeedsBody reports whether FinishBody will need the body: the header has
// v1a entries and the verifier has public keys. When it is false, FinishBody
// never calls its argument and Finish gives the same verdict.
func (m *Message) NeedsBody() bool {
	return m.ne > 0 && len(m.v.pubs) > 0
}

// Finish is FinishBody(nil), returning only Result.Key: enough for a
// verifier without public keys. For one with public keys, call FinishBody
// with the body instead, or v1a entries cannot match.
func (m *Message) Finish() (key int, err error) {
	r, err := m.FinishBody(nil)
	return r.Key, err
}

// FinishBody reports whether any signature entry matches the body written so
// far under a key of its version, and whether the timestamp is still within
// the tolerance now that the body is complete: a body sent slowly must not
// stretch a delivery's freshness window. It releases the Message.
//
// v1 entries are compared with every HMAC key's MAC in constant time, with
// no early exit that would tell which key matched. Only if none matched (a
// branch that tells no more than the verdict does) and
// NeedsBody is true are the v1a entries verified against the public keys,
// over "id.timestamp." and the body, which body must yield again: the same
// bytes written with Write, in order, in slices of any size (the slices are
// only read, and not kept past the call). crypto/ed25519 needs the message in
// one slice, so it is copied into a pooled buffer for the verification and
// the buffer released before FinishBody returns. A body of another length
// than the one written refuses the delivery. A nil body, when NeedsBody is
// true, leaves the v1a entries unchecked and refuses unless an HMAC key
// matched.
//
// The Result says which key signed (Key is -1 if none did) and how many
// ed25519 verifications ran, on refusals too.
func (m *Message) FinishBody(body iter.Seq[[]byte]) (Result, error) {
	r := Result{Key: -1}
	for k, mac := range m.macs {
		sum := mac.Sum(m.sum[:0])
		match := 0
		for i := range m.n {
			match |= subtle.ConstantTimeCompare(sum, m.sigs[i][:])
		}
		r.Key = subtle.ConstantTimeSelect(match, k, r.Key)
	}
	var err error
	if r.Key < 0 && m.NeedsBody() {
		var k int
		k, r.Ed25519Verifications, err = m.verifyEd25519(body)
		if k >= 0 {
			r.Key, r.Kind = len(m.v.keys)+k, KindEd25519
		}
	}
	v, sent := m.v, m.sent
	m.Discard()
	if r.Key < 0 {
		r.Kind = KindHMAC
		if err == nil {
			err = ErrNoMatchingSignature
		}
		return r, err
	}
	if err := v.checkFreshness(sent); err != nil {
		r.Key, r.Kind = -1, KindHMAC
		return r, err
	}
	return r, nil
}

// Discard releases the Message without a verdict, e.g. when the body could
// not be read.
func (m *Message) Discard() {
	m.sigs = [MaxSignatures][sha256.Size]byte{}
	m.esigs = [MaxAsymmetricSignatures][ed25519.SignatureSize]byte{}
	m.n, m.ne, m.sent, m.size, m.prefixLen = 0, 0, 0, 0, 0
	m.v.messages.Put(m)
}

// Verify checks a whole delivery at once, v1a entries included, and returns
// VerifyResult's Key.
func (v *Verifier) Verify(h Headers, body []byte) (key int, err error) {
	r, err := v.VerifyResult(h, body)
	return r.Key, err
}

// VerifyResult checks a whole delivery at once, as FinishBody does, v1a
// entries included.
func (v *Verifier) VerifyResult(h Headers, body []byte) (Result, error) {
	m, err := v.Begin(h)
	if err != nil {
		return Result{Key: -1}, err
	}
	_, _ = m.Write(body)
	return m.FinishBody(func(yield func([]byte) bool) { yield(body) })
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

// parseSignatures decodes a signature header into m: 1 to MaxSignatures
// entries separated by single spaces, each "v1,<base64 of 32 bytes>" or
// "v1a,<base64 of a canonical 64-byte ed25519 signature>" of a version v
// accepts, at most MaxAsymmetricSignatures of them v1a. Any other entry
// refuses the whole header, so a malformed header never verifies.
func (v *Verifier) parseSignatures(header string, m *Message) error {
	if header == "" {
		return fmt.Errorf("%w: %s", ErrMissingHeader, HeaderSignature)
	}
	if len(header) > v.maxSignatureLen {
		return ErrTooManySignatures
	}
	m.n, m.ne = 0, 0
	for entry := range strings.SplitSeq(header, " ") {
		i := m.n + m.ne + 1 // the entry's position, for error texts
		if i > MaxSignatures {
			return ErrTooManySignatures
		}
		if encoded, ok := strings.CutPrefix(entry, signatureVersion); ok && v.acceptV1 {
			if len(encoded) != encodedMACLen {
				return fmt.Errorf("%w: entry %d is not a 32-byte signature", ErrInvalidSignature, i)
			}
			var src [encodedMACLen]byte
			copy(src[:], encoded)
			var mac [encodedMACLen / 4 * 3]byte // 33: Decode writes up to that much
			got, err := strictBase64.Decode(mac[:], src[:])
			if err != nil || got != sha256.Size {
				return fmt.Errorf("%w: entry %d is not canonical base64", ErrInvalidSignature, i)
			}
			copy(m.sigs[m.n][:], mac[:sha256.Size])
			m.n++
			continue
		}
		encoded, ok := strings.CutPrefix(entry, asymmetricVersion)
		if !ok || !v.acceptV1a {
			return fmt.Errorf("%w: entry %d is not a %s signature", ErrInvalidSignature, i, v.versions)
		}
		if m.ne == MaxAsymmetricSignatures {
			return fmt.Errorf("%w: more than %d v1a entries", ErrTooManySignatures, MaxAsymmetricSignatures)
		}
		if len(encoded) != encodedEdSigLen {
			return fmt.Errorf("%w: entry %d is not a 64-byte signature", ErrInvalidSignature, i)
		}
		var src [encodedEdSigLen]byte
		copy(src[:], encoded)
		var sig [encodedEdSigLen / 4 * 3]byte // 66: Decode writes up to that much
		got, err := strictBase64.Decode(sig[:], src[:])
		if err != nil || got != ed25519.SignatureSize {
			return fmt.Errorf("%w: entry %d is not canonical base64", ErrInvalidSignature, i)
		}
		if !canonicalScalar(sig[32:64]) {
			return fmt.Errorf("%w: entry %d is not a canonical ed25519 signature", ErrInvalidSignature, i)
		}
		copy(m.esigs[m.ne][:], sig[:ed25519.SignatureSize])
		m.ne++
	}
	return nil
}
