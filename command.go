package openaiwebhook

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/webhookgate/caddy-openai-webhook/internal/cli"
	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "openai-webhook",
		Usage: "<command> [flags]",
		Short: "Try, sign, send and judge OpenAI webhook deliveries",
		Long: `Tools for the openai_webhook handler: try it, sign and send test deliveries,
and judge a captured one offline.

Commands that sign or verify take the secret from --secret or, better (it
stays out of shell history), from OPENAI_WEBHOOK_SECRET; those that sign
take an ed25519 signing key instead from --key or OPENAI_WEBHOOK_SIGNING_KEY,
and verify takes public keys from --public-key. No command prints a secret
or a signing key it was given.`,
		CobraFunc: addCommands,
	})
}

// addCommands adds the subcommands of `caddy openai-webhook` to cmd.
func addCommands(cmd *cobra.Command) {
	cmd.AddCommand(demoCommand(), secretCommand(), signCommand(), sendCommand(), verifyCommand())
	cli.Parent(cmd)
}

// clock is the commands' time: verify judges freshness against it, sign
// and send sign with it. Tests fix it.
var clock = time.Now

// maxBodyArg bounds a body read from a file or standard input: the largest
// max_size.
const maxBodyArg = MaxMaxSize

// bodyOf reads the body from --file, or else standard input.
func bodyOf(cmd *cobra.Command) ([]byte, error) {
	src := cmd.InOrStdin()
	name := "standard input"
	if path, _ := cmd.Flags().GetString("file"); path != "" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("--file: %w", err)
		}
		defer f.Close()
		src, name = f, path
	}
	body, err := io.ReadAll(io.LimitReader(src, maxBodyArg+1))
	if err != nil {
		return nil, fmt.Errorf("reading the body from %s: %w", name, err)
	}
	if len(body) > maxBodyArg {
		return nil, fmt.Errorf("the body in %s is over %d bytes", name, maxBodyArg)
	}
	return body, nil
}

// randomHex returns n random bytes in hexadecimal.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails
	return hex.EncodeToString(b)
}

// deliveryHeaders returns the id and timestamp given by --id and
// --timestamp, or a new OpenAI-shaped id and the current time, and the
// signature of body by sign.
func deliveryHeaders(cmd *cobra.Command, sign signer, body []byte, now time.Time) (verifier.Headers, error) {
	h := verifier.Headers{ID: "wh_" + randomHex(16), Timestamp: strconv.FormatInt(now.Unix(), 10)}
	if id, _ := cmd.Flags().GetString("id"); id != "" {
		if err := verifier.CheckID(id); err != nil {
			return h, fmt.Errorf("--id: %w", err)
		}
		h.ID = id
	}
	if ts, _ := cmd.Flags().GetString("timestamp"); ts != "" {
		if _, err := verifier.ParseTimestamp(ts); err != nil {
			return h, fmt.Errorf("--timestamp: %w", err)
		}
		h.Timestamp = ts
	}
	var err error
	h.Signature, err = sign(h.ID, h.Timestamp, body)
	return h, err
}

// idFlags adds --id and --timestamp to cmd.
func idFlags(cmd *cobra.Command) {
	cmd.Flags().String("id", "", "the delivery's id, webhook-id or svix-id (default: a new wh_... id)")
	cmd.Flags().String("timestamp", "", "the delivery's timestamp, Unix seconds (default: now)")
}

// familyFlag adds --headers to cmd, a command that signs.
func familyFlag(cmd *cobra.Command) {
	cmd.Flags().String("headers", verifier.FamilyWebhook.String(),
		"the signature headers' names: webhook (webhook-id, webhook-timestamp, webhook-signature) or svix (svix-id, svix-timestamp, svix-signature)")
}

// familyOf returns the header names --headers chooses.
func familyOf(cmd *cobra.Command) (verifier.HeaderNames, error) {
	name, _ := cmd.Flags().GetString("headers")
	for _, f := range verifier.Families {
		if f.String() == name {
			return f.Names(), nil
		}
	}
	// Not quoted: a misplaced argument can be a secret.
	return verifier.HeaderNames{}, errors.New("--headers: give webhook or svix")
}

func secretCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secret [--asymmetric]",
		Short: "Print a new signing secret (whsec_), or with --asymmetric a new ed25519 key pair (whsk_, whpk_)",
		Long: `Prints a new HMAC signing secret: whsec_ and 32 random bytes in standard
base64, one line, for --secret and OPENAI_WEBHOOK_SECRET, and for the handler.

With --asymmetric, prints a new ed25519 key pair for v1a signatures instead,
one key a line, each after a label and ": ":

  signing key (keep secret): whsk_<base64 of the 64-byte private key>
  public key: whpk_<base64 of the 32-byte public key>

The signing key signs (sign and send --key, or OPENAI_WEBHOOK_SIGNING_KEY) and
stays with the sender; the public key verifies (verify --public-key, and the
public_key option of standard_webhooks) and may be shown to anyone.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if asymmetric, _ := cmd.Flags().GetBool("asymmetric"); asymmetric {
				signing, public, err := verifier.GenerateKeyPair(nil)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(out, "signing key (keep secret): %s\npublic key: %s\n", signing, public)
				return err
			}
			key := make([]byte, 32)
			_, _ = rand.Read(key)
			_, err := fmt.Fprintln(out, verifier.SecretPrefix+base64.StdEncoding.EncodeToString(key))
			return err
		},
	}
	cmd.Flags().Bool("asymmetric", false, "print a new ed25519 key pair (whsk_ signing key, whpk_ public key) instead of a secret")
	return cmd
}

func signCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sign [--secret S | --key whsk_...] [--headers webhook|svix] [--id ID] [--timestamp UNIX] [--file F]",
		Short: "Print the signature headers (webhook-id, webhook-timestamp, webhook-signature) for a body",
		Long: `Reads the body from --file or standard input and prints the three headers that
sign it, one per line, as an HTTP header block: id, timestamp and signature,
named webhook-* or, with --headers svix, svix-*.

The signature is a v1 entry (HMAC-SHA256) made with the secret given by
--secret or OPENAI_WEBHOOK_SECRET, or a v1a entry (ed25519) made with the
signing key given by --key or OPENAI_WEBHOOK_SIGNING_KEY (secret --asymmetric
makes a pair). A flag wins over either variable; give one key only.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sign, err := signerOf(cmd)
			if err != nil {
				return err
			}
			names, err := familyOf(cmd)
			if err != nil {
				return err
			}
			body, err := bodyOf(cmd)
			if err != nil {
				return err
			}
			h, err := deliveryHeaders(cmd, sign, body, clock())
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n%s: %s\n%s: %s\n",
				names.ID, h.ID, names.Timestamp, h.Timestamp, names.Signature, h.Signature)
			return err
		},
	}
	signingFlags(cmd)
	familyFlag(cmd)
	idFlags(cmd)
	cmd.Flags().String("file", "", "read the body from this file (default: standard input)")
	return cmd
}

func verifyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verify [--secret S]... [--public-key whpk_...]... [--tolerance D] --headers FILE [--file F]",
		Short: "Judge a captured delivery as the handler would, and say why it is refused",
		Long: `Reads the headers from --headers (lines of "name: value", as sign prints them
or curl -D saves them; blank lines and HTTP/ status lines are skipped, any other
line is an error) and the body from --file or standard input, and judges the
delivery with the handler's verifier, against the current time. The signature
headers are read as webhook-* or, when there are none, svix-*.

The keys are the secrets given by --secret or OPENAI_WEBHOOK_SECRET, which
check v1 entries, and the ed25519 public keys given by --public-key, which
check v1a entries; at least one is needed. As openai_webhook does, an entry
of a version no key given can check refuses the delivery.

Prints the verdict and its precise reason: which header is malformed, how
stale the timestamp is and in which direction, or that no signature entry
matches any key given. For a valid delivery, it says which key signed it, by
its index among the keys of its kind in the order given, from 0; when both
kinds are given, also by its index among all of them, secrets first (the
secret label of the verified_total metric counts alike). Exits 0 only for a
valid delivery.`,
		Args: cli.NoArgs,
		RunE: runVerify,
	}
	secretKeys.add(cmd, "a secret the delivery may be signed with, whsec_...; repeat for several")
	publicKeys.add(cmd, "an ed25519 public key the delivery may be signed with, whpk_...; repeat for several")
	cmd.Flags().String("tolerance", "5m", "how far the timestamp may be from now")
	cmd.Flags().String("headers", "", "the file holding the delivery's headers (required)")
	cmd.Flags().String("file", "", "read the body from this file (default: standard input)")
	return cmd
}

// errRefused is verify's error for a delivery it refuses, after printing
// why.
var errRefused = errors.New("the delivery is refused")

func runVerify(cmd *cobra.Command, _ []string) error {
	secrets, err := secretKeys.keys(cmd)
	if err != nil {
		return err
	}
	pubs, err := publicKeys.keys(cmd)
	if err != nil {
		return err
	}
	if len(secrets) == 0 && len(pubs) == 0 {
		return fmt.Errorf("no key: give --secret or --public-key, or set %s", secretEnv)
	}
	toleranceFlag, _ := cmd.Flags().GetString("tolerance")
	tolerance, err := caddy.ParseDuration(toleranceFlag)
	if err != nil || tolerance < time.Second {
		return fmt.Errorf("--tolerance: %q is not a duration of at least 1s", toleranceFlag)
	}
	headerFile, _ := cmd.Flags().GetString("headers")
	if headerFile == "" {
		return errors.New("--headers: the file of the delivery's headers is required")
	}
	hdr, err := readHeaderFile(headerFile)
	if err != nil {
		return fmt.Errorf("--headers: %w", err)
	}
	body, err := bodyOf(cmd)
	if err != nil {
		return err
	}
	now := clock()
	v, err := verifier.New(verifier.Config{Keys: secrets, PublicKeys: pubs, Tolerance: tolerance, Now: func() time.Time { return now }})
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	given := keysGiven{secrets: len(secrets), publicKeys: len(pubs)}
	headers, family, err := signatureHeaders(hdr, headerFamilies["auto"])
	var r verifier.Result
	if err == nil {
		r, err = v.VerifyResult(headers, body)
	}
	names := family.Names()
	if err != nil {
		o := verdictOutcome(err)
		fmt.Fprintf(out, "refused: %d %s: %s\n", o.status, o.name, explain(err, names, headers.Timestamp, now, tolerance, given))
		return errRefused
	}
	sent, _ := verifier.ParseTimestamp(headers.Timestamp)
	_, err = fmt.Fprintf(out, "valid: %s %s, signed %s (tolerance %s) with %s, %d bytes of body\n",
		names.ID, headers.ID, age(now.Unix()-sent), tolerance, given.signedBy(r), len(body))
	return err
}

// keysGiven counts the keys verify was given, of each kind.
type keysGiven struct{ secrets, publicKeys int }

// String names the keys, as "the 2 secret(s) given".
func (g keysGiven) String() string {
	switch {
	case g.publicKeys == 0:
		return fmt.Sprintf("the %d secret(s) given", g.secrets)
	case g.secrets == 0:
		return fmt.Sprintf("the %d public key(s) given", g.publicKeys)
	}
	return fmt.Sprintf("the %d secret(s) and %d public key(s) given", g.secrets, g.publicKeys)
}

// signedBy names the key that signed a valid delivery: by its index among
// the keys of its kind, from 0, and when both kinds were given, by r.Key,
// its index among all of them, secrets first, as the secret label of
// verified_total counts.
func (g keysGiven) signedBy(r verifier.Result) string {
	kind, i, n := "secret", r.Key, g.secrets
	if r.Kind == verifier.KindEd25519 {
		kind, i, n = "public key", r.Key-g.secrets, g.publicKeys
	}
	s := fmt.Sprintf("%s %d (of %d given, counting from 0", kind, i, n)
	if g.secrets > 0 && g.publicKeys > 0 {
		s += fmt.Sprintf("; key %d of all %d, secrets first", r.Key, g.secrets+g.publicKeys)
	}
	return s + ")"
}

// explain says why the verifier refused a delivery, in the operator's
// terms, naming its headers as it sent them.
func explain(err error, names verifier.HeaderNames, timestamp string, now time.Time, tolerance time.Duration, given keysGiven) string {
	switch {
	case errors.Is(err, verifier.ErrTimestampTooOld):
		sent, _ := verifier.ParseTimestamp(timestamp)
		return fmt.Sprintf("%s %s is %s, beyond the tolerance of %s: the delivery was signed that long ago (a replay, or a capture judged late), or the clocks disagree",
			names.Timestamp, timestamp, age(now.Unix()-sent), tolerance)
	case errors.Is(err, verifier.ErrTimestampTooNew):
		sent, _ := verifier.ParseTimestamp(timestamp)
		return fmt.Sprintf("%s %s is %s, beyond the tolerance of %s: the sender's clock is ahead of this one, or this one is behind",
			names.Timestamp, timestamp, age(now.Unix()-sent), tolerance)
	case errors.Is(err, verifier.ErrNoMatchingSignature):
		return fmt.Sprintf("no %s entry matches the body under %s: another key signed it, or the body is not the bytes that were signed", names.Signature, given)
	}
	return err.Error()
}

// age says how far a timestamp is from now, given now minus it in seconds.
func age(seconds int64) string {
	switch {
	case seconds > 0:
		return fmt.Sprintf("%d seconds in the past", seconds)
	case seconds < 0:
		return fmt.Sprintf("%d seconds in the future", -seconds)
	}
	return "this second"
}

// readHeaderFile reads "name: value" lines, skipping blank lines and status
// lines, as HTTP header fields: repeated names are kept, so that the
// verdict refuses them as the handler does.
func readHeaderFile(path string) (http.Header, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	hdr := http.Header{}
	for i, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "HTTP/") {
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return nil, fmt.Errorf("line %d is not a header field (name: value)", i+1)
		}
		hdr.Add(textproto.CanonicalMIMEHeaderKey(name), strings.Trim(value, " \t"))
	}
	return hdr, nil
}
