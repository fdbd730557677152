package e2e_test

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/webhookgate/caddy-openai-webhook/internal/freeport"
)

// TestExamples runs each example pair as its README says — the app, then
// Caddy with the example's Caddyfile as written (its addresses moved to
// free ports through the environment variables it reads) — and delivers
// one test event with `caddy openai-webhook send`, and one signed with
// another secret.
func TestExamples(t *testing.T) {
	e := setup(t)
	for _, ex := range []struct {
		name string
		app  []string
	}{
		{"python", []string{"python3", "app.py"}},
		{"node", []string{"node", "app.mjs"}},
	} {
		t.Run(ex.name, func(t *testing.T) {
			dir := filepath.Join(e.root, "examples", ex.name)
			appPort, site := freeport.Get(t), fmt.Sprintf("127.0.0.1:%d", freeport.Get(t))
			app := exec.CommandContext(e.ctx, ex.app[0], ex.app[1:]...)
			app.Dir = dir
			app.Env = append(app.Environ(), "PORT="+strconv.Itoa(appPort))
			appOut, _ := start(t, app, ex.name+" app", fmt.Sprintf("127.0.0.1:%d", appPort))

			gw := &caddyServer{bin: e.bin, dir: t.TempDir(), config: filepath.Join(dir, "Caddyfile"), addr: site, url: "http://" + site}
			gw.admin = fmt.Sprintf("127.0.0.1:%d", freeport.Get(t))
			gw.run(t, e, site, "SITE_ADDRESS=http://"+site, fmt.Sprintf("APP_ADDRESS=127.0.0.1:%d", appPort), "CADDY_ADMIN="+gw.admin)

			out, code := e.command(t, "", "send", "--url", gw.url+"/hooks/openai", "--type", "batch.completed", "--id", "wh_example_"+ex.name)
			if code != 0 || out != "HTTP/1.1 200 OK\n" {
				t.Fatalf("send: exit %d, %q", code, out)
			}
			waitFor(t, "the app to process the event", func() bool {
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
			waitFor(t, "the app to process the second event", func() bool {
				return strings.Contains(appOut.String(), "processed batch.expired evt_")
			})
			if strings.Contains(appOut.String(), "response.completed") {
				t.Fatalf("the event signed with another secret reached the app:\n%s", appOut)
			}
		})
	}
}
