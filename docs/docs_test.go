// Package docs_test checks the documentation against the repository: its
// Caddyfile snippets (TestCaddyfileSnippets) and README.md's layout table
// (TestLayoutTable).
//
// TestCaddyfileSnippets finds every ```caddyfile fenced block in the
// documentation (README.md, docs/*.md and examples/*/README.md, found by
// walking the repository, so a new page there is covered without touching
// this test) and every standalone Caddyfile (Caddyfile.example,
// examples/*/Caddyfile, internal/demo/Caddyfile), and checks each of them:
//
//   - It must be exactly what `caddy fmt` prints: caddyfile.Format of the
//     block, byte for byte, including the single trailing newline that
//     caddy fmt ends its output with. (A fenced block is its lines between
//     the fences, each ending in a newline; the indentation of an indented
//     fence, as in a list item, is removed from its lines first.)
//   - A complete config must adapt with the caddyfile adapter without error
//     and without warnings (the adapter warns, for example, "Caddyfile input
//     is not formatted").
//   - A fragment, a piece of a config such as a lone `openai_webhook { ... }`
//     directive or `replay_store redis { ... }` subdirective, is wrapped into
//     a site and must adapt the same way.
//
// See classify for how a block is told to be a synopsis, a fragment or a
// complete config. A synopsis, a block with <placeholders> such as <secret>
// or <duration>, is not a config at all: it is exempt from both checks.
//
// Failures name the file and the line of the block's opening fence (the
// subtest is named file:line too), the first line that differs, and the
// block as caddy fmt would print it, ready to paste back into the fence.
package docs_test

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/webhookgate/caddy-openai-webhook"
	_ "github.com/webhookgate/caddy-openai-webhook/replaystore"
	_ "github.com/webhookgate/caddy-openai-webhook/webhookqueue"
)

// repoRoot is the repository root, relative to this package's directory
// (go test runs a test in its package's directory).
const repoRoot = ".."

// markdownGlobs are the documentation pages whose ```caddyfile blocks are
// checked, and caddyfileGlobs the standalone Caddyfiles, as path.Match
// patterns relative to the repository root. Each pattern must match at least
// one file, so that a rename cannot silently drop a file from the check.
var (
	markdownGlobs  = []string{"README.md", "docs/*.md", "examples/*/README.md"}
	caddyfileGlobs = []string{"Caddyfile.example", "examples/*/Caddyfile", "internal/demo/Caddyfile"}
)

// snippet is one Caddyfile to check.
type snippet struct {
	file string // path relative to the repository root, with slashes
	line int    // line of the opening fence; 0 for a standalone Caddyfile
	body []byte // the Caddyfile text, each line ending in "\n"
	// standalone is true for a Caddyfile file, which is always checked as
	// a complete config.
	standalone bool
}

func (s snippet) name() string {
	if s.line == 0 {
		return s.file
	}
	return fmt.Sprintf("%s:%d", s.file, s.line)
}

// kind is what classify makes of a block.
type kind int

const (
	complete kind = iota // a whole Caddyfile: adapted as it is
	fragment             // a directive or subdirective: adapted inside a site
	synopsis             // syntax with <placeholders>: not checked
)

func (k kind) String() string {
	return [...]string{"complete config", "fragment", "synopsis"}[k]
}

// placeholder matches a synopsis placeholder such as <secret>, <duration> or
// <options>. Caddy's own placeholders are in braces ({env.X}), and the
// Caddyfile has no other use for a lowercase word in angle brackets.
var placeholder = regexp.MustCompile(`<[a-z][a-z0-9_.-]*>`)

// bareWord matches a directive or subdirective name: openai_webhook, queue,
// replay_store, reverse_proxy, log...
var bareWord = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// classify tells a synopsis, a fragment and a complete config apart.
//
//   - A block with a <placeholder> in a token is a synopsis. Comments are
//     not tokens: a config whose comment says "tls_ca <file>" is checked.
//   - Otherwise, the block's first token (comments are not tokens) decides.
//     A complete config starts either with the global options block, a lone
//     "{", or with a site address: a host name with a dot (example.com), an
//     address with a scheme, a port or a path (http://..., :8080), a
//     {$ENV} placeholder, or localhost. A fragment starts with a directive
//     or subdirective name, which is a bare lowercase word (openai_webhook,
//     queue, replay_store): no dot, colon, slash or brace. The only bare
//     word that is also a common site address, localhost, counts as an
//     address. Telling them apart by the shape of the first token needs no
//     list of directive names to keep up to date, and a misjudged block
//     fails loudly rather than passing: a fragment adapted as a site has a
//     site with no directives and an address like "queue", which the
//     fragment's own body then fails to parse as directives.
func classify(body []byte) (kind, error) {
	tokens, err := caddyfile.Tokenize(body, "")
	if err != nil {
		return complete, err
	}
	if len(tokens) == 0 {
		return complete, fmt.Errorf("the block has no tokens")
	}
	for _, tok := range tokens {
		if placeholder.MatchString(tok.Text) {
			return synopsis, nil
		}
	}
	if first := tokens[0].Text; bareWord.MatchString(first) && first != "localhost" {
		return fragment, nil
	}
	return complete, nil
}

// wrappers place a fragment in a complete config, one nesting level each: a
// fragment must adapt cleanly in at least one of them. Its first token says
// what it is, but the test does not keep a list of which name belongs where:
// a site directive (openai_webhook, log, ...) adapts only in the first, a
// subdirective of openai_webhook (queue, replay_store, secret, ...) only in
// the second. A fragment nested deeper (the store of a queue) must be
// written with its parent, or get a wrapper here.
var wrappers = []struct {
	name   string
	before string // its lines are indented by one tab per open brace
	after  string
	indent int
}{
	{"in a site", "localhost {\n", "}\n", 1},
	{"in openai_webhook, in a site", "localhost {\n\topenai_webhook {\n\t\tsecret {env.OPENAI_WEBHOOK_SECRET}\n", "\t}\n}\n", 2},
}

// wrap indents body by indent tabs (blank lines stay empty, as caddy fmt
// prints them) and puts it between before and after.
func wrap(before string, body []byte, indent int, after string) []byte {
	var b bytes.Buffer
	b.WriteString(before)
	for _, line := range strings.SplitAfter(string(body), "\n") {
		if strings.TrimSpace(line) != "" {
			b.WriteString(strings.Repeat("\t", indent))
		}
		b.WriteString(line)
	}
	b.WriteString(after)
	return b.Bytes()
}

// adapt adapts a Caddyfile and returns an error for an adapter error, any
// warning, or a secret written into the config (a reader copies the
// snippet: the handler would warn that Caddy saves it to disk). Lines in
// the message are the Caddyfile's own, counted from 1.
func adapt(filename string, body []byte) error {
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		return fmt.Errorf("no caddyfile adapter registered")
	}
	config, warnings, err := adapter.Adapt(body, map[string]any{"filename": filename})
	if err != nil {
		return fmt.Errorf("adapt: %v", err)
	}
	if bytes.Contains(config, []byte(`"whsec_`)) {
		return fmt.Errorf("a secret is written into the config: give it as {env.NAME} or {file.path}")
	}
	if len(warnings) > 0 {
		var msgs []string
		for _, w := range warnings {
			msgs = append(msgs, w.String())
		}
		return fmt.Errorf("adapt warnings:\n\t%s", strings.Join(msgs, "\n\t"))
	}
	return nil
}

// fence is a fenced code block's opening line: its indentation, its fence
// (three or more backticks or tildes) and its info string.
var fence = regexp.MustCompile("^( {0,3})(`{3,}|~{3,})[ \t]*([^`]*)$")

// markdownSnippets returns the ```caddyfile blocks of a Markdown page.
// Every fenced block is followed, whatever its language, so that a fence
// inside another block (a ```caddyfile shown in a ````markdown example) is
// not taken for a block of its own.
func markdownSnippets(file string, text []byte) ([]snippet, error) {
	var (
		out    []snippet
		open   bool
		marker string // the opening fence: its closing fence is at least as long
		indent int
		keep   bool // whether the open block is a caddyfile block
		start  int
		body   bytes.Buffer
	)
	lines := strings.Split(string(text), "\n")
	for i, line := range lines {
		line = strings.TrimSuffix(line, "\r")
		if !open {
			m := fence.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			open, indent, marker, start = true, len(m[1]), m[2], i+1
			info := strings.Fields(m[3])
			keep = len(info) > 0 && strings.EqualFold(info[0], "caddyfile")
			body.Reset()
			continue
		}
		trimmed := strings.TrimLeft(line, " ")
		if len(line)-len(trimmed) <= 3 && strings.HasPrefix(trimmed, marker) &&
			strings.Trim(trimmed, marker[:1]+" \t") == "" {
			open = false
			if keep {
				out = append(out, snippet{file: file, line: start, body: bytes.Clone(body.Bytes())})
			}
			continue
		}
		// Remove up to the fence's indentation, as CommonMark does.
		for n := 0; n < indent && strings.HasPrefix(line, " "); n++ {
			line = line[1:]
		}
		body.WriteString(line)
		body.WriteByte('\n')
	}
	if open && keep {
		return nil, fmt.Errorf("%s:%d: the ```caddyfile block is never closed", file, start)
	}
	return out, nil
}

// collect walks the repository and returns the snippets to check.
func collect(t *testing.T) []snippet {
	t.Helper()
	matched := map[string]int{}
	var out []snippet
	err := filepath.WalkDir(repoRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(repoRoot, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		isMarkdown, isCaddyfile := matchAny(markdownGlobs, rel, matched), matchAny(caddyfileGlobs, rel, matched)
		if !isMarkdown && !isCaddyfile {
			return nil
		}
		text, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if isCaddyfile {
			out = append(out, snippet{file: rel, body: text, standalone: true})
			return nil
		}
		s, err := markdownSnippets(rel, text)
		out = append(out, s...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range append(append([]string(nil), markdownGlobs...), caddyfileGlobs...) {
		if matched[g] == 0 {
			t.Errorf("no file matches %q: update markdownGlobs or caddyfileGlobs", g)
		}
	}
	return out
}

func matchAny(globs []string, rel string, matched map[string]int) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, rel); ok {
			matched[g]++
			return true
		}
	}
	return false
}

// formatDiff describes how got differs from want, both Caddyfiles: the
// first differing line, counted in the file (firstLine is the file line of
// the body's first line), with tabs and trailing spaces made visible, and
// then the whole of want.
func formatDiff(firstLine int, got, want []byte) string {
	g := strings.Split(string(got), "\n")
	w := strings.Split(string(want), "\n")
	i := 0
	for i < len(g) && i < len(w) && g[i] == w[i] {
		i++
	}
	line := func(lines []string) string {
		if i >= len(lines) {
			return "(end of block)"
		}
		if i == len(lines)-1 && lines[i] == "" {
			return "(end of block)"
		}
		return fmt.Sprintf("%q", lines[i])
	}
	return fmt.Sprintf("not what caddy fmt prints; first difference at line %d:\n"+
		"\tgot:  %s\n\twant: %s\n"+
		"want (caddy fmt output; indentation is tabs):\n%s",
		firstLine+i, line(g), line(w), want)
}

func TestCaddyfileSnippets(t *testing.T) {
	snippets := collect(t)
	// The documentation had 23 blocks and 4 standalone Caddyfiles when
	// this test was written: finding far fewer means the walk or the fence
	// parser broke, not that the docs lost their examples.
	if len(snippets) < 20 {
		t.Fatalf("found only %d Caddyfile snippets: is the walk broken?", len(snippets))
	}
	counts := map[kind]int{}
	for _, s := range snippets {
		t.Run(s.name(), func(t *testing.T) {
			k := complete
			if !s.standalone {
				var err error
				if k, err = classify(s.body); err != nil {
					t.Fatalf("%s: %v", s.name(), err)
				}
			}
			counts[k]++
			if k == synopsis {
				t.Skipf("%s: synopsis with <placeholders>: not checked", s.name())
			}

			firstLine := s.line + 1 // file line of the body's first line
			if s.standalone {
				firstLine = 1
			}
			if want := caddyfile.Format(s.body); !bytes.Equal(s.body, want) {
				t.Errorf("%s: %s", s.name(), formatDiff(firstLine, s.body, want))
			}

			// Adapter messages give lines in the Caddyfile adapted: name it
			// after the block, whose first line is the line after the fence.
			filename := s.file
			if !s.standalone {
				filename = s.name() + " block"
			}
			if k == complete {
				if err := adapt(filename, s.body); err != nil {
					t.Errorf("%s: complete config: %v\n(block line 1 is file line %d)", s.name(), err, firstLine)
				}
				return
			}
			var errs []string
			for _, w := range wrappers {
				err := adapt(filename, wrap(w.before, s.body, w.indent, w.after))
				if err == nil {
					return
				}
				errs = append(errs, fmt.Sprintf("%s: %v", w.name, err))
			}
			t.Errorf("%s: fragment adapts in no wrapper (the block's lines are wrapped, so lines in the messages are off by the wrapper's %d or %d):\n%s",
				s.name(), strings.Count(wrappers[0].before, "\n"), strings.Count(wrappers[1].before, "\n"),
				strings.Join(errs, "\n"))
		})
	}
	t.Logf("checked %d snippets: %d complete configs, %d fragments, %d synopses (skipped)",
		len(snippets), counts[complete], counts[fragment], counts[synopsis])
}

// layoutFile is the page whose layoutHeading section holds the table of
// the repository's layout, relative to the repository root.
const (
	layoutFile    = "README.md"
	layoutHeading = "## Layout"
)

// layoutPath matches a backticked path in a cell of the layout table.
var layoutPath = regexp.MustCompile("`([^`]+)`")

// layoutRows returns the paths that the first cell of each row of the
// layout table names (backticked, several separated by commas), and an
// error for a page without the section, a section without a table or a
// row that names no path. The header row and the delimiter row are skipped.
func layoutRows(text string) ([]string, error) {
	var (
		in    bool
		rows  int
		paths []string
	)
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.HasPrefix(line, "#") {
			if in {
				break // the next heading ends the section
			}
			in = strings.TrimSpace(line) == layoutHeading
			continue
		}
		if !in || !strings.HasPrefix(line, "|") {
			continue
		}
		rows++
		if rows <= 2 { // | path | what |, then |---|---|
			continue
		}
		first, _, _ := strings.Cut(strings.TrimPrefix(line, "|"), "|")
		found := layoutPath.FindAllStringSubmatch(first, -1)
		if len(found) == 0 {
			return nil, fmt.Errorf("%s:%d: a row of the layout table with no `path` in its first cell: %s", layoutFile, i+1, line)
		}
		for _, m := range found {
			paths = append(paths, m[1])
		}
	}
	switch {
	case !in:
		return nil, fmt.Errorf("%s has no %q section", layoutFile, layoutHeading)
	case len(paths) == 0:
		return nil, fmt.Errorf("%s: the %q section has no table rows", layoutFile, layoutHeading)
	}
	return paths, nil
}

// TestLayoutTable: README.md's layout table names only paths that exist (a
// path ending in a slash is a directory, any other a file), and leaves out
// no top-level Go file that is not a test, nor any top-level directory
// (hidden ones, testdata and what .gitignore names at the top, such as the
// bench scripts' profiles, may be left out): a directory counts as named
// when the table names it or a path inside it (internal/ by
// internal/verifier/).
func TestLayoutTable(t *testing.T) {
	text, err := os.ReadFile(filepath.Join(repoRoot, layoutFile))
	if err != nil {
		t.Fatal(err)
	}
	paths, err := layoutRows(string(text))
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for _, p := range paths {
		clean := strings.TrimSuffix(p, "/")
		named[clean] = true
		info, err := os.Stat(filepath.Join(repoRoot, filepath.FromSlash(clean)))
		switch {
		case err != nil:
			t.Errorf("%s's layout table names %s, which does not exist", layoutFile, p)
		case strings.HasSuffix(p, "/") && !info.IsDir():
			t.Errorf("%s's layout table names %s as a directory, but it is a file: write it without the slash", layoutFile, p)
		case !strings.HasSuffix(p, "/") && info.IsDir():
			t.Errorf("%s's layout table names %s, a directory: write it as %s/", layoutFile, p, p)
		}
	}

	ignored, err := ignoredAtTop()
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case e.IsDir():
			if strings.HasPrefix(name, ".") || name == "testdata" || named[name] || ignored[name] {
				continue
			}
			inside := false
			for p := range named {
				if strings.HasPrefix(p, name+"/") {
					inside = true
					break
				}
			}
			if !inside {
				t.Errorf("%s's layout table leaves out the directory %s/", layoutFile, name)
			}
		case strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go") && !named[name]:
			t.Errorf("%s's layout table leaves out %s", layoutFile, name)
		}
	}
}

// ignoredAtTop returns the top-level names the repository's .gitignore
// anchors there ("/name" or "/name/"): files of a user's own, never in a
// clone.
func ignoredAtTop() (map[string]bool, error) {
	text, err := os.ReadFile(filepath.Join(repoRoot, ".gitignore"))
	if err != nil {
		return nil, err
	}
	ignored := map[string]bool{}
	for line := range strings.Lines(string(text)) {
		name, anchored := strings.CutPrefix(strings.TrimSpace(line), "/")
		name = strings.TrimSuffix(name, "/")
		if anchored && name != "" && !strings.ContainsAny(name, "/*?[!") {
			ignored[name] = true
		}
	}
	return ignored, nil
}
