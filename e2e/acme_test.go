package e2e_test

import (
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"

	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/freeport"
)

// Pebble, Let's Encrypt's test ACME server, and its DNS companion: pinned,
// installed from the module proxy into the user cache on first use.
const (
	pebbleModule  = "github.com/letsencrypt/pebble/v2"
	pebbleVersion = "v2.10.3"
)

// site is the real-looking name the gateway serves, resolved to 127.0.0.1
// by pebble-challtestsrv for Pebble, and by the test's client dialer.
const site = "webhooks.example.test"

// TestAutomaticHTTPS runs the gateway as production does — a site name, no
// `tls internal` — with only acme_ca and acme_ca_root pointing Caddy at a
// local Pebble, which validates the challenge for real against Caddy's
// ports. Then it delivers over HTTPS, HTTP/1.1 and HTTP/2, with a client
// that trusts only Pebble's issuing root and checks the name; a bad
// signature gets 401 over the same connection; plain HTTP redirects.
func TestAutomaticHTTPS(t *testing.T) {
	e := setup(t)
	dir := t.TempDir()
	pebble, challtestsrv := installPebble(t, e)

	// Pebble's own HTTPS endpoint needs a certificate; Caddy trusts it
	// through acme_ca_root.
	acmeRoot := writeServerCert(t, dir, "pebble-api")
	dns, dnsAdmin := freeport.Get(t), freeport.Get(t)
	start(t, exec.CommandContext(e.ctx, challtestsrv,
		"-dnsserver", fmt.Sprintf("127.0.0.1:%d", dns), "-management", fmt.Sprintf("127.0.0.1:%d", dnsAdmin),
		"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""),
		"pebble-challtestsrv", fmt.Sprintf("127.0.0.1:%d", dnsAdmin))

	httpPort, httpsPort := freeport.Get(t), freeport.Get(t)
	acme, acmeAdmin := freeport.Get(t), freeport.Get(t)
	config := map[string]any{"pebble": map[string]any{
		"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", acme),
		"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", acmeAdmin),
		"certificate":                    filepath.Join(dir, "pebble-api.crt"),
		"privateKey":                     filepath.Join(dir, "pebble-api.key"),
		"httpPort":                       httpPort,  // HTTP-01 is validated on Caddy's http_port
		"tlsPort":                        httpsPort, // TLS-ALPN-01 on its https_port
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"retryAfter":                     map[string]int{"authz": 1, "order": 1},
		"profiles":                       map[string]any{"default": map[string]any{"description": "default", "validityPeriod": 7776000}},
	}}
	raw, _ := json.Marshal(config)
	pebbleConfig := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(pebbleConfig, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(e.ctx, pebble, "-config", pebbleConfig, "-dnsserver", fmt.Sprintf("127.0.0.1:%d", dns))
	// No always-valid shortcut: Pebble validates each challenge. It only
	// skips its random delays and bad-nonce rejections, which would make
	// the test slow and flaky, not weaker.
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
	pebbleLog, _ := start(t, cmd, "pebble", fmt.Sprintf("127.0.0.1:%d", acme))

	up := startUpstream(t, e)
	gw := &caddyServer{bin: e.bin, admin: fmt.Sprintf("127.0.0.1:%d", freeport.Get(t)), dir: filepath.Join(dir, "caddy")}
	gw.config = filepath.Join(dir, "Caddyfile")
	gw.url = fmt.Sprintf("https://%s:%d", site, httpsPort)
	caddyfile := fmt.Sprintf(`{
	admin %s
	http_port %d
	https_port %d
	default_bind 127.0.0.1
	acme_ca https://127.0.0.1:%d/dir
	acme_ca_root %s
	email ops@example.test
}

%s {
	openai_webhook {env.OPENAI_WEBHOOK_SECRET}
	reverse_proxy 127.0.0.1:%d
}
`, gw.admin, httpPort, httpsPort, acme, acmeRoot, site, up.port)
	if err := os.WriteFile(gw.config, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	gw.run(t, e, fmt.Sprintf("127.0.0.1:%d", httpsPort))

	// The client trusts Pebble's issuing root alone, which Pebble made at
	// start, and checks the certificate's name.
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pebbleIssuingRoot(t, acmeAdmin, acmeRoot)) {
		t.Fatal("no issuing root from Pebble")
	}
	dialer := &net.Dialer{Timeout: ioBound}
	newClient := func(h2 bool) *http.Client {
		tr := &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			// The site's name resolves to the gateway, as DNS would make it.
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				_, port, _ := net.SplitHostPort(addr)
				return dialer.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
			},
			ForceAttemptHTTP2: h2,
		}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		return &http.Client{Transport: tr, Timeout: ioBound,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}

	// Caddy obtains the certificate in the background: wait until the
	// handshake succeeds with it. This waits; the checks come after.
	probe := newClient(false)
	webhooktest.WaitFor(t, "the certificate from Pebble", func() bool {
		resp, err := probe.Get(gw.url + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})

	// Pebble validated a challenge itself, against Caddy: HTTP-01 on its
	// http_port (Pebble logs the URL) or TLS-ALPN-01 on its https_port
	// (Caddy logs the key authentication certificate it served).
	log := pebbleLog.String()
	validatedHTTP := strings.Contains(log, fmt.Sprintf("Attempting to validate w/ HTTP: http://%s:%d/.well-known/acme-challenge/", site, httpPort))
	validatedTLS := strings.Contains(gw.output.String(), `"msg":"served key authentication certificate","server_name":"`+site+`","challenge":"tls-alpn-01"`)
	if !(validatedHTTP || validatedTLS) || !strings.Contains(log, "set VALID by completed challenge") {
		t.Fatalf("Pebble did not validate a challenge against Caddy:\n%s", log)
	}

	for _, tc := range []struct {
		name  string
		h2    bool
		proto string
	}{{"HTTP/1.1", false, "HTTP/1.1"}, {"HTTP/2", true, "HTTP/2.0"}} {
		t.Run(tc.name, func(t *testing.T) {
			client := newClient(tc.h2)
			var conns []net.Conn
			trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { conns = append(conns, info.Conn) }}
			post := func(id string, body []byte, sig string) (*http.Response, []byte) {
				t.Helper()
				req := gw.delivery(t, id, time.Now(), body)
				if sig != "" {
					req.Header.Set("webhook-signature", sig)
				}
				req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				answer, _ := io.ReadAll(resp.Body)
				return resp, answer
			}
			id := "msg_https_" + slug(tc.name)
			resp, answer := post(id, event(id), "")
			if resp.StatusCode != http.StatusOK || resp.Proto != tc.proto {
				t.Fatalf("a delivery over %s: %s %s %.200q", tc.name, resp.Proto, resp.Status, answer)
			}
			cert := resp.TLS.PeerCertificates[0]
			if err := cert.VerifyHostname(site); err != nil || !strings.Contains(cert.Issuer.CommonName, "Pebble") {
				t.Fatalf("certificate for %v from %q: %v", cert.DNSNames, cert.Issuer.CommonName, err)
			}
			var rec record
			if err := json.Unmarshal(answer, &rec); err != nil {
				t.Fatalf("the upstream's answer %.200q: %v", answer, err)
			}
			rec.checkBody(t, event(id))

			resp, _ = post("msg_https_bad_"+slug(tc.name), event(id), zeroEntry)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("a bad signature over %s: %s, want 401", tc.name, resp.Status)
			}
			if len(conns) != 2 || conns[0] != conns[1] {
				t.Fatalf("the two requests went over %d connections, want one", len(distinct(conns)))
			}
		})
	}

	t.Run("plain HTTP redirects", func(t *testing.T) {
		resp, err := newClient(false).Get(fmt.Sprintf("http://%s:%d/webhooks/openai", site, httpPort))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		// Caddy takes its https_port to be 443 from outside (a port
		// forward), so the redirect names no port.
		if want := "https://" + site + "/webhooks/openai"; resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != want {
			t.Fatalf("plain HTTP: %s to %q, want 308 to %s", resp.Status, resp.Header.Get("Location"), want)
		}
	})
}

// distinct returns the different connections of conns.
func distinct(conns []net.Conn) map[net.Conn]bool {
	m := map[net.Conn]bool{}
	for _, c := range conns {
		m[c] = true
	}
	return m
}

// installPebble returns pebble and pebble-challtestsrv, installed with go
// install into the user cache the first time.
func installPebble(t *testing.T, e *e2e) (pebble, challtestsrv string) {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(cache, "caddy-openai-webhook", "pebble-"+pebbleVersion)
	pebble, challtestsrv = filepath.Join(bin, "pebble"), filepath.Join(bin, "pebble-challtestsrv")
	if _, err := os.Stat(challtestsrv); err == nil {
		return pebble, challtestsrv
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(bin), ".pebble-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	cmd := exec.CommandContext(e.ctx, "go", "install",
		pebbleModule+"/cmd/pebble@"+pebbleVersion, pebbleModule+"/cmd/pebble-challtestsrv@"+pebbleVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+tmp)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("installing Pebble %s: %v\n%s", pebbleVersion, err, out)
	}
	// A rename is atomic: a concurrent run finds the whole directory or none.
	if err := os.Rename(tmp, bin); err != nil && !os.IsExist(err) {
		if _, statErr := os.Stat(challtestsrv); statErr != nil {
			t.Fatal(err)
		}
	}
	return pebble, challtestsrv
}

// pebbleIssuingRoot fetches the root Pebble issues under, made when it
// started, from its management endpoint (which serves TLS with the
// certificate signed by caFile).
func pebbleIssuingRoot(t *testing.T, adminPort int, caFile string) []byte {
	t.Helper()
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{Timeout: ioBound, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/roots/0", adminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	root, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("Pebble's issuing root: %s %v", resp.Status, err)
	}
	return root
}

// writeServerCert writes name.crt and name.key, a certificate for
// 127.0.0.1 signed by a CA of its own, and returns the CA's PEM file.
func writeServerCert(t *testing.T, dir, name string) string {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for file, block := range map[string]*pem.Block{
		name + "-ca.crt": {Type: "CERTIFICATE", Bytes: caDER},
		name + ".crt":    {Type: "CERTIFICATE", Bytes: leafDER},
		name + ".key":    {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, file), pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, name+"-ca.crt")
}
