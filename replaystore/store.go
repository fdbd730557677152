// Package replaystore defines where openai_webhook remembers the
// webhook-ids of delivered requests, and provides two stores, as Caddy
// modules in the namespace http.openai_webhook.replay_stores:
// memory (the default: one Caddy process, kept across config reloads) and
// redis (shared by a fleet, kept across restarts). Another store is a
// Caddy module in the same namespace implementing Store.
package replaystore

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"
)

// State is what a store knows of an id when it is claimed.
type State int

const (
	// Claimed: the id was unknown, or its last claim's lease ended, and
	// now belongs to the caller, who forwards the delivery and then
	// calls Delivered or Release with the Ticket, or leaves the claim to
	// end with its lease.
	Claimed State = iota
	// InFlight: another claim on the id holds an unexpired lease.
	InFlight
	// Delivered: the id was delivered within the replay window.
	Delivered
	// Unchecked: the store could not tell (its error says why) and is
	// configured to let the delivery through unchecked rather than refuse
	// it. Nothing is to be settled.
	Unchecked State = -1
)

// Ticket identifies one claim, so that only its holder settles it: a claim
// whose lease ended may have been taken over by another request, on this
// instance or another.
type Ticket uint64

// Endpoint is what a store is told of the handler it serves.
type Endpoint struct {
	// Fingerprints identify the handler's secrets, one each (see
	// Fingerprint), without revealing them. A store keeps the ids of a
	// handler whose secrets share a fingerprint with an earlier
	// handler's, so that rotating a secret keeps the ids, and separates
	// handlers with no secret in common.
	Fingerprints []string
	// Window is how long a delivered id is remembered.
	Window time.Duration
}

// Store is a replay store: a Caddy module in the namespace
// http.openai_webhook.replay_stores. Only ids of verified
// deliveries reach it, so nobody without a signing secret can fill it. Its
// methods are safe for concurrent use; the context of each call bounds it.
type Store interface {
	// Open binds the store to the handler's endpoint. The handler calls
	// it once, while it is provisioned, before any other method.
	Open(e Endpoint) error
	// Claim reports the id's state, claiming it if it is unknown or its
	// last claim's lease ended. When the store cannot answer, it returns
	// the error, with the state Unchecked if it is configured to let
	// deliveries through then.
	Claim(ctx context.Context, id string) (State, Ticket, error)
	// Delivered records that the claim's delivery reached the app.
	Delivered(ctx context.Context, id string, t Ticket) error
	// Release ends the claim: its delivery did not reach the app, so the
	// sender's retry is forwarded.
	Release(ctx context.Context, id string, t Ticket) error
}

// fingerprintLabel is what Fingerprint signs: a fixed text, so that a
// fingerprint is the same wherever the secret is, and tells nothing of it.
const fingerprintLabel = "caddy-openai-webhook replay scope v1"

// Fingerprint returns the fingerprint of a signing key (the decoded
// secret): an HMAC of a fixed text under the key, so it can be stored and
// compared where the secret must not be.
func Fingerprint(key []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(fingerprintLabel))
	return hex.EncodeToString(mac.Sum(nil)[:16])
}

// errNotOpen is a store used before Open: a bug in the handler.
var errNotOpen = errors.New("replay store used before Open")

// DefaultInFlightTTL is how long a claim stays in flight when nobody
// settles it: a sender that hung up, or an instance that died mid-forward.
const DefaultInFlightTTL = time.Minute
