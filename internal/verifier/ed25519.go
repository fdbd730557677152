package verifier

// The asymmetric ("v1a") half of Standard Webhooks: ed25519 signatures over
// "id.timestamp.body", public keys "whpk_<base64 of 32 bytes>" and secret
// (signing) keys "whsk_<base64>".
//
// The specification fixes the prefixes and the "v1a" identifier but not the
// bytes under whsk_: the Svix server, whose test produced the signature in
// the specification's example header, stores and accepts the 64-byte
// ed25519 private key (seed then public key), as do the JavaScript v1a pull
// request and Go's ed25519.PrivateKey; the Python and Go library pull
// requests take the 32-byte seed. ParseSigningKey takes both and
// FormatSigningKey writes the 64-byte form.

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"
	"sync"
)

// Prefixes of the asymmetric keys, as the specification spells them.
const (
	PublicKeyPrefix  = "whpk_"
	SigningKeyPrefix = "whsk_"
)

// maxPooledMessage bounds the buffers kept for ed25519 messages: the
// default max_size of 1 MiB, plus the longest "id.timestamp." prefix.
const maxPooledMessage = 1<<20 + 4<<10

// messageBufs holds the buffers into which "id.timestamp." and the body are
// copied for crypto/ed25519, which verifies one contiguous message.
var messageBufs = sync.Pool{New: func() any { return new([]byte) }}

// verifyEd25519 verifies the v1a entries against the public keys, the last
// key first, and returns the index among the public keys of the first that
// verifies (-1 if none) and the number of verifications run.
func (m *Message) verifyEd25519(body iter.Seq[[]byte]) (key, tried int, err error) {
	if body == nil {
		return -1, 0, fmt.Errorf("%w: v1a entries left unchecked, no body was given to check them against", ErrNoMatchingSignature)
	}
	bp := messageBufs.Get().(*[]byte)
	m.edNeed = m.prefixLen + int(m.size)
	if cap(*bp) < m.edNeed {
		*bp = make([]byte, 0, (m.edNeed+4095)&^4095)
	}
	m.edMsg = append((*bp)[:0], m.prefix[:m.prefixLen]...)
	m.edLong = false
	// m.appendBody was made with the Message: a closure made here would
	// escape through body, costing allocations per request.
	body(m.appendBody)
	key = -1
	if m.edLong || len(m.edMsg) != m.edNeed {
		err = fmt.Errorf("%w: the body given for the v1a entries is not the body written", ErrNoMatchingSignature)
	} else {
		tried, key = verifyEntries(m.v.pubs, m.esigs[:m.ne], m.edMsg)
	}
	if *bp = m.edMsg[:0]; cap(*bp) > maxPooledMessage {
		*bp = nil
	}
	messageBufs.Put(bp)
	m.edMsg = nil
	return key, tried, err
}

// appendBodyTo returns the function FinishBody's body yields to: it appends
// each slice to m.edMsg, stopping if the body outgrows what was written.
func appendBodyTo(m *Message) func([]byte) bool {
	return func(p []byte) bool {
		if len(p) > m.edNeed-len(m.edMsg) {
			m.edLong = true
			return false
		}
		m.edMsg = append(m.edMsg, p...)
		return true
	}
}

// verifyEntries verifies each signature against each key, the last key
// first, and returns the number of verifications run and the index of the
// first key that verified one, or -1.
func verifyEntries(pubs []ed25519.PublicKey, sigs [][ed25519.SignatureSize]byte, msg []byte) (tried, key int) {
	for k := len(pubs) - 1; k >= 0; k-- {
		for i := range sigs {
			tried++
			if ed25519.Verify(pubs[k], msg, sigs[i][:]) {
				return tried, k
			}
		}
	}
	return tried, -1
}

// groupOrder is ℓ = 2^252 + 27742317777372353535851937790883648493, the
// order of the ed25519 base point, little-endian.
var groupOrder = [32]byte{
	0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
}

// canonicalScalar reports whether s, 32 bytes little-endian, is below ℓ: the
// S half of every signature a signer makes is, and crypto/ed25519 (RFC 8032)
// refuses any other, so such an entry is malformed and refused before any
// hashing. Signatures are public: no constant time needed.
func canonicalScalar(s []byte) bool {
	for i := 31; i >= 0; i-- {
		switch {
		case s[i] < groupOrder[i]:
			return true
		case s[i] > groupOrder[i]:
			return false
		}
	}
	return false // equal to ℓ
}

// ParsePublicKey decodes a "whpk_<base64>" public key, 32 bytes in
// canonical padded standard base64. Errors say what is wrong without quoting
// the key.
func ParsePublicKey(key string) (ed25519.PublicKey, error) {
	if err := checkKeyText(key, "public key"); err != nil {
		return nil, err
	}
	encoded, ok := strings.CutPrefix(key, PublicKeyPrefix)
	if !ok {
		switch {
		case strings.HasPrefix(key, SigningKeyPrefix):
			return nil, fmt.Errorf("public key starts with %q: that is the sender's secret signing key, which never leaves it; give its %s public key", SigningKeyPrefix, PublicKeyPrefix)
		case strings.HasPrefix(key, SecretPrefix):
			return nil, fmt.Errorf("public key starts with %q: that is an HMAC secret, not an ed25519 public key", SecretPrefix)
		}
		return nil, fmt.Errorf("public key does not start with %q", PublicKeyPrefix)
	}
	raw, err := decodeKey(encoded)
	if err != nil {
		return nil, fmt.Errorf("public key after %s: %w", PublicKeyPrefix, err)
	}
	if len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key decodes to %d bytes, want %d", len(raw), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(raw), nil
}

// ParseSigningKey decodes a "whsk_<base64>" signing key: the 64-byte ed25519
// private key (seed, then public key) or its 32-byte seed, in canonical
// padded standard base64. Errors never quote the key.
func ParseSigningKey(key string) (ed25519.PrivateKey, error) {
	if err := checkKeyText(key, "signing key"); err != nil {
		return nil, err
	}
	encoded, ok := strings.CutPrefix(key, SigningKeyPrefix)
	if !ok {
		return nil, fmt.Errorf("signing key does not start with %q", SigningKeyPrefix)
	}
	raw, err := decodeKey(encoded)
	if err != nil {
		return nil, fmt.Errorf("signing key after %s: %w", SigningKeyPrefix, err)
	}
	switch len(raw) {
	case ed25519.SeedSize:
		return ed25519.NewKeyFromSeed(raw), nil
	case ed25519.PrivateKeySize:
		priv := ed25519.NewKeyFromSeed(raw[:ed25519.SeedSize])
		if !bytes.Equal(priv[ed25519.SeedSize:], raw[ed25519.SeedSize:]) {
			return nil, errors.New("signing key's last 32 bytes are not the public key of its first 32 (its seed)")
		}
		return priv, nil
	}
	return nil, fmt.Errorf("signing key decodes to %d bytes, want %d (a seed) or %d (seed and public key)", len(raw), ed25519.SeedSize, ed25519.PrivateKeySize)
}

// checkKeyText refuses an empty key and one with spaces around it.
func checkKeyText(key, what string) error {
	if key == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if strings.TrimSpace(key) != key {
		return fmt.Errorf("%s begins or ends with a space or a line break: give it without them", what)
	}
	return nil
}

// FormatPublicKey returns pub as "whpk_<base64>".
func FormatPublicKey(pub ed25519.PublicKey) string {
	return PublicKeyPrefix + base64.StdEncoding.EncodeToString(pub)
}

// FormatSigningKey returns priv as "whsk_<base64 of its 64 bytes>", the form
// the Svix server takes.
func FormatSigningKey(priv ed25519.PrivateKey) string {
	return SigningKeyPrefix + base64.StdEncoding.EncodeToString(priv)
}

// GenerateKeyPair makes a new ed25519 key pair with entropy from random (nil
// for the system's secure source) and returns it as "whsk_..." and
// "whpk_...".
func GenerateKeyPair(random io.Reader) (signingKey, publicKey string, err error) {
	pub, priv, err := ed25519.GenerateKey(random)
	if err != nil {
		return "", "", err
	}
	return FormatSigningKey(priv), FormatPublicKey(pub), nil
}

// SignV1a returns the signature entry "v1a,<base64>" of a delivery of body
// with id and timestamp under key, as a v1a sender writes it. It checks id
// and timestamp as the verifier would.
func SignV1a(key ed25519.PrivateKey, id, timestamp string, body []byte) (string, error) {
	if err := CheckID(id); err != nil {
		return "", err
	}
	if _, err := ParseTimestamp(timestamp); err != nil {
		return "", err
	}
	if len(key) != ed25519.PrivateKeySize {
		return "", fmt.Errorf("signing key is %d bytes, want %d", len(key), ed25519.PrivateKeySize)
	}
	msg := make([]byte, 0, len(id)+len(timestamp)+2+len(body))
	msg = append(append(append(append(append(msg, id...), '.'), timestamp...), '.'), body...)
	return asymmetricVersion + base64.StdEncoding.EncodeToString(ed25519.Sign(key, msg)), nil
}
