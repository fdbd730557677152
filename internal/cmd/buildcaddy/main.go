// Command buildcaddy builds Caddy with this module the way the end-to-end
// tests do, with xcaddy at the versions in xcaddy.json, reusing the cached
// binary when the sources have not changed.
//
//	go run ./internal/cmd/buildcaddy          # prints the cached binary's path
//	go run ./internal/cmd/buildcaddy -o PATH  # also copies it to PATH
//	go run ./internal/cmd/buildcaddy -race    # with the race detector
//
// It works from any directory of the repository. Build output goes to
// standard error.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"

	"github.com/webhookgate/caddy-openai-webhook/internal/caddybuild"
)

func main() {
	output := flag.String("o", "", "copy the binary to this `path` and print it instead of the cached one")
	race := flag.Bool("race", false, "build with the race detector")
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	path, err := run(ctx, *output, caddybuild.Options{Race: *race})
	if err != nil {
		fmt.Fprintln(os.Stderr, "buildcaddy:", err)
		os.Exit(1)
	}
	fmt.Println(path)
}

func run(ctx context.Context, output string, opts caddybuild.Options) (string, error) {
	root, err := caddybuild.FindRoot(".")
	if err != nil {
		return "", err
	}
	path, err := caddybuild.Cached(ctx, root, opts, os.Stderr)
	if err != nil || output == "" {
		return path, err
	}
	return copyExecutable(path, output)
}

// copyExecutable copies src to dst through a temporary file in dst's
// directory, so that dst is never a half-written binary.
func copyExecutable(src, dst string) (string, error) {
	dst, err := filepath.Abs(dst)
	if err != nil {
		return "", err
	}
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.CreateTemp(filepath.Dir(dst), ".buildcaddy-")
	if err != nil {
		return "", err
	}
	defer os.Remove(out.Name()) // fails harmlessly once renamed
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(out.Name(), 0o755)
	}
	if err == nil {
		err = os.Rename(out.Name(), dst)
	}
	return dst, err
}
