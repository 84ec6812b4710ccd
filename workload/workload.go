// Package workload provides mesh workloads for demos and tests: an mTLS
// echo server that reports who called it, and a client that dials like an
// Istio sidecar (SVID, Istio SNI, Istio ALPN).
package workload

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/sni"
)

// ALPN is the protocol sidecars offer on mTLS connections between them.
const ALPN = "istio"

// EchoServer is an mTLS server. On each connection it writes one greeting
// line, "<name> <client SPIFFE ID>", then echoes every byte until the client
// half-closes, then half-closes itself.
type EchoServer struct {
	name     string
	cfg      *tls.Config
	ln       net.Listener
	accepted atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

// NewEchoServer starts an echo server on addr ("127.0.0.1:0" for any port)
// presenting src's SVID and accepting clients authorized by az (nil: the
// SVID's own trust domain).
func NewEchoServer(name, addr string, src identity.Source, az *identity.Authorizer) (*EchoServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("echo server %s: %w", name, err)
	}
	return ServeEcho(name, ln, src, az), nil
}

// ServeEcho is NewEchoServer on a listener the caller opened, such as one
// inside a network namespace; Close closes it.
func ServeEcho(name string, ln net.Listener, src identity.Source, az *identity.Authorizer) *EchoServer {
	cfg := identity.ServerTLSConfig(src, az)
	cfg.NextProtos = []string{ALPN}
	s := &EchoServer{name: name, cfg: cfg, ln: ln, conns: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go s.serve()
	return s
}

// Name returns the server's name, the first word of its greeting.
func (s *EchoServer) Name() string { return s.name }

// Addr returns the listening address.
func (s *EchoServer) Addr() string { return s.ln.Addr().String() }

// Accepted returns how many TCP connections the server has accepted,
// whether or not their handshake succeeded.
func (s *EchoServer) Accepted() int64 { return s.accepted.Load() }

// Close stops the server and closes its open connections.
func (s *EchoServer) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *EchoServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.echo(tls.Server(c, s.cfg))
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

func (s *EchoServer) echo(c *tls.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	peer, err := identity.PeerID(c.ConnectionState())
	if err != nil {
		return
	}
	fmt.Fprintf(c, "%s %s\n", s.name, peer)
	io.Copy(c, c)
	c.CloseWrite()
}

// Conn is a client connection to an echo server.
type Conn struct {
	*tls.Conn
	// Server is the echo server's name and SeenAs the SPIFFE ID it saw
	// for the client, from its greeting.
	Server, SeenAs string
	// ServerID is the SPIFFE ID the server presented.
	ServerID string
}

// Client dials echo servers like an Istio sidecar: mTLS with its SVID, the
// Istio SNI of the service it calls and the istio ALPN.
type Client struct {
	// Source provides the client's SVID and trust bundles.
	Source identity.Source
	// Authorizer accepts servers; nil: the SVID's own trust domain.
	Authorizer *identity.Authorizer
	// ALPN is offered in the hello; nil offers "istio".
	ALPN []string
	// Wrap, if set, wraps the TCP connection under TLS, so tests can shape
	// the bytes on the wire.
	Wrap func(net.Conn) net.Conn
}

// Dial connects to addr, a gateway or the server itself, calling key, and
// reads the echo server's greeting.
func (cl *Client) Dial(ctx context.Context, addr string, key sni.Key) (*Conn, error) {
	return cl.DialName(ctx, addr, key.SNI())
}

// DialName is Dial with a raw server name, for clients that misbehave on
// purpose.
func (cl *Client) DialName(ctx context.Context, addr, serverName string) (*Conn, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	cfg := identity.ClientTLSConfig(cl.Source, cl.Authorizer)
	cfg.ServerName = serverName
	cfg.NextProtos = cl.ALPN
	if cfg.NextProtos == nil {
		cfg.NextProtos = []string{ALPN}
	}
	var under net.Conn = raw
	if cl.Wrap != nil {
		under = cl.Wrap(raw)
	}
	c := tls.Client(under, cfg)
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	id, err := identity.PeerID(c.ConnectionState())
	if err != nil {
		c.Close()
		return nil, err
	}
	line, err := readLine(c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("read greeting: %w", err)
	}
	c.SetDeadline(time.Time{})
	name, seen, _ := strings.Cut(line, " ")
	return &Conn{Conn: c, Server: name, SeenAs: seen, ServerID: id.String()}, nil
}

// Exchange sends n random bytes, half-closes, and reads the echo to EOF. It
// fails unless the echo is byte-exact (same length and SHA-256).
func (c *Conn) Exchange(n int64) error {
	sent := sha256.New()
	errc := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.MultiWriter(c, sent), rand.Reader, n)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got := sha256.New()
	m, err := io.Copy(got, c)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("send: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if m != n || !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		return fmt.Errorf("echo mismatch: got %d bytes sha256 %x, sent %d sha256 %x", m, got.Sum(nil), n, sent.Sum(nil))
	}
	return nil
}

// ReadLine reads one line from the connection, consuming nothing after it.
func (c *Conn) ReadLine() (string, error) { return readLine(c.Conn) }

// readLine reads one line byte by byte, so that nothing after it is
// consumed from c.
func readLine(c io.Reader) (string, error) {
	var sb strings.Builder
	var b [1]byte
	for sb.Len() < 1024 {
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return sb.String(), err
		}
		if b[0] == '\n' {
			return sb.String(), nil
		}
		sb.WriteByte(b[0])
	}
	return "", errors.New("line too long")
}
