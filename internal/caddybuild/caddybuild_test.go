package caddybuild

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestLoadConfig(t *testing.T) {
	for _, tc := range []struct {
		name, json, wantErr string
	}{
		{name: "the project's shape", json: `{"xcaddy": "v0.4.5", "caddy": "v2.11.9", "plugins": [{"module": "example.com/p", "replace": "."}]}`},
		{name: "published plugin", json: `{"xcaddy": "v0.4.5", "caddy": "v2.11.9", "plugins": [{"module": "example.com/p", "version": "v1.2.3"}]}`},
		{name: "misspelt field", json: `{"xcaddy": "v0.4.5", "caddy": "v2.11.9", "plugin": []}`, wantErr: "unknown field"},
		{name: "no caddy version", json: `{"xcaddy": "v0.4.5"}`, wantErr: "versions are required"},
		{name: "module missing", json: `{"xcaddy": "v0.4.5", "caddy": "v2.11.9", "plugins": [{"replace": "."}]}`, wantErr: "plugins[0]: module"},
		{name: "version and replace", json: `{"xcaddy": "v0.4.5", "caddy": "v2.11.9", "plugins": [{"module": "m", "version": "v1.0.0", "replace": "."}]}`, wantErr: "exclusive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(tc.json), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := LoadConfig(dir)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// TestModuleSources: the cache key covers what goes into the binary and
// nothing else, so editing a benchmark does not rebuild Caddy while editing
// the handler or the verifier does.
func TestModuleSources(t *testing.T) {
	root, err := FindRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	files, err := moduleSources(context.Background(), root, "github.com/webhookgate/caddy-openai-webhook")
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		files[i], _ = filepath.Rel(root, f)
	}
	for _, want := range []string{"go.mod", "go.sum", "module.go", "body.go", filepath.Join("internal", "verifier", "verifier.go")} {
		if !slices.Contains(files, want) {
			t.Errorf("%s is not in the cache key; files: %v", want, files)
		}
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || strings.HasPrefix(f, "bench"+string(filepath.Separator)) || strings.HasPrefix(f, "e2e"+string(filepath.Separator)) {
			t.Errorf("%s is in the cache key but not in the binary", f)
		}
	}
}
