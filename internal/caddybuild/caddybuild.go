// Package caddybuild builds a real Caddy binary with this module plugged in,
// the way users build theirs: with xcaddy, at the versions pinned in
// xcaddy.json at the repository root. End-to-end tests and benchmark scripts
// use Cached, which builds once per state of the sources, because a cold
// build takes minutes.
package caddybuild

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// ConfigFile is the name of the build configuration at the repository root.
const ConfigFile = "xcaddy.json"

// Config is the content of xcaddy.json.
type Config struct {
	// Xcaddy is the version of github.com/caddyserver/xcaddy that builds.
	Xcaddy string `json:"xcaddy"`
	// Caddy is the version of Caddy built.
	Caddy string `json:"caddy"`
	// Plugins are the modules built in besides Caddy's standard ones.
	Plugins []Plugin `json:"plugins"`
}

// Plugin is one module built into Caddy.
type Plugin struct {
	// Module is the module path.
	Module string `json:"module"`
	// Version is the published version fetched; empty means the latest.
	// It must be empty when Replace is set.
	Version string `json:"version,omitempty"`
	// Replace is a directory, relative to the repository root, whose
	// sources are built instead of a published version.
	Replace string `json:"replace,omitempty"`
}

// LoadConfig reads and checks root/xcaddy.json.
func LoadConfig(root string) (*Config, error) {
	raw, err := os.ReadFile(filepath.Join(root, ConfigFile))
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	// A misspelt field would otherwise be silently ignored.
	dec.DisallowUnknownFields()
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", ConfigFile, err)
	}
	if cfg.Xcaddy == "" || cfg.Caddy == "" {
		return nil, fmt.Errorf("%s: xcaddy and caddy versions are required", ConfigFile)
	}
	for i, p := range cfg.Plugins {
		if p.Module == "" {
			return nil, fmt.Errorf("%s: plugins[%d]: module is required", ConfigFile, i)
		}
		if p.Version != "" && p.Replace != "" {
			return nil, fmt.Errorf("%s: plugins[%d]: version and replace are exclusive", ConfigFile, i)
		}
	}
	return &cfg, nil
}

// Options vary how Caddy is built.
type Options struct {
	// Race builds Caddy with the race detector (xcaddy's
	// XCADDY_RACE_DETECTOR), so tests that drive the binary also catch data
	// races in the plugin; such a Caddy reports one on standard error with
	// "WARNING: DATA RACE".
	Race bool
}

// FindRoot returns the nearest directory at or above dir that holds
// xcaddy.json, so tools work from any directory of the repository.
func FindRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, ConfigFile)); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no %s in any parent directory", ConfigFile)
		}
		dir = parent
	}
}

// Build builds Caddy as root/xcaddy.json and opts say and writes the binary
// to output. The go and xcaddy commands' output goes to log, which may be
// nil.
func Build(ctx context.Context, root, output string, opts Options, log io.Writer) error {
	if log == nil {
		log = io.Discard
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	if output, err = filepath.Abs(output); err != nil {
		return err
	}
	cfg, err := LoadConfig(root)
	if err != nil {
		return err
	}
	args := []string{"build", cfg.Caddy, "--output", output}
	var local []string // modules built from a local directory
	for _, p := range cfg.Plugins {
		switch {
		case p.Replace != "":
			// Pinned to the zero pseudo-version, which Go uses for a module
			// it only knows from a replace directive: without a version
			// xcaddy's go get asks the module proxy (or git, for GONOPROXY)
			// for the latest release, which fails offline or for a module
			// never published.
			local = append(local, p.Module)
			args = append(args, "--with", p.Module+"@"+localVersion+"="+filepath.Join(root, p.Replace))
		case p.Version != "":
			args = append(args, "--with", p.Module+"@"+p.Version)
		default:
			args = append(args, "--with", p.Module)
		}
	}

	env := os.Environ()
	// The module proxy and checksum database refuse a module path they have
	// never seen (an unpublished plugin, a fork): keep go from asking them
	// about a local module should anything still look it up.
	if len(local) > 0 {
		for _, name := range []string{"GONOPROXY", "GONOSUMDB"} {
			list := strings.Join(local, ",")
			if old := os.Getenv(name); old != "" {
				list = old + "," + list
			}
			env = append(env, name+"="+list) // the last value of a name wins
		}
	}

	bin, err := os.MkdirTemp("", "caddybuild-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(bin)
	// Install xcaddy and run it rather than "go run" it: go run ignores
	// SIGINT, so cancelling it would leave xcaddy building as an orphan.
	install := exec.CommandContext(ctx, "go", "install", "github.com/caddyserver/xcaddy/cmd/xcaddy@"+cfg.Xcaddy)
	install.Env = append(env, "GOBIN="+bin)
	install.Stdout, install.Stderr = log, log
	if err := install.Run(); err != nil {
		return fmt.Errorf("installing xcaddy %s: %w", cfg.Xcaddy, err)
	}
	xcaddy := exec.CommandContext(ctx, filepath.Join(bin, exe("xcaddy")), args...)
	xcaddy.Dir = bin // xcaddy must not mistake the working directory for a plugin
	xcaddy.Env = env
	if opts.Race {
		xcaddy.Env = append(env, "XCADDY_RACE_DETECTOR=1")
	}
	xcaddy.Stdout, xcaddy.Stderr = log, log
	// On cancellation xcaddy stops its go build on SIGINT, waiting up to 15s
	// for it; kill it only if that fails.
	xcaddy.Cancel = func() error { return xcaddy.Process.Signal(os.Interrupt) }
	xcaddy.WaitDelay = 30 * time.Second
	if err := xcaddy.Run(); err != nil {
		return fmt.Errorf("xcaddy %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// localVersion is the version under which a plugin built from a local
// directory is required and replaced.
const localVersion = "v0.0.0-00010101000000-000000000000"

// cacheKeep is how many cached binaries are kept: enough for a few
// branches or edits in turn, while each is tens of megabytes.
const cacheKeep = 4

// Cached returns the path of a Caddy binary built from root's current
// sources with opts, building it only if the user cache (os.UserCacheDir)
// has none yet. The cache key covers opts, xcaddy.json, the Go toolchain
// and, for each
// plugin built from a local directory, its go.mod, go.sum and every non-test
// Go file and embedded file, so any change to what goes into the binary
// rebuilds it. Build output goes to log, which may be nil.
func Cached(ctx context.Context, root string, opts Options, log io.Writer) (string, error) {
	if log == nil {
		log = io.Discard
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return "", err
	}
	cfg, err := LoadConfig(root)
	if err != nil {
		return "", err
	}
	key, err := cacheKey(ctx, root, cfg, opts)
	if err != nil {
		return "", err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "caddy-openai-webhook")
	path := filepath.Join(dir, exe("caddy-"+key))
	if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() {
		now := time.Now()
		_ = os.Chtimes(path, now, now) // marks it used, for pruning
		return path, nil
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	fmt.Fprintf(log, "caddybuild: building %s (a cold build takes minutes)\n", path)
	built := filepath.Join(tmp, exe("caddy"))
	if err := Build(ctx, root, built, opts, log); err != nil {
		return "", err
	}
	// A rename is atomic, so a concurrent run finds either no binary or a
	// whole one; two concurrent builds write the same thing.
	if err := os.Rename(built, path); err != nil {
		return "", err
	}
	prune(dir, cacheKeep)
	return path, nil
}

// cacheKey hashes everything that decides what Build produces.
func cacheKey(ctx context.Context, root string, cfg *Config, opts Options) (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, "caddybuild 1") // changed when Build changes what it builds
	fmt.Fprintf(h, "race %v\n", opts.Race)
	goenv, err := exec.CommandContext(ctx, "go", "env", "GOVERSION", "GOOS", "GOARCH").Output()
	if err != nil {
		return "", fmt.Errorf("go env: %w", err)
	}
	h.Write(goenv)
	files := []string{filepath.Join(root, ConfigFile)}
	for _, p := range cfg.Plugins {
		if p.Replace == "" {
			continue // a published version is fixed by xcaddy.json
		}
		src, err := moduleSources(ctx, filepath.Join(root, p.Replace), p.Module)
		if err != nil {
			return "", fmt.Errorf("listing the sources of %s: %w", p.Module, err)
		}
		files = append(files, src...)
	}
	slices.Sort(files)
	files = slices.Compact(files)
	for _, f := range files {
		content, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) && filepath.Base(f) == "go.sum" {
			continue // a module without dependencies has none
		}
		if err != nil {
			return "", err
		}
		// Paths relative to root keep the key of a clone in another
		// directory (as CI makes) the same.
		rel, err := filepath.Rel(root, f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", filepath.ToSlash(rel), len(content))
		h.Write(content)
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// moduleSources lists the files of module (in dir) that go into a Caddy
// binary: go.mod, go.sum, and the Go files (test files aside, files excluded
// by build constraints included) and embedded files of the packages the
// plugin imports from its own module. Other packages of the module, such as
// tools and benchmarks, do not change the binary, so editing them does not
// rebuild it.
func moduleSources(ctx context.Context, dir, module string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-e", "-deps", "-json=Dir,GoFiles,CgoFiles,IgnoredGoFiles,EmbedFiles,Module", ".")
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %w: %s", err, stderr.String())
	}
	files := []string{filepath.Join(dir, "go.mod"), filepath.Join(dir, "go.sum")}
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var pkg struct {
			Dir                                           string
			GoFiles, CgoFiles, IgnoredGoFiles, EmbedFiles []string
			Module                                        *struct{ Path string }
		}
		if err := dec.Decode(&pkg); err != nil {
			return nil, err
		}
		if pkg.Module == nil || pkg.Module.Path != module {
			continue // the standard library and dependencies are fixed by go.sum
		}
		for _, f := range slices.Concat(pkg.GoFiles, pkg.CgoFiles, pkg.IgnoredGoFiles, pkg.EmbedFiles) {
			if !strings.HasSuffix(f, "_test.go") {
				files = append(files, filepath.Join(pkg.Dir, f))
			}
		}
	}
	return files, nil
}

// prune removes all but the keep most recently used binaries of the cache
// directory (Cached touches a binary it reuses), so that one binary per edit
// ever tested does not pile up, and build directories that a killed run left
// a day ago. It ignores errors: pruning is best effort.
func prune(dir string, keep int) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	type entry struct {
		path string
		used time.Time
	}
	var binaries []entry
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			continue
		}
		path := filepath.Join(dir, e.Name())
		switch {
		case strings.HasPrefix(e.Name(), "caddy-"):
			binaries = append(binaries, entry{path, info.ModTime()})
		case strings.HasPrefix(e.Name(), ".build-") && time.Since(info.ModTime()) > 24*time.Hour:
			_ = os.RemoveAll(path) // younger ones may be concurrent builds
		}
	}
	slices.SortFunc(binaries, func(a, b entry) int { return b.used.Compare(a.used) })
	for _, b := range binaries[min(keep, len(binaries)):] {
		_ = os.Remove(b.path)
	}
}

// exe returns the file name of an executable on this system.
func exe(name string) string {
	if runtime.GOOS == "windows" {
		return name + ".exe"
	}
	return name
}
