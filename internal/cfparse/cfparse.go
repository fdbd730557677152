// Package cfparse reads the values of Caddyfile options for the handlers and
// their stores, and of the command's flags. Its errors say what is wrong with a value without naming the
// option, which the caller adds; they never quote a value that is not the
// one parsed (an extra value can be a secret, or a URL holding one).
package cfparse

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"
)

// ErrOneValue is the error of an option given no value, or more than one.
var ErrOneValue = errors.New("takes exactly one value")

// One returns the option's one value.
func One(d *caddyfile.Dispenser) (string, error) {
	var v string
	if !d.AllArgs(&v) {
		return "", ErrOneValue
	}
	return v, nil
}

// With parses the option's one value with parse.
func With[T any](d *caddyfile.Dispenser, parse func(string) (T, error)) (T, error) {
	v, err := One(d)
	if err != nil {
		var zero T
		return zero, err
	}
	return parse(v)
}

// Duration parses a positive duration in Caddy's syntax (which adds days,
// "1d").
func Duration(v string) (caddy.Duration, error) {
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur <= 0 {
		if n, err := strconv.ParseFloat(v, 64); err == nil && n > 0 {
			return 0, fmt.Errorf("%q has no unit: write it as 5s, 500ms, 5m or 1h", v)
		}
		return 0, fmt.Errorf("%q is not a positive duration (such as 5s, 500ms, 5m or 1h)", v)
	}
	return caddy.Duration(dur), nil
}

// Count parses a positive whole number.
func Count(v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive whole number", v)
	}
	return n, nil
}

// Flag checks that a flag option was given no value.
func Flag(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return errors.New("takes no value")
	}
	return nil
}

// ErrNotHTTPURL is the error of a value that is not an http:// or
// https:// URL. It does not quote the value: a URL can hold a credential.
var ErrNotHTTPURL = errors.New("an http:// or https:// URL is required")

// HTTPURL parses an absolute http:// or https:// URL.
func HTTPURL(v string) (*url.URL, error) {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, ErrNotHTTPURL
	}
	return u, nil
}

// Size parses a size in Caddy's syntax ("64KiB", "1MB"), from 1 byte to
// limit.
func Size(v string, limit uint64) (int64, error) {
	size, err := humanize.ParseBytes(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size (such as 64KiB or 1MB)", v)
	}
	if size == 0 || size > limit {
		return 0, fmt.Errorf("%q is not between 1 byte and %s", v, humanize.IBytes(limit))
	}
	return int64(size), nil
}

// WarnIfWritten warns, on logger, when the secret of field is written into
// the config itself rather than given as a placeholder that Caddy expands
// at load: Caddy saves the config it runs to disk (autosave.json) and
// serves it on its admin API. A Caddyfile's {$NAME} counts as written: it
// is expanded when the Caddyfile is adapted, into the JSON config. The
// secret is never logged.
func WarnIfWritten(logger *zap.Logger, field, secret string) {
	if secret == "" || strings.ContainsRune(secret, '{') {
		return // none, or a placeholder: no secret has a brace
	}
	logger.Warn("a secret is written into the config, which Caddy saves to disk and serves on its admin API (GET /config/); "+
		"give it as a placeholder expanded at load instead, such as {env.NAME} or {file./run/secrets/NAME} "+
		"({$NAME} in a Caddyfile is expanded into the config too)",
		zap.String("field", field), zap.String("autosave", caddy.ConfigAutosavePath))
}
