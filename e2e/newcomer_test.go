package e2e_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/demo"
	"github.com/webhookgate/caddy-openai-webhook/internal/freeport"
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// TestFirstHour is the README's first steps with the binary built by
// xcaddy, and the mistakes a newcomer makes on the way: `demo &` followed
// at once by `send` (which waits for the demo to listen); a second demo,
// and a second gateway on the demo's site or admin address, each refused at
// start with the address and the demo's process named (Caddy binds with
// SO_REUSEPORT, so they would otherwise share the ports without a word and
// each get some of the deliveries); a mistyped command exits non-zero.
func TestFirstHour(t *testing.T) {
	e := setup(t)
	var ports []int
	for _, addr := range demo.Addresses {
		_, port, _ := net.SplitHostPort(addr)
		n, _ := strconv.Atoi(port)
		ports = append(ports, n)
	}
	if !freeport.Hold(t, ports...) {
		t.Skipf("one of %v is in use, probably by the running demo: stop it to run this test", demo.Addresses)
	}

	// `demo &` then `send` at once, as the README has it, a few times: the
	// demo's start-up races the send.
	var first *demoProcess
	for i := range 5 {
		d := startDemo(t, e)
		out, code := e.command(t, "", "send", "--url", demo.Gateway, "--type", "batch.completed")
		// send may say first that it waits for the demo to listen.
		if code != 0 || !strings.Contains(out, "HTTP/1.1 200 OK\ndelivered batch.completed ") {
			t.Fatalf("send right after demo & (round %d): exit %d, %q\ndemo output:\n%s", i, code, out, d.output)
		}
		if i == 4 {
			first = d
			break
		}
		d.stop(t)
	}

	t.Run("second demo", func(t *testing.T) {
		out, code := e.command(t, "", "demo")
		want := fmt.Sprintf("127.0.0.1:8080, where the demo listens, is already served by process %d (%s openai-webhook demo)", first.cmd.Process.Pid, e.bin)
		if code == 0 || !strings.Contains(out, want) {
			t.Fatalf("a second demo: exit %d, %q; want it refused with %q", code, out, want)
		}
	})
	for _, tc := range []struct {
		name, admin, site, refused string
	}{
		{"second gateway on the demo's site", fmt.Sprintf("127.0.0.1:%d", freeport.Get(t)), "http://127.0.0.1:8080", "127.0.0.1:8080"},
		{"second gateway on every interface", fmt.Sprintf("127.0.0.1:%d", freeport.Get(t)), "http://:8081", ":8081"},
		{"second gateway on the demo's admin endpoint", "localhost:2019", fmt.Sprintf("http://127.0.0.1:%d", freeport.Get(t)), ":2019"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			config := filepath.Join(dir, "Caddyfile")
			caddyfile := fmt.Sprintf("{\n\tadmin %s\n}\n\n%s {\n\topenai_webhook {env.OPENAI_WEBHOOK_SECRET}\n\trespond \"the second gateway\"\n}\n", tc.admin, tc.site)
			if err := os.WriteFile(config, []byte(caddyfile), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(e.ctx, waitBound)
			defer cancel()
			cmd := exec.CommandContext(ctx, e.bin, "run", "--config", config, "--adapter", "caddyfile")
			cmd.Env = append(os.Environ(), "OPENAI_WEBHOOK_SECRET="+webhooktest.Secret,
				"XDG_CONFIG_HOME="+filepath.Join(dir, "config"), "XDG_DATA_HOME="+filepath.Join(dir, "data"))
			cmd.WaitDelay = 5 * time.Second
			out, err := cmd.CombinedOutput()
			want := fmt.Sprintf("is also listened on by process %d (%s openai-webhook demo)", first.cmd.Process.Pid, e.bin)
			if err == nil || ctx.Err() != nil || !strings.Contains(string(out), want) || !strings.Contains(string(out), tc.refused) {
				t.Fatalf("the second gateway: %v (context: %v); want it refused naming %s and %q; output:\n%s", err, ctx.Err(), tc.refused, want, out)
			}
		})
	}

	// The demo still has all of its ports: a refused start took none.
	out, code := e.command(t, "", "send", "--url", demo.Gateway, "--type", "response.completed")
	if code != 0 || !strings.HasPrefix(out, "HTTP/1.1 200 OK\ndelivered response.completed ") {
		t.Fatalf("send to the demo after the refused starts: exit %d, %q", code, out)
	}
	// A refusal in the demo is explained in its log.
	resp, err := http.Post(demo.Gateway, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("an unsigned delivery to the demo: %d, want 401", resp.StatusCode)
	}
	webhooktest.WaitFor(t, "the demo to log the refusal", func() bool {
		return strings.Contains(first.output.String(), `"msg":"webhook refused","status":401,"outcome":"malformed","reason":"missing or empty header: webhook-id"`)
	})

	for _, args := range [][]string{{"sned"}, {}, {"queue"}, {"secret", "foo"}} {
		out, code := e.command(t, "", args...)
		if code == 0 || !strings.Contains(out, "Error: ") {
			t.Errorf("openai-webhook %v: exit %d, %q; want an error and a non-zero exit", args, code, out)
		}
	}
}

// demoProcess is `caddy openai-webhook demo` running in the background.
type demoProcess struct {
	cmd    *exec.Cmd
	output *syncBuffer
	exited <-chan struct{}
}

// startDemo starts the demo as `demo &` does, without waiting for it to
// listen, with the tests' secret in its environment.
func startDemo(t *testing.T, e *e2e) *demoProcess {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.CommandContext(e.ctx, e.bin, "openai-webhook", "demo")
	cmd.Env = append(os.Environ(), "OPENAI_WEBHOOK_SECRET="+webhooktest.Secret,
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"), "XDG_DATA_HOME="+filepath.Join(dir, "data"))
	d := &demoProcess{cmd: cmd}
	d.output, d.exited = launch(t, cmd, "demo")
	return d
}

// stop stops the demo as Ctrl-C does, and waits until it is gone.
func (d *demoProcess) stop(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(waitBound):
		t.Fatalf("the demo still runs %s after SIGINT", waitBound)
	}
}

// TestSecretWrittenIntoConfig: a secret written into the config (which
// Caddy saves to autosave.json and serves on its admin API) is warned of
// at load, without quoting it; one given as a placeholder is not.
func TestSecretWrittenIntoConfig(t *testing.T) {
	e := setup(t)
	upstream := startUpstream(t, e)
	const warning = "a secret is written into the config"
	written := startCaddy(t, e, caddyConfig{UpstreamPort: upstream.port, Handler: "secret {env.OPENAI_WEBHOOK_SECRET}\n\t\tsecret " + secretB})
	placeholder := startCaddy(t, e, caddyConfig{UpstreamPort: upstream.port})
	webhooktest.WaitFor(t, "the warning", func() bool { return strings.Contains(written.output.String(), warning) })
	out := written.output.String()
	if n := strings.Count(out, warning); n != 1 || !strings.Contains(out, `"field":"secrets[1]"`) {
		t.Errorf("%d warnings, want one naming secrets[1]:\n%s", n, out)
	}
	if strings.Contains(out, strings.TrimPrefix(secretB, "whsec_")) {
		t.Errorf("the log shows the secret:\n%s", out)
	}
	if strings.Contains(placeholder.output.String(), warning) {
		t.Errorf("a secret given as a placeholder was warned of:\n%s", placeholder.output)
	}
}

// TestModulesListedInDocs: the sample output of `caddy list-modules | grep
// …` in docs/production.md is what the built Caddy lists. The pattern is a
// plain string, or, after -E, an extended regular expression in single
// quotes ('openai_webhook|webhook_queue'), which Go's regexp reads alike.
func TestModulesListedInDocs(t *testing.T) {
	e := setup(t)
	doc, err := os.ReadFile(filepath.Join(e.root, "docs", "production.md"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(doc), "\n")
	var pattern string
	var want []string
	for i, line := range lines {
		if _, after, ok := strings.Cut(line, "./caddy list-modules | grep "); ok {
			pattern = strings.TrimSpace(after)
			for _, sample := range lines[i+1:] {
				module, ok := strings.CutPrefix(sample, "# ")
				if !ok {
					break
				}
				want = append(want, module)
			}
			break
		}
	}
	if pattern == "" || len(want) == 0 {
		t.Fatal("docs/production.md has no `./caddy list-modules | grep …` with its output below it")
	}
	expr := regexp.QuoteMeta(pattern)
	if extended, ok := strings.CutPrefix(pattern, "-E "); ok {
		quoted := strings.TrimSpace(extended)
		if len(quoted) < 2 || quoted[0] != '\'' || quoted[len(quoted)-1] != '\'' {
			t.Fatalf("docs/production.md: grep -E %s: want the pattern in single quotes", quoted)
		}
		expr = quoted[1 : len(quoted)-1]
	}
	match, err := regexp.Compile(expr)
	if err != nil {
		t.Fatalf("docs/production.md: grep %s: %v", pattern, err)
	}
	out, err := exec.CommandContext(e.ctx, e.bin, "list-modules").Output()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, module := range strings.Split(string(out), "\n") {
		if match.MatchString(module) {
			got = append(got, module)
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("list-modules | grep %s prints\n%s\nbut docs/production.md shows\n%s", pattern, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
