package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// waitTimeout bounds every poll in these tests; it is a deadline against
// hangs, not a timing assertion.
const waitTimeout = 15 * time.Second

// waitUntil polls cond until it holds or waitTimeout passes.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
		time.Sleep(2 * time.Millisecond) // poll interval, not synchronisation
	}
}

// logRecorder is a slog.Handler that keeps every record's message and
// attributes as one line, for assertions.
type logRecorder struct {
	mu    *sync.Mutex
	lines *[]string
	attrs string
}

func newLogRecorder() (*slog.Logger, *logRecorder) {
	r := &logRecorder{mu: &sync.Mutex{}, lines: new([]string)}
	return slog.New(r), r
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s%s", rec.Level, rec.Message, r.attrs)
	rec.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	*r.lines = append(*r.lines, b.String())
	return nil
}

func (r *logRecorder) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *r
	for _, a := range attrs {
		c.attrs += fmt.Sprintf(" %s=%v", a.Key, a.Value)
	}
	return &c
}

func (r *logRecorder) WithGroup(string) slog.Handler { return r }

// count returns how many lines contain every one of parts.
func (r *logRecorder) count(parts ...string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
next:
	for _, l := range *r.lines {
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		n++
	}
	return n
}

func (r *logRecorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(*r.lines, "\n")
}

// handshakeResult is what the server side of a test connection saw.
type handshakeResult struct {
	peer spiffeid.ID
	err  error
}

// echoServer is a TLS server on loopback TCP that reports every handshake
// and echoes bytes back on accepted connections.
type echoServer struct {
	ln      net.Listener
	results chan handshakeResult
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
}

// startEchoServer listens on 127.0.0.1 with cfg until the test ends.
func startEchoServer(t *testing.T, cfg *tls.Config) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln, results: make(chan handshakeResult, 64)}
	s.wg.Add(1)
	go s.serve(tls.NewListener(ln, cfg))
	t.Cleanup(s.close)
	return s
}

func (s *echoServer) addr() string { return s.ln.Addr().String() }

func (s *echoServer) serve(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			tc := c.(*tls.Conn)
			if err := tc.Handshake(); err != nil {
				s.results <- handshakeResult{err: err}
				return
			}
			id, err := PeerID(tc.ConnectionState())
			s.results <- handshakeResult{peer: id, err: err}
			_, _ = io.Copy(tc, tc)
		}()
	}
}

func (s *echoServer) close() {
	_ = s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// result returns the next server-side handshake result.
func (s *echoServer) result(t *testing.T) handshakeResult {
	t.Helper()
	select {
	case r := <-s.results:
		return r
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for a server handshake")
		return handshakeResult{}
	}
}

// dial connects with cfg, completes the handshake and one echo round trip
// (in TLS 1.3 a client learns that the server rejected its certificate only
// when it reads). The connection is closed when the test ends.
func dial(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := echo(c, "hello"); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// echo writes msg and expects it back.
func echo(c net.Conn, msg string) error {
	if err := c.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		return err
	}
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo: got %q, want %q", buf, msg)
	}
	return nil
}

// serverSerial returns the serial number of the server's leaf on c.
func serverSerial(c *tls.Conn) *big.Int {
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

// asReject returns err as a *RejectError or fails the test.
func asReject(t *testing.T, err error) *RejectError {
	t.Helper()
	var rej *RejectError
	if !errors.As(err, &rej) {
		t.Fatalf("error %v (%T) is not a *RejectError", err, err)
	}
	return rej
}

func mustID(t testing.TB, s string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func mustCA(t testing.TB, td string) *DevCA {
	t.Helper()
	ca, err := NewDevCA(spiffeid.RequireTrustDomainFromString(td))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func mustSource(t testing.TB, ca *DevCA, id string, opts IssueOptions) *MemorySource {
	t.Helper()
	src, err := ca.NewSource(mustID(t, id), opts)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func mustAuthorizer(t testing.TB, pol Policy, log *slog.Logger) *Authorizer {
	t.Helper()
	az, err := NewAuthorizer(pol, log)
	if err != nil {
		t.Fatal(err)
	}
	return az
}

// rawCertificate builds a tls.Certificate from a chain the identity package
// would refuse to serve (for negative tests).
func rawCertificate(key any, chain ...*x509.Certificate) tls.Certificate {
	c := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}
