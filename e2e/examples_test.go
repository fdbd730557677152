package e2e_test

import (
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"

	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/webhookgate/caddy-openai-webhook/internal/freeport"
)

// examples are the example apps of examples/, each with the command its
// README starts it with, run in its directory.
var examples = []struct {
	name string
	app  []string
}{
	{"python", []string{"python3", "app.py"}},
	{"node", []string{"node", "app.mjs"}},
}

// startExample runs the example pair in examples/<name> as its README says
// — the app, then Caddy with the example's Caddyfile as written (its
// addresses moved to free ports through the environment variables it
// reads) — and returns the app's output and the gateway.
func startExample(t *testing.T, e *e2e, name string, app []string) (*syncBuffer, *caddyServer) {
	t.Helper()
	dir := filepath.Join(e.root, "examples", name)
	appPort, site := freeport.Get(t), fmt.Sprintf("127.0.0.1:%d", freeport.Get(t))
	cmd := exec.CommandContext(e.ctx, app[0], app[1:]...)
	cmd.Dir = dir
	cmd.Env = append(cmd.Environ(), "PORT="+strconv.Itoa(appPort))
	appOut, _ := start(t, cmd, name+" app", fmt.Sprintf("127.0.0.1:%d", appPort))

	gw := &caddyServer{bin: e.bin, dir: t.TempDir(), config: filepath.Join(dir, "Caddyfile"), addr: site, url: "http://" + site}
	gw.admin = fmt.Sprintf("127.0.0.1:%d", freeport.Get(t))
	gw.run(t, e, site, "SITE_ADDRESS=http://"+site, fmt.Sprintf("APP_ADDRESS=127.0.0.1:%d", appPort), "CADDY_ADMIN="+gw.admin)
	return appOut, gw
}

// TestExamples runs each example pair as its README says and delivers one
// test event with `caddy openai-webhook send`, and one signed with another
// secret.
func TestExamples(t *testing.T) {
	e := setup(t)
	for _, ex := range examples {
		t.Run(ex.name, func(t *testing.T) {
			appOut, gw := startExample(t, e, ex.name, ex.app)

			out, code := e.command(t, "", "send", "--url", gw.url+"/hooks/openai", "--type", "batch.completed", "--id", "wh_example_"+ex.name)
			if code != 0 || out != "HTTP/1.1 200 OK\n" {
				t.Fatalf("send: exit %d, %q", code, out)
			}
			webhooktest.WaitFor(t, "the app to process the event", func() bool {
				return strings.Contains(appOut.String(), "processed batch.completed evt_")
			})
			other, _ := e.command(t, "", "secret")
			out, code = e.command(t, "", "send", "--url", gw.url+"/hooks/openai", "--type", "response.completed", "--secret", strings.TrimSpace(other))
			if code == 0 || !strings.HasPrefix(out, "HTTP/1.1 401 Unauthorized") {
				t.Fatalf("send with another secret: exit %d, %q", code, out)
			}
			// A genuine event after it: once the app has processed that, it
			// would have processed the forged one, which came first.
			if out, code := e.command(t, "", "send", "--url", gw.url+"/hooks/openai", "--type", "batch.expired"); code != 0 {
				t.Fatalf("send: exit %d, %q", code, out)
			}
			webhooktest.WaitFor(t, "the app to process the second event", func() bool {
				return strings.Contains(appOut.String(), "processed batch.expired evt_")
			})
			if strings.Contains(appOut.String(), "response.completed") {
				t.Fatalf("the event signed with another secret reached the app:\n%s", appOut)
			}
		})
	}
}
