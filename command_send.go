package openaiwebhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/webhookgate/caddy-openai-webhook/internal/cfparse"
	"github.com/webhookgate/caddy-openai-webhook/internal/cli"
)

func sendCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "send --url URL [--secret S | --key whsk_...] [--headers webhook|svix] [--type EVENT] [--file F] [--id ID] [--timestamp UNIX] [--insecure | --ca FILE]",
		Short: `Send a signed test event, as OpenAI's "Send test event" does, and print the answer`,
		Long: `Sends a delivery signed now to --url, as OpenAI would, and prints the answer's
status line and body. Without --file, the body is the event OpenAI sends for
--type: {"object":"event","id":"evt_...","type":...,"created_at":...,
"data":{...}}, its data shaped for the event's family. Exits 0 only for a 2xx.

It is signed as sign signs: a v1 entry with the secret of --secret or
OPENAI_WEBHOOK_SECRET, or a v1a entry with the signing key of --key or
OPENAI_WEBHOOK_SIGNING_KEY, in webhook-* headers or, with --headers svix,
svix-* headers.`,
		Args: cli.NoArgs,
		RunE: runSend,
	}
	cmd.Flags().String("url", "", "where to send it (required)")
	signingFlags(cmd)
	familyFlag(cmd)
	cmd.Flags().String("type", "response.completed", "the event's type, without --file")
	cmd.Flags().String("file", "", "send this file as the body instead of an event")
	idFlags(cmd)
	cmd.Flags().Bool("insecure", false, "accept any certificate (a local gateway with its own CA)")
	cmd.Flags().String("ca", "", "trust only the certificate authorities in this PEM file")
	return cmd
}

// sendTimeout bounds a send: OpenAI gives up after about as long.
const sendTimeout = 30 * time.Second

// maxAnswerShown bounds the answer's body printed.
const maxAnswerShown = 1 << 20

func runSend(cmd *cobra.Command, _ []string) error {
	target, _ := cmd.Flags().GetString("url")
	u, err := cfparse.HTTPURL(target)
	if err != nil {
		return fmt.Errorf("--url: %w", err)
	}
	sign, err := signerOf(cmd)
	if err != nil {
		return err
	}
	names, err := familyOf(cmd)
	if err != nil {
		return err
	}
	client, err := sendClient(cmd)
	if err != nil {
		return err
	}
	now := clock()
	var body []byte
	if path, _ := cmd.Flags().GetString("file"); path != "" {
		if cmd.Flags().Changed("type") {
			return errors.New("--type and --file: give one or the other (the file is sent as it is, whatever its type)")
		}
		if body, err = bodyOf(cmd); err != nil {
			return err
		}
	} else {
		typ, _ := cmd.Flags().GetString("type")
		if body, err = sampleEvent(typ, now); err != nil {
			return fmt.Errorf("--type: %w", err)
		}
	}
	h, err := deliveryHeaders(cmd, sign, body, now)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(cmd.Context(), http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set(names.ID, h.ID)
	req.Header.Set(names.Timestamp, h.Timestamp)
	req.Header.Set(names.Signature, h.Signature)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "caddy-openai-webhook-send/1.0")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerShown))
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "%s %s\n", resp.Proto, resp.Status)
	if len(answer) > 0 {
		fmt.Fprintf(out, "%s\n", bytes.TrimRight(answer, "\n"))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("the answer is %s, not 2xx", resp.Status)
	}
	return nil
}

// sendClient returns the client send uses, with --insecure or --ca.
func sendClient(cmd *cobra.Command) (*http.Client, error) {
	insecure, _ := cmd.Flags().GetBool("insecure")
	caFile, _ := cmd.Flags().GetString("ca")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	switch {
	case insecure && caFile != "":
		return nil, errors.New("--insecure and --ca: give one or the other")
	case insecure:
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // asked for, for a local gateway
	case caFile != "":
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca: no PEM certificate in %s", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialStarting(ctx, dial, network, addr, cmd.ErrOrStderr())
	}
	return &http.Client{Transport: tr, Timeout: sendTimeout}, nil
}

// startWait is how long send waits for a gateway on this machine that
// refuses connections: one just started in the background (demo &) may not
// listen yet.
const startWait = 5 * time.Second

// dialStarting dials addr with dial; while a loopback address refuses the
// connection, it tries again for up to startWait, saying so once on notice.
func dialStarting(ctx context.Context, dial func(context.Context, string, string) (net.Conn, error), network, addr string, notice io.Writer) (net.Conn, error) {
	deadline := time.Now().Add(startWait)
	for announced := false; ; announced = true {
		conn, err := dial(ctx, network, addr)
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || !isLoopback(addr) || time.Now().After(deadline) {
			return conn, err
		}
		if !announced {
			fmt.Fprintf(notice, "%s refused the connection: waiting up to %s for the gateway to start\n", addr, startWait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// isLoopback reports whether addr (host:port) is on this machine.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// sampleEvent returns the event OpenAI would send for typ, created at now,
// with new ids shaped as OpenAI's are.
func sampleEvent(typ string, now time.Time) ([]byte, error) {
	if err := checkEventPattern(typ); err != nil || strings.HasSuffix(typ, "*") {
		return nil, fmt.Errorf("%q is not an event type (response.completed, batch.failed, ...)", typ)
	}
	id := objectPrefix(typ) + randomHex(16)
	var data any
	switch {
	case typ == "realtime.call.incoming":
		data = map[string]any{
			"call_id": "rtc_" + randomHex(16),
			"sip_headers": []map[string]string{
				{"name": "From", "value": "sip:+14155550100@sip.example.com"},
				{"name": "To", "value": "sip:+18005550199@sip.api.openai.com;transport=tls"},
				{"name": "Call-ID", "value": randomHex(8) + "@sip.example.com"},
			},
		}
	case typ == "agent.session.action_required":
		// Only the kind of action: the session holds the call ids and
		// arguments (OpenAI's Agents API guide, Session webhooks).
		data = map[string]any{"id": id, "required_action": map[string]string{"type": "function_call"}}
	case strings.HasPrefix(typ, "agent.session."):
		// A session without an environment; one with an environment has
		// its environment_id too (the session payloads of OpenAI's API
		// specification).
		data = map[string]string{"id": id, "environment_type": "none"}
	default:
		data = map[string]string{"id": id}
	}
	return json.Marshal(struct {
		Object    string `json:"object"`
		ID        string `json:"id"`
		Type      string `json:"type"`
		CreatedAt int64  `json:"created_at"`
		Data      any    `json:"data"`
	}{"event", "evt_" + randomHex(16), typ, now.Unix(), data})
}

// objectPrefix is the id prefix of the object an event of type typ is
// about, as OpenAI's API reference shows them: a project's safety alert
// (safety.alert.created) is alert_ and 32 hex digits, an agent session
// sess_. The other safety events (safety.org_alert.created,
// safety.warning_issued, safety.deactivation_issued) carry a workspace
// alert's or an enforcement case's id, whose form OpenAI does not document:
// they, and types this does not know, get the neutral obj_.
func objectPrefix(typ string) string {
	for _, f := range []struct{ family, prefix string }{
		{"response.", "resp_"},
		{"batch.", "batch_"},
		{"fine_tuning.job.", "ftjob_"},
		{"eval.run.", "evalrun_"},
		{"safety.alert.", "alert_"},
		{"agent.session.", "sess_"},
	} {
		if strings.HasPrefix(typ, f.family) {
			return f.prefix
		}
	}
	return "obj_"
}
