package openaiwebhook

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
)

// Environment variables the commands read keys from when no flag gives
// them: better than a flag, which stays in the shell's history.
const (
	secretEnv     = "OPENAI_WEBHOOK_SECRET"
	signingKeyEnv = "OPENAI_WEBHOOK_SIGNING_KEY"
)

// keyFlag is a flag that takes keys of one kind.
type keyFlag struct {
	name  string // the flag, without "--"
	what  string // the kind of key, for messages
	env   string // the variable read when the flag is not given; "" for none
	parse func(string) ([]byte, error)
	// sign signs a delivery with a key of the kind; nil for a kind that
	// only verifies.
	sign func(key []byte, id, timestamp string, body []byte) (string, error)
}

// The kinds of keys the commands take.
var (
	// secretKeys are HMAC secrets, which sign and verify v1 entries.
	// OpenAI's form only, as openai_webhook takes.
	secretKeys = &keyFlag{
		name: "secret", what: "secret", env: secretEnv,
		parse: verifier.ParseSecret,
		sign:  verifier.Sign,
	}
	// signingKeys are ed25519 signing keys, which sign v1a entries.
	signingKeys = &keyFlag{
		name: "key", what: "signing key", env: signingKeyEnv,
		parse: func(s string) ([]byte, error) { return verifier.ParseSigningKey(s) },
		sign: func(key []byte, id, timestamp string, body []byte) (string, error) {
			return verifier.SignV1a(ed25519.PrivateKey(key), id, timestamp, body)
		},
	}
	// publicKeys are ed25519 public keys, which verify v1a entries.
	publicKeys = &keyFlag{
		name: "public-key", what: "public key",
		parse: func(s string) ([]byte, error) { return verifier.ParsePublicKey(s) },
	}
)

// add adds the flag to cmd.
func (f *keyFlag) add(cmd *cobra.Command, usage string) {
	if f.env != "" {
		usage += " (default: $" + f.env + ")"
	}
	cmd.Flags().StringArray(f.name, nil, usage)
}

// given reports whether the flag, or else its environment variable, gives
// any key.
func (f *keyFlag) given(cmd *cobra.Command) bool {
	return cmd.Flags().Changed(f.name) || f.env != "" && os.Getenv(f.env) != ""
}

// keys returns the decoded keys given by the flag, or else by its
// environment variable; none if neither gives any. Its errors name where
// the key came from and never show a key.
func (f *keyFlag) keys(cmd *cobra.Command) ([][]byte, error) {
	values, _ := cmd.Flags().GetStringArray(f.name)
	source := "--" + f.name
	if !cmd.Flags().Changed(f.name) && f.env != "" {
		values, source = nil, "$"+f.env
		if s := os.Getenv(f.env); s != "" {
			values = []string{s}
		}
	}
	keys := make([][]byte, len(values))
	for i, s := range values {
		key, err := f.parse(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		keys[i] = key
	}
	return keys, nil
}

// signingFlags adds --secret and --key to cmd, a command that signs.
func signingFlags(cmd *cobra.Command) {
	secretKeys.add(cmd, "the HMAC secret to sign with, whsec_...: a v1 signature")
	signingKeys.add(cmd, "the ed25519 signing key to sign with, whsk_...: a v1a signature")
}

// signer signs a delivery: it returns the signature header entry of body
// sent with id and timestamp.
type signer func(id, timestamp string, body []byte) (string, error)

// signerOf returns the signer of the one secret or signing key given by
// --secret or --key, or else by OPENAI_WEBHOOK_SECRET or
// OPENAI_WEBHOOK_SIGNING_KEY: a flag wins over either variable, and
// giving both kinds of key is an error. Its errors never show a key.
func signerOf(cmd *cobra.Command) (signer, error) {
	bySecret, byKey := cmd.Flags().Changed(secretKeys.name), cmd.Flags().Changed(signingKeys.name)
	switch {
	case bySecret && byKey:
		return nil, errors.New("--secret and --key: give one or the other (--secret signs v1 with an HMAC secret, --key signs v1a with an ed25519 signing key)")
	case !bySecret && !byKey:
		bySecret, byKey = secretKeys.given(cmd), signingKeys.given(cmd)
		if bySecret && byKey {
			return nil, fmt.Errorf("$%s and $%s are both set: choose with --secret or --key", secretEnv, signingKeyEnv)
		}
	}
	f := secretKeys
	if byKey {
		f = signingKeys
	}
	keys, err := f.keys(cmd)
	switch {
	case err != nil:
		return nil, err
	case len(keys) == 0:
		return nil, fmt.Errorf("no secret or signing key: give --secret or --key, or set %s or %s", secretEnv, signingKeyEnv)
	case len(keys) > 1:
		return nil, fmt.Errorf("--%s: give one %s to sign with", f.name, f.what)
	}
	key := keys[0]
	return func(id, timestamp string, body []byte) (string, error) {
		return f.sign(key, id, timestamp, body)
	}, nil
}
