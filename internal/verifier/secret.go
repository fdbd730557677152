package verifier

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strings"
)

// SecretPrefix starts every Standard Webhooks signing secret.
const SecretPrefix = "whsec_"

// Key sizes accepted after base64 decoding. OpenAI and the Standard Webhooks
// libraries issue 24- to 32-byte keys; anything much shorter is a typo or a
// truncated paste, anything longer than an HMAC-SHA256 block is not a secret
// any signer issues.
const (
	MinKeyLen = 24
	MaxKeyLen = 64
)

// ParseSecret decodes a "whsec_<base64>" secret into its HMAC key. The base64
// must be canonical standard encoding with padding, so a secret has exactly
// one spelling. Errors say what is wrong with it (a space around it, missing
// padding, the URL-safe alphabet, ...) and never contain the secret.
func ParseSecret(secret string) ([]byte, error) {
	if secret == "" {
		return nil, errors.New("secret is empty")
	}
	if strings.TrimSpace(secret) != secret {
		return nil, errors.New("secret begins or ends with a space or a line break: give it without them")
	}
	encoded, ok := strings.CutPrefix(secret, SecretPrefix)
	if !ok {
		return nil, fmt.Errorf("secret does not start with %q", SecretPrefix)
	}
	key, err := decodeKey(encoded)
	if err != nil {
		return nil, fmt.Errorf("secret after %s: %w", SecretPrefix, err)
	}
	if len(key) < MinKeyLen || len(key) > MaxKeyLen {
		return nil, fmt.Errorf("secret decodes to %d bytes, want %d to %d", len(key), MinKeyLen, MaxKeyLen)
	}
	return key, nil
}

// SupabaseSecretPrefix starts the secrets Supabase hands out for its auth
// hooks: "v1,whsec_<base64>".
const SupabaseSecretPrefix = "v1," + SecretPrefix

// ParseHMACSecret decodes an HMAC secret in any of the forms Standard
// Webhooks senders hand out, each to the same key: "whsec_<base64>" (OpenAI,
// Svix and its users), "v1,whsec_<base64>" (Supabase auth hooks) and bare
// "<base64>" (Brex). The base64 must be canonical standard encoding with
// padding and decode to MinKeyLen to MaxKeyLen bytes. Anything else fails
// with an error naming the forms expected and saying what is wrong, never
// quoting the secret. ParseSecret takes the first form only.
func ParseHMACSecret(secret string) ([]byte, error) {
	if secret == "" {
		return nil, errors.New("secret is empty")
	}
	if strings.TrimSpace(secret) != secret {
		return nil, errors.New("secret begins or ends with a space or a line break: give it without them")
	}
	var (
		key []byte
		err error
	)
	switch {
	case strings.HasPrefix(secret, SupabaseSecretPrefix):
		if key, err = decodeKey(secret[len(SupabaseSecretPrefix):]); err != nil {
			return nil, fmt.Errorf("secret after %s: %w", SupabaseSecretPrefix, err)
		}
	case strings.HasPrefix(secret, SecretPrefix):
		if key, err = decodeKey(secret[len(SecretPrefix):]); err != nil {
			return nil, fmt.Errorf("secret after %s: %w", SecretPrefix, err)
		}
	case strings.HasPrefix(secret, PublicKeyPrefix):
		return nil, fmt.Errorf("secret starts with %q: that is an ed25519 public key, for v1a signatures, not an HMAC secret", PublicKeyPrefix)
	case strings.HasPrefix(secret, SigningKeyPrefix):
		return nil, fmt.Errorf("secret starts with %q: that is an ed25519 signing key, which stays with the sender; verify with its %s public key", SigningKeyPrefix, PublicKeyPrefix)
	case strings.HasPrefix(secret, "v1,"):
		return nil, fmt.Errorf("secret starts with \"v1,\" but not %q; %s", SupabaseSecretPrefix, secretForms)
	case unknownPrefix(secret) == ',':
		return nil, fmt.Errorf("secret starts with an unknown version (the text before its first ','); %s", secretForms)
	case unknownPrefix(secret) == '_':
		return nil, fmt.Errorf("secret starts with an unknown prefix (the text before its first '_'), or is in the URL-safe base64 alphabet; %s", secretForms)
	default:
		if key, err = decodeKey(secret); err != nil {
			return nil, fmt.Errorf("secret is not valid bare base64 (%s): %w", secretForms, err)
		}
	}
	if len(key) < MinKeyLen || len(key) > MaxKeyLen {
		return nil, fmt.Errorf("secret decodes to %d bytes, want %d to %d", len(key), MinKeyLen, MaxKeyLen)
	}
	return key, nil
}

// secretForms names the forms ParseHMACSecret takes, for its errors.
const secretForms = "want whsec_<base64>, v1,whsec_<base64> or bare <base64>, in standard base64"

// unknownPrefix returns the character that ends s's prefix, '_' or ',', if
// s starts like a prefixed secret (a word of 1 to 12 letters and digits,
// then that character) rather than like standard base64, which has
// neither; 0 otherwise.
func unknownPrefix(s string) byte {
	for i := 0; i < len(s) && i <= 12; i++ {
		switch c := s[i]; {
		case c == '_' || c == ',':
			if i == 0 {
				return 0
			}
			return c
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		default:
			return 0
		}
	}
	return 0
}

// ParseKey decodes one verification key of a Standard Webhooks handler: a
// "whpk_" ed25519 public key (KindEd25519, see ParsePublicKey) or an HMAC
// secret in any form ParseHMACSecret takes (KindHMAC). The key goes in
// Config.PublicKeys or Config.Keys by its kind.
func ParseKey(s string) (KeyKind, []byte, error) {
	if strings.HasPrefix(s, PublicKeyPrefix) {
		pub, err := ParsePublicKey(s)
		return KindEd25519, pub, err
	}
	key, err := ParseHMACSecret(s)
	return KindHMAC, key, err
}

// decodeKey decodes canonical, padded, standard base64, and says what is
// wrong with anything else without quoting it.
func decodeKey(encoded string) ([]byte, error) {
	if i := strings.IndexFunc(encoded, func(c rune) bool { return !isBase64(c) }); i >= 0 {
		switch c := encoded[i]; {
		case c == '-' || c == '_':
			return nil, errors.New("the base64 uses the URL-safe alphabet ('-' or '_'); want standard base64 ('+' and '/')")
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			return nil, fmt.Errorf("a space or a line break at character %d of the base64", i+1)
		default:
			return nil, fmt.Errorf("character %d of the base64 is not a base64 character", i+1)
		}
	}
	if len(encoded)%4 != 0 {
		if _, err := base64.RawStdEncoding.Strict().DecodeString(encoded); err == nil {
			return nil, fmt.Errorf("the base64 lacks its padding: it should end with %d '='", 4-len(encoded)%4)
		}
		return nil, errors.New("the base64 is cut short, or has characters too many (its length is not a multiple of 4)")
	}
	key, err := strictBase64.DecodeString(encoded)
	if err != nil {
		return nil, errors.New("not canonical base64 ('=' only at the end, unused bits zero)")
	}
	return key, nil
}

func isBase64(c rune) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '='
}

// Sign returns the webhook-signature entry, "v1,<base64>", for a delivery
// of body with id and timestamp under key: what a sender such as OpenAI
// puts in the header, for tools that send test deliveries and for a
// gateway that signs what it passes on. It checks id and timestamp as the
// verifier would.
func Sign(key []byte, id, timestamp string, body []byte) (string, error) {
	s, err := NewSignature(key, id, timestamp)
	if err != nil {
		return "", err
	}
	_, _ = s.Write(body)
	return s.String(), nil
}

// Signature is a v1 signature being made over a body written to it in
// parts, for a body held in pieces.
type Signature struct{ mac hash.Hash }

// NewSignature starts the signature of a delivery with id and timestamp
// under key; its body is to be written to it. It checks id and timestamp
// as the verifier would.
func NewSignature(key []byte, id, timestamp string) (*Signature, error) {
	if err := CheckID(id); err != nil {
		return nil, err
	}
	if _, err := ParseTimestamp(timestamp); err != nil {
		return nil, err
	}
	if len(key) < MinKeyLen || len(key) > MaxKeyLen {
		return nil, fmt.Errorf("key is %d bytes, want %d to %d", len(key), MinKeyLen, MaxKeyLen)
	}
	mac := hmac.New(sha256.New, key)
	_, _ = mac.Write([]byte(id + "." + timestamp + "."))
	return &Signature{mac: mac}, nil
}

// Write adds the next part of the body. It never fails.
func (s *Signature) Write(p []byte) (int, error) { return s.mac.Write(p) }

// String returns the webhook-signature entry for the body written so far.
func (s *Signature) String() string {
	return signatureVersion + base64.StdEncoding.EncodeToString(s.mac.Sum(nil))
}
