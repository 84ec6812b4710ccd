package kubetest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// StartTimeout bounds how long starting etcd, or kube-apiserver until
// /readyz answers 200, or installing the CRDs may take (generous: the
// machines these tests run on are small and shared).
const StartTimeout = 2 * time.Minute

// stopGrace is how long a stopping program gets after SIGTERM before the
// process group is killed.
const stopGrace = 15 * time.Second

// Server is a running etcd and kube-apiserver. Its fields are set when it
// is returned and never change, across Stop and Start too. Stop, Start and
// Restart must not be called concurrently with each other; Do may be
// called from any goroutine.
type Server struct {
	// Host is the API server's URL, https://127.0.0.1:PORT.
	Host string
	// Token is the admin bearer token (user admin, group system:masters).
	Token string
	// CAFile is the PEM file of the CA that signed the serving certificate.
	CAFile string
	// Kubeconfig is the path of a kubeconfig file with Host, the CA and the
	// admin token, for client-go's clientcmd and for kubectl.
	Kubeconfig string
	// Dir holds the server's data, credentials and logs (etcd.log,
	// kube-apiserver.log).
	Dir string

	bin     binaries
	apiArgs []string
	apiLog  string
	etcd    *process
	api     *process // nil while stopped
	client  *http.Client
	closed  bool
}

// Start starts an etcd and a kube-apiserver with data in t.TempDir(), ready
// for requests, and stops both when the test and its subtests end,
// whether they passed or failed. Without the binaries it skips the test
// (fails it with CI=true). Tests in one package should share one server:
// see Shared.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := findBinaries()
	if err != nil {
		skipOrFatal(t, err)
	}
	s, err := launch(bin, t.TempDir())
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Cleanup(s.close)
	return s
}

// launch starts etcd and kube-apiserver with everything in dir and
// prepares the cluster. On error nothing it started is left running.
func launch(bin binaries, dir string) (_ *Server, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	crds, err := istioCRDs()
	if err != nil {
		return nil, err
	}
	gwCRDs, err := gatewayAPICRDs()
	if err != nil {
		return nil, err
	}
	crds = append(crds, gwCRDs...)
	creds, err := writeCredentials(dir)
	if err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(creds.caPEM)
	s := &Server{
		Token:      creds.token,
		CAFile:     creds.caFile,
		Kubeconfig: filepath.Join(dir, "kubeconfig"),
		Dir:        dir,
		bin:        bin,
		apiLog:     filepath.Join(dir, "kube-apiserver.log"),
		client: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: pool},
				// No idle connections: a Server that outlives a test
				// (Shared) leaves no goroutines behind for leak checks.
				DisableKeepAlives: true,
			},
		},
	}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	etcdURL, err := s.startEtcd(ctx)
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s.Host = "https://127.0.0.1:" + strconv.Itoa(port)
		s.apiArgs = []string{
			bin.apiserver,
			"--etcd-servers=" + etcdURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--tls-cert-file=" + creds.certFile,
			"--tls-private-key-file=" + creds.keyFile,
			"--token-auth-file=" + creds.tokens,
			"--authorization-mode=RBAC",
			"--service-account-key-file=" + creds.saKey,
			"--service-account-signing-key-file=" + creds.saKey,
			"--service-account-issuer=https://kubernetes.default.svc",
			"--service-cluster-ip-range=10.96.0.0/16",
			// The reconciler would publish 127.0.0.1 as the endpoint of
			// Service "kubernetes", which EndpointSlice validation refuses
			// (loopback), and log that error forever.
			"--endpoint-reconciler-type=none",
		}
		err = s.startAPIServer(ctx)
		if err == nil {
			break
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return nil, err
		}
	}
	if err := writeKubeconfig(s.Kubeconfig, s.Host, creds.caPEM, s.Token); err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	if err := s.createDefaultServiceAccount(ctx); err != nil {
		return nil, err
	}
	if err := s.installCRDs(ctx, crds); err != nil {
		return nil, fmt.Errorf("istio CRDs: %w", err)
	}
	return s, nil
}

// startEtcd starts etcd on two free loopback ports (retrying with others
// if a port was taken meanwhile) and waits until it is healthy. It returns
// the client URL.
func (s *Server) startEtcd(ctx context.Context) (string, error) {
	logPath := filepath.Join(s.Dir, "etcd.log")
	for attempt := 1; ; attempt++ {
		client, err := freePort()
		if err != nil {
			return "", err
		}
		peer, err := freePort()
		if err != nil {
			return "", err
		}
		clientURL := "http://127.0.0.1:" + strconv.Itoa(client)
		peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
		s.etcd, err = startProcess("etcd", logPath, []string{
			s.bin.etcd,
			"--name=kubetest",
			"--data-dir=" + filepath.Join(s.Dir, "etcd"),
			"--listen-client-urls=" + clientURL,
			"--advertise-client-urls=" + clientURL,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=kubetest=" + peerURL,
			"--listen-metrics-urls=",
			"--logger=zap",
			"--log-level=warn",
		})
		if err != nil {
			return "", err
		}
		err = waitHealthy(ctx, s.etcd, func() bool {
			resp, err := http.Get(clientURL + "/health")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode == http.StatusOK && bytes.Contains(b, []byte(`"true"`))
		})
		if err == nil {
			return clientURL, nil
		}
		_ = s.etcd.stop(stopGrace)
		s.etcd = nil
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return "", err
		}
	}
}

// startAPIServer starts kube-apiserver with s.apiArgs and waits until
// /readyz answers 200.
func (s *Server) startAPIServer(ctx context.Context) error {
	p, err := startProcess("kube-apiserver", s.apiLog, s.apiArgs)
	if err != nil {
		return err
	}
	err = waitHealthy(ctx, p, func() bool {
		code, _, err := s.Do(ctx, http.MethodGet, "/readyz", nil)
		return err == nil && code == http.StatusOK
	})
	if err != nil {
		_ = p.stop(stopGrace)
		return err
	}
	s.api = p
	return nil
}

// waitHealthy polls healthy until it returns true, p exits, or ctx ends;
// the error for the latter two carries the end of p's log.
func waitHealthy(ctx context.Context, p *process, healthy func() bool) error {
	for !healthy() {
		if p.exited() {
			return fmt.Errorf("%s exited while starting; %s", p.name, p.tail(40))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w; %s", p.name, ctx.Err(), p.tail(40))
		case <-time.After(50 * time.Millisecond): // poll interval
		}
	}
	return nil
}

// createDefaultServiceAccount creates ServiceAccount default in namespace
// default, which pods use unless they name another. The controller
// manager would create it; there is none. Retried until the namespace
// exists.
func (s *Server) createDefaultServiceAccount(ctx context.Context) error {
	body := []byte(`{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default","namespace":"default"}}`)
	for {
		code, resp, err := s.Do(ctx, http.MethodPost, "/api/v1/namespaces/default/serviceaccounts", body)
		if err == nil && (code == http.StatusCreated || code == http.StatusConflict) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("create ServiceAccount default/default: %v, HTTP %d: %s", err, code, resp)
		case <-time.After(50 * time.Millisecond): // poll interval
		}
	}
}

// Do sends one request to the API server with the admin token and returns
// the status code and the body. path is absolute ("/api/v1/..."); body, if
// not nil, is sent as application/json, or as
// application/merge-patch+json for PATCH.
func (s *Server) Do(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	return s.DoAs(ctx, s.Token, method, path, body)
}

// DoAs is Do with another bearer token, such as a service account's from
// a TokenRequest, to see what the API server lets that identity do.
func (s *Server) DoAs(ctx context.Context, token, method, path string, body []byte) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.Host+path, r)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		ct := "application/json"
		if method == http.MethodPatch {
			ct = "application/merge-patch+json"
		}
		req.Header.Set("Content-Type", ct)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Stop stops kube-apiserver (SIGTERM, then SIGKILL after 15 s); etcd and
// its data stay. Clients see connections refused on Host until Start. A
// stopped server stays stopped only until the end of the test that owns
// it.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.api == nil {
		return
	}
	err := s.api.stop(stopGrace)
	s.api = nil
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
}

// Start starts a stopped kube-apiserver again on the same address, port
// and credentials, with etcd's data as it was, and waits until it is ready.
// Kubeconfig stays valid and clients reconnect by themselves. It does
// nothing if the API server is running.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	if err := s.start(); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
}

// start is Start without a test.
func (s *Server) start() error {
	if s.closed {
		return errors.New("server closed")
	}
	if s.api != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	return s.startAPIServer(ctx)
}

// Restart is Stop followed by Start.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop(t)
	s.Start(t)
}

// Running reports whether kube-apiserver is running (not stopped).
func (s *Server) Running() bool { return s.api != nil }

// close stops kube-apiserver and etcd for good. Errors go to stderr: there
// is nothing left to act on them.
func (s *Server) close() {
	if s.closed {
		return
	}
	s.closed = true
	for _, p := range []*process{s.api, s.etcd} {
		if p == nil {
			continue
		}
		if err := p.stop(stopGrace); err != nil {
			fmt.Fprintf(os.Stderr, "kubetest: %v\n", err)
		}
	}
	s.api, s.etcd = nil, nil
	s.client.CloseIdleConnections()
}
