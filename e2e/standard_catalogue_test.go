package e2e_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// senderKey is the ed25519 key TestStandardCatalogue's sender signs v1a
// entries with; strangerKey is one the gateway does not know.
var (
	senderKey   = ed25519.NewKeyFromSeed([]byte("standard-catalogue-sender-key-01"))
	strangerKey = ed25519.NewKeyFromSeed([]byte("standard-catalogue-stranger-k-02"))
)

// TestStandardCatalogue runs the whole catalogue through a real Caddy whose
// handler is standard_webhooks with a secret and a public key, headers
// auto: it refuses and accepts everything openai_webhook does, and then
// the requests only it can get: both header families at once, svix-*
// alone, and v1a entries, genuine, bogus and too many.
func TestStandardCatalogue(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	public := "whpk_" + base64.StdEncoding.EncodeToString(senderKey.Public().(ed25519.PublicKey))
	gw := startCaddy(t, e, caddyConfig{UpstreamPort: up.port, Directive: "standard_webhooks",
		Handler: catalogueHandler + "\n\t\tpublic_key {env.STANDARD_PUBLIC_KEY}",
		Env:     []string{"STANDARD_PUBLIC_KEY=" + public}})
	c := &catalogue{gw: gw, up: up}
	for _, list := range []struct {
		name   string
		probes []probe
	}{{"refused", c.refused()}, {"accepted", c.accepted()}, {"families", c.families()}, {"v1a", c.v1a()}} {
		t.Run(list.name, func(t *testing.T) {
			for _, p := range list.probes {
				t.Run(p.name, func(t *testing.T) {
					c.run(t, p)
					gw.checkHealthy(t, up)
				})
			}
		})
	}
}

// svixNames and webhookNames are the two families' headers, in the order
// id, timestamp, signature.
var (
	webhookNames = []string{"webhook-id", "webhook-timestamp", "webhook-signature"}
	svixNames    = []string{"svix-id", "svix-timestamp", "svix-signature"}
)

// withFamilies sends body with the given header families' values set
// (each a list of id, timestamp, signature); "" leaves a header out.
func (c *catalogue) withFamilies(t *testing.T, body []byte, families map[string][3]string) sent {
	t.Helper()
	req := c.gw.request(t.Context(), "", "", "", body)
	for family, values := range families {
		names := webhookNames
		if family == "svix" {
			names = svixNames
		}
		for i, v := range values {
			if v != "" {
				req.Header.Set(names[i], v)
			}
		}
	}
	return c.do(t, req, body)
}

// families are the header-family confusions: a request whose two
// families disagree could be verified under one name and read by the app
// under the other.
func (c *catalogue) families() []probe {
	genuine := func(id string, now time.Time, body []byte) [3]string {
		return [3]string{id, unix(now), good(id, unix(now), body)}
	}
	probe4 := func(name string, status int, outcome string, families func(id string, now time.Time, body []byte) map[string][3]string) probe {
		return probe{name: name, status: status, outcome: outcome,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				fs := families(id, now, body)
				s := c.withFamilies(t, body, fs)
				s.signedAs = []string{}
				for _, f := range []struct {
					name  string
					names []string
				}{{"webhook", webhookNames}, {"svix", svixNames}} {
					if _, ok := fs[f.name]; ok {
						s.signedAs = append(s.signedAs, f.names...)
					}
				}
				return s
			}}
	}
	return []probe{
		probe4("svix-* alone", http.StatusOK, outcomeForwarded, func(id string, now time.Time, body []byte) map[string][3]string {
			return map[string][3]string{"svix": genuine(id, now, body)}
		}),
		probe4("both families, alike", http.StatusOK, outcomeForwarded, func(id string, now time.Time, body []byte) map[string][3]string {
			return map[string][3]string{"webhook": genuine(id, now, body), "svix": genuine(id, now, body)}
		}),
		probe4("both families, svix-signature unsigned", http.StatusBadRequest, outcomeFraming, func(id string, now time.Time, body []byte) map[string][3]string {
			return map[string][3]string{"webhook": genuine(id, now, body), "svix": {id, unix(now), zeroEntry}}
		}),
		probe4("both families, each genuine for another delivery", http.StatusBadRequest, outcomeFraming, func(id string, now time.Time, body []byte) map[string][3]string {
			return map[string][3]string{"webhook": genuine(id, now, body), "svix": genuine(id+"_2", now, body)}
		}),
		probe4("both families, webhook-* unsigned and svix-* genuine", http.StatusBadRequest, outcomeFraming, func(id string, now time.Time, body []byte) map[string][3]string {
			return map[string][3]string{"webhook": {id, unix(now), zeroEntry}, "svix": genuine(id, now, body)}
		}),
		probe4("mixed: webhook-id with svix-timestamp and svix-signature", http.StatusBadRequest, outcomeFraming, func(id string, now time.Time, body []byte) map[string][3]string {
			g := genuine(id, now, body)
			return map[string][3]string{"webhook": {id, "", ""}, "svix": {"", g[1], g[2]}}
		}),
		probe4("svix-* unsigned", http.StatusUnauthorized, outcomeBadSig, func(id string, now time.Time, body []byte) map[string][3]string {
			return map[string][3]string{"svix": {id, unix(now), zeroEntry}}
		}),
		probe4("svix-signature missing", http.StatusUnauthorized, outcomeMalformed, func(id string, now time.Time, body []byte) map[string][3]string {
			return map[string][3]string{"svix": {id, unix(now), ""}}
		}),
		{name: "svix-id twice", status: http.StatusUnauthorized, outcome: outcomeMalformed,
			send: func(t *testing.T, id string, now time.Time) sent {
				body, ts := event(id), unix(now)
				hdr := []string{"svix-id: " + id, "svix-id: " + id, "svix-timestamp: " + ts, "svix-signature: " + good(id, ts, body),
					"Content-Type: application/json", "Content-Length: " + strconv.Itoa(len(body))}
				return c.raw(t, hdr, body, readAnswer, body)
			}},
		{name: "Connection names svix-signature", status: http.StatusBadRequest, outcome: outcomeFraming,
			send: func(t *testing.T, id string, now time.Time) sent {
				body, ts := event(id), unix(now)
				hdr := []string{"svix-id: " + id, "svix-timestamp: " + ts, "svix-signature: " + good(id, ts, body), "Connection: svix-signature",
					"Content-Type: application/json", "Content-Length: " + strconv.Itoa(len(body))}
				return c.raw(t, hdr, body, readAnswer, body)
			}},
	}
}

// v1aEntry is the v1a entry key makes for a delivery.
func v1aEntry(key ed25519.PrivateKey, id, ts string, body []byte) string {
	return "v1a," + base64.StdEncoding.EncodeToString(ed25519.Sign(key, []byte(id+"."+ts+"."+string(body))))
}

// v1a are the asymmetric signatures: genuine ones go through, bogus ones
// cost at most 4 ed25519 verifications per public key, and longer lists
// are refused before any.
func (c *catalogue) v1a() []probe {
	// entries probes a webhook-signature of the entries made by sign, and
	// that the gateway ran verifications ed25519 verifications for it.
	entries := func(name string, status int, outcome string, verifications float64, sign func(id, ts string, body []byte) []string) probe {
		return probe{name: name, status: status, outcome: outcome,
			send: func(t *testing.T, id string, now time.Time) sent {
				body := event(id)
				before := c.ed25519Verifications(t)
				s := c.withSignature(t, id, now, strings.Join(sign(id, unix(now), body), " "), body)
				if ran := c.ed25519Verifications(t) - before; ran != verifications {
					t.Errorf("%v ed25519 verifications, want %v", ran, verifications)
				}
				return s
			}}
	}
	repeat := func(n int, key ed25519.PrivateKey) func(id, ts string, body []byte) []string {
		return func(id, ts string, body []byte) []string {
			var out []string
			for range n {
				out = append(out, v1aEntry(key, id, ts, body))
			}
			return out
		}
	}
	return []probe{
		entries("genuine v1a", http.StatusOK, outcomeForwarded, 1, repeat(1, senderKey)),
		entries("v1a of another key", http.StatusUnauthorized, outcomeBadSig, 1, repeat(1, strangerKey)),
		entries("v1a signed for another timestamp", http.StatusUnauthorized, outcomeBadSig, 1, func(id, ts string, body []byte) []string {
			return []string{v1aEntry(senderKey, id, ts+"0", body)}
		}),
		entries("4 bogus v1a entries: 4 verifications", http.StatusUnauthorized, outcomeBadSig, 4, repeat(4, strangerKey)),
		entries("5 v1a entries, the genuine one last: refused unverified", http.StatusUnauthorized, outcomeMalformed, 0, func(id, ts string, body []byte) []string {
			return append(repeat(4, strangerKey)(id, ts, body), v1aEntry(senderKey, id, ts, body))
		}),
		entries("16 v1a entries", http.StatusUnauthorized, outcomeMalformed, 0, repeat(16, strangerKey)),
		entries("17 entries", http.StatusUnauthorized, outcomeMalformed, 0, func(id, ts string, body []byte) []string {
			return append(strings.Fields(strings.Repeat(zeroEntry+" ", 16)), good(id, ts, body))
		}),
		entries("4 bogus v1a entries and a genuine v1: no verification", http.StatusOK, outcomeForwarded, 0, func(id, ts string, body []byte) []string {
			return append(repeat(4, strangerKey)(id, ts, body), good(id, ts, body))
		}),
		entries("v1a of 63 bytes", http.StatusUnauthorized, outcomeMalformed, 0, func(id, ts string, body []byte) []string {
			return []string{"v1a," + base64.StdEncoding.EncodeToString(make([]byte, 63))}
		}),
		entries("v1a with S not below the group order", http.StatusUnauthorized, outcomeMalformed, 0, func(id, ts string, body []byte) []string {
			sig := ed25519.Sign(senderKey, []byte(id+"."+ts+"."+string(body)))
			for i := 32; i < 64; i++ {
				sig[i] = 0xff
			}
			return []string{"v1a," + base64.StdEncoding.EncodeToString(sig)}
		}),
		entries("v1a in unpadded base64", http.StatusUnauthorized, outcomeMalformed, 0, func(id, ts string, body []byte) []string {
			return []string{strings.TrimRight(v1aEntry(senderKey, id, ts, body), "=")}
		}),
	}
}

// ed25519Verifications is the gateway's count of ed25519 verifications.
func (c *catalogue) ed25519Verifications(t *testing.T) float64 {
	t.Helper()
	var n float64
	for _, s := range c.gw.metrics(t, "caddy_standard_webhooks_ed25519_verifications_total") {
		n += s.value
	}
	return n
}
