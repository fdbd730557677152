// Package redact shows configured values in errors and status output
// without the credentials they may hold.
package redact

import "net/url"

// mask replaces what is hidden.
const mask = "xxxxx"

// URL is u as an error or a status page may show it: its password, a user
// name given without a password (often a token, as in https://TOKEN@host),
// and its query (?token=...) are each replaced by xxxxx.
func URL(u *url.URL) string {
	shown := *u
	if shown.User != nil {
		if _, ok := shown.User.Password(); ok {
			shown.User = url.UserPassword(shown.User.Username(), mask)
		} else {
			shown.User = url.User(mask)
		}
	}
	if shown.RawQuery != "" {
		shown.RawQuery = mask
	}
	return shown.String()
}
