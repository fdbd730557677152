package openaiwebhook

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/spf13/cobra"

	"github.com/webhookgate/caddy-openai-webhook/internal/cli"
	"github.com/webhookgate/caddy-openai-webhook/internal/demo"
	"github.com/webhookgate/caddy-openai-webhook/internal/portcheck"
)

func demoCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Run the gateway on http://127.0.0.1:8080 in front of a stand-in app that echoes what it gets",
		Long: `Runs the embedded demo config: openai_webhook on http://127.0.0.1:8080 in front of
a stand-in app on 127.0.0.1:8081 that answers with what it received, and the
admin API on localhost:2019. The secret is $OPENAI_WEBHOOK_SECRET or, unset,
a public demo secret. Ctrl-C stops it.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			caddy.TrapSignals()
			secret, err := startDemo(cmd)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "openai_webhook gateway on %s, demo app on http://127.0.0.1:8081; Ctrl-C stops\n", demo.Gateway)
			fmt.Fprintf(out, "Send it a test event:\n  %s openai-webhook send --url %s%s\n", invocation(), demo.Gateway, secret)
			select {}
		},
	}
}

// startDemo loads the demo config into Caddy, with the demo secret if
// OPENAI_WEBHOOK_SECRET is unset, and returns the --secret flag send needs
// for it (none for a secret of the user's own, which send also reads from
// the environment).
func startDemo(cmd *cobra.Command) (secretArg string, err error) {
	if os.Getenv(secretEnv) == "" {
		fmt.Fprintf(cmd.ErrOrStderr(), "%s is unset: using the public demo secret %s\n", secretEnv, demo.Secret)
		if err := os.Setenv(secretEnv, demo.Secret); err != nil {
			return "", err
		}
		secretArg = " --secret '" + demo.Secret + "'"
	}
	if err := checkDemoAddresses(); err != nil {
		return "", err
	}
	adapted, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(demo.Caddyfile, map[string]any{"filename": "embedded demo Caddyfile"})
	if err != nil {
		return "", err
	}
	for _, w := range warnings {
		fmt.Fprintln(cmd.ErrOrStderr(), "caddyfile:", w.String())
	}
	return secretArg, caddy.Load(adapted, true)
}

// checkDemoAddresses refuses to start the demo where something answers on
// one of its addresses already. Caddy binds with SO_REUSEPORT, so a second
// demo, or another Caddy, would share the ports without a word, each
// getting some of the deliveries.
func checkDemoAddresses() error {
	for _, addr := range demo.Addresses {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			continue
		}
		conn.Close()
		holder := "another process"
		if holders, _ := portcheck.OtherListeners([]string{addr}); len(holders) > 0 && holders[0].Pid != 0 {
			holder = fmt.Sprintf("process %d (%s)", holders[0].Pid, holders[0].Command)
		}
		return fmt.Errorf("%s, where the demo listens, is already served by %s: is a demo or another Caddy running? Stop it first (Ctrl-C where it runs)", addr, holder)
	}
	return nil
}

// invocation is how the user ran this program, for a command line to copy:
// `go run ./cmd/caddy` when go run built it.
func invocation() string {
	if builtByGoRun(os.Args[0]) {
		return "go run ./cmd/caddy"
	}
	return os.Args[0]
}

// builtByGoRun reports whether exe is where go run puts what it builds:
// .../go-build<N>/b001/exe/<name> on a fresh build, or
// <GOCACHE>/<xx>/<hash>-d/<name> when it runs a cached executable, with
// GOCACHE anywhere.
func builtByGoRun(exe string) bool {
	dir := filepath.Dir(exe)
	if filepath.Base(dir) == "exe" && strings.HasPrefix(filepath.Base(filepath.Dir(filepath.Dir(dir))), "go-build") {
		return true
	}
	hash, ok := strings.CutSuffix(filepath.Base(dir), "-d")
	return ok && len(hash) >= 32 && strings.Trim(hash, "0123456789abcdef") == ""
}
