package webhookqueue

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/webhookgate/caddy-openai-webhook/internal/freeport"
)

// TestCommandErrors: `caddy webhook-queue` refuses what it does not know,
// naming the choices, exits non-zero, and says where it looked for a Caddy
// that does not answer.
func TestCommandErrors(t *testing.T) {
	nobody := "127.0.0.1:" + strconv.Itoa(freeport.Get(t)) // nothing listens there
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{nil, "webhook-queue needs a command: compact, drop, list, retry, status"},
		{[]string{"stats"}, `webhook-queue: "stats" is not a command; one of compact, drop, list, retry, status; did you mean status?`},
		{[]string{"dead", "--address", nobody}, `webhook-queue: "dead" is not a command; one of compact, drop, list, retry, status`},
		{[]string{"list", "--address", nobody}, "--state: pending, scheduled, in_flight or dead is required"},
		{[]string{"status", "extra"}, "webhook-queue status takes no arguments, but was given 1"},
		{[]string{"retry", "--address", nobody}, "--id, --all or --scheduled: say which messages to retry"},
		{[]string{"retry", "--id", "x", "--all", "--address", nobody}, "--id and --all: give only one"},
		{[]string{"drop", "--address", nobody}, "--id or --all: say which dead letters to drop"},
		{[]string{"status", "--address", nobody}, "is Caddy running, with its admin endpoint at " + nobody},
	} {
		root := &cobra.Command{Use: "webhook-queue", SilenceUsage: true, SilenceErrors: true}
		addCommands(root)
		var out bytes.Buffer
		root.SetArgs(tc.args)
		root.SetOut(&out)
		root.SetErr(&out)
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%v: %v, want an error containing %q", tc.args, err, tc.wantErr)
		}
	}
}
