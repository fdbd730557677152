package verifier

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
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
// one spelling. Errors never contain the secret.
func ParseSecret(secret string) ([]byte, error) {
	if secret == "" {
		return nil, errors.New("secret is empty")
	}
	encoded, ok := strings.CutPrefix(secret, SecretPrefix)
	if !ok {
		return nil, fmt.Errorf("secret does not start with %q", SecretPrefix)
	}
	key, err := strictBase64.DecodeString(encoded)
	// Strict decoding still skips CR and LF; re-encoding catches those too.
	if err != nil || base64.StdEncoding.EncodeToString(key) != encoded {
		return nil, errors.New("secret is not canonical base64 after the whsec_ prefix")
	}
	if len(key) < MinKeyLen || len(key) > MaxKeyLen {
		return nil, fmt.Errorf("secret decodes to %d bytes, want %d to %d", len(key), MinKeyLen, MaxKeyLen)
	}
	return key, nil
}

// Sign returns the webhook-signature entry, "v1,<base64>", for a delivery
// of body with id and timestamp under key: what a sender such as OpenAI
// puts in the header, for tools that send test deliveries. It checks id and
// timestamp as the verifier would.
func Sign(key []byte, id, timestamp string, body []byte) (string, error) {
	if err := CheckID(id); err != nil {
		return "", err
	}
	if _, err := ParseTimestamp(timestamp); err != nil {
		return "", err
	}
	if len(key) < MinKeyLen || len(key) > MaxKeyLen {
		return "", fmt.Errorf("key is %d bytes, want %d to %d", len(key), MinKeyLen, MaxKeyLen)
	}
	mac := hmac.New(sha256.New, key)
	_, _ = mac.Write([]byte(id + "." + timestamp + "."))
	_, _ = mac.Write(body)
	return signatureVersion + base64.StdEncoding.EncodeToString(mac.Sum(nil)), nil
}
