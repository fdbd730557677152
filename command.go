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
stays out of shell history), from OPENAI_WEBHOOK_SECRET. No command prints
a secret it was given.`,
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

// secretEnv names the environment variable commands read the secret from.
const secretEnv = "OPENAI_WEBHOOK_SECRET"

// secretFlag adds --secret to cmd.
func secretFlag(cmd *cobra.Command, usage string) {
	cmd.Flags().StringArray("secret", nil, usage+" (default: $"+secretEnv+")")
}

// keysOf returns the decoded secrets given by --secret, or else by
// OPENAI_WEBHOOK_SECRET. Its errors never show a secret.
func keysOf(cmd *cobra.Command) ([][]byte, error) {
	secrets, _ := cmd.Flags().GetStringArray("secret")
	source := "--secret"
	if len(secrets) == 0 {
		source = "$" + secretEnv
		if s := os.Getenv(secretEnv); s != "" {
			secrets = []string{s}
		}
	}
	if len(secrets) == 0 {
		return nil, fmt.Errorf("no secret: give --secret or set %s", secretEnv)
	}
	keys := make([][]byte, len(secrets))
	for i, s := range secrets {
		key, err := verifier.ParseSecret(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		keys[i] = key
	}
	return keys, nil
}

// oneKey is keysOf for commands that sign, with one secret.
func oneKey(cmd *cobra.Command) ([]byte, error) {
	keys, err := keysOf(cmd)
	if err != nil {
		return nil, err
	}
	if len(keys) > 1 {
		return nil, errors.New("--secret: give one secret to sign with")
	}
	return keys[0], nil
}

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
// signature of body under key.
func deliveryHeaders(cmd *cobra.Command, key []byte, body []byte, now time.Time) (verifier.Headers, error) {
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
	h.Signature, err = verifier.Sign(key, h.ID, h.Timestamp, body)
	return h, err
}

// idFlags adds --id and --timestamp to cmd.
func idFlags(cmd *cobra.Command) {
	cmd.Flags().String("id", "", "webhook-id (default: a new wh_... id)")
	cmd.Flags().String("timestamp", "", "webhook-timestamp, Unix seconds (default: now)")
}

func secretCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "secret",
		Short: "Print a new signing secret: whsec_ and 32 random bytes in base64",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key := make([]byte, 32)
			_, _ = rand.Read(key)
			_, err := fmt.Fprintln(cmd.OutOrStdout(), verifier.SecretPrefix+base64.StdEncoding.EncodeToString(key))
			return err
		},
	}
}

func signCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sign [--secret S] [--id ID] [--timestamp UNIX] [--file F]",
		Short: "Print the webhook-id, webhook-timestamp and webhook-signature headers for a body",
		Long: `Reads the body from --file or standard input and prints the three headers that
sign it, one per line, as an HTTP header block.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := oneKey(cmd)
			if err != nil {
				return err
			}
			body, err := bodyOf(cmd)
			if err != nil {
				return err
			}
			h, err := deliveryHeaders(cmd, key, body, clock())
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n%s: %s\n%s: %s\n",
				verifier.HeaderID, h.ID, verifier.HeaderTimestamp, h.Timestamp, verifier.HeaderSignature, h.Signature)
			return err
		},
	}
	secretFlag(cmd, "the secret to sign with")
	idFlags(cmd)
	cmd.Flags().String("file", "", "read the body from this file (default: standard input)")
	return cmd
}

func verifyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verify [--secret S]... [--tolerance D] --headers FILE [--file F]",
		Short: "Judge a captured delivery as the handler would, and say why it is refused",
		Long: `Reads the headers from --headers (lines of "name: value", as sign prints them
or curl -D saves them; blank lines and HTTP/ status lines are skipped, any other
line is an error) and the body from --file or standard input, and judges the
delivery with the handler's verifier, against the current time. Prints the
verdict and its precise reason: which header is malformed, how stale the
timestamp is and in which direction, or that no signature entry matches any
secret given; for a valid delivery, which of the secrets signed it, by its
index in the order given, from 0 (the secret label of the verified_total
metric counts alike). Exits 0 only for a valid delivery.`,
		Args: cli.NoArgs,
		RunE: runVerify,
	}
	secretFlag(cmd, "a secret the delivery may be signed with; repeat for several")
	cmd.Flags().String("tolerance", "5m", "how far webhook-timestamp may be from now")
	cmd.Flags().String("headers", "", "the file holding the delivery's headers (required)")
	cmd.Flags().String("file", "", "read the body from this file (default: standard input)")
	return cmd
}

// errRefused is verify's error for a delivery it refuses, after printing
// why.
var errRefused = errors.New("the delivery is refused")

func runVerify(cmd *cobra.Command, _ []string) error {
	keys, err := keysOf(cmd)
	if err != nil {
		return err
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
	v, err := verifier.New(verifier.Config{Keys: keys, Tolerance: tolerance, Now: func() time.Time { return now }})
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	key := -1
	headers, err := signatureHeaders(hdr)
	if err == nil {
		key, err = v.Verify(headers, body)
	}
	if err != nil {
		o := verdictOutcome(err)
		fmt.Fprintf(out, "refused: %d %s: %s\n", o.status, o.name, explain(err, headers.Timestamp, now, tolerance, len(keys)))
		return errRefused
	}
	sent, _ := verifier.ParseTimestamp(headers.Timestamp)
	// The secret's index counts from 0, as the secret label of
	// verified_total and secrets[i] in the config's errors do.
	_, err = fmt.Fprintf(out, "valid: webhook-id %s, signed %s (tolerance %s) with secret %d (of %d given, counting from 0), %d bytes of body\n",
		headers.ID, age(now.Unix()-sent), tolerance, key, len(keys), len(body))
	return err
}

// explain says why the verifier refused a delivery, in the operator's
// terms.
func explain(err error, timestamp string, now time.Time, tolerance time.Duration, secrets int) string {
	switch {
	case errors.Is(err, verifier.ErrTimestampTooOld):
		sent, _ := verifier.ParseTimestamp(timestamp)
		return fmt.Sprintf("webhook-timestamp %s is %s, beyond the tolerance of %s: the delivery was signed that long ago (a replay, or a capture judged late), or the clocks disagree",
			timestamp, age(now.Unix()-sent), tolerance)
	case errors.Is(err, verifier.ErrTimestampTooNew):
		sent, _ := verifier.ParseTimestamp(timestamp)
		return fmt.Sprintf("webhook-timestamp %s is %s, beyond the tolerance of %s: the sender's clock is ahead of this one, or this one is behind",
			timestamp, age(now.Unix()-sent), tolerance)
	case errors.Is(err, verifier.ErrNoMatchingSignature):
		return fmt.Sprintf("no webhook-signature entry matches the body under the %d secret(s) given: another secret signed it, or the body is not the bytes that were signed", secrets)
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
