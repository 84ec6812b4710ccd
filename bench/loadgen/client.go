package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/ewgate/ewgate/sni"
)

// defaultSNI is the Istio SNI every proxy under test routes to the sink.
var defaultSNI = sni.Key{Host: "echo.demo.svc.cluster.local", Port: 9080}.SNI()

// conn is a client connection: plain TCP after a replayed ClientHello, or
// TLS over TCP after a completed handshake.
type conn interface {
	net.Conn
	CloseWrite() error
}

// client opens connections to a proxy as a sidecar would. Without TLS it
// sends a recorded ClientHello and waits for the sink's ack, which proves
// that the proxy routed the connection to the backend; with TLS it
// completes a TLS 1.3 mTLS handshake with the (TLS) sink through the proxy
// and reads the ack over TLS.
type client struct {
	addr    string
	hello   []byte
	tls     *tls.Config   // nil: replay hello, no handshake
	timeout time.Duration // bound of dial, hello or handshake, and ack
	dialer  net.Dialer
}

// clientFlags registers the flags every client mode shares; call client
// after parsing.
type clientFlags struct {
	addr, sni, alpn, label, tlsSVID *string
}

func newClientFlags(fs *flag.FlagSet) clientFlags {
	return clientFlags{
		addr:    fs.String("addr", "", "proxy (or sink) `address` to connect to"),
		sni:     fs.String("sni", defaultSNI, "server `name` of the ClientHello"),
		alpn:    fs.String("alpn", "istio", "ALPN `protocol` of the ClientHello"),
		label:   fs.String("label", "", "row `label` in the output table (default: addr)"),
		tlsSVID: fs.String("tls-svid", "", "complete a TLS 1.3 mTLS handshake with the SVID in `dir` (ewgate ca issue --out), instead of replaying a ClientHello; the address must lead to a sink whose -tls-svid the same CA issued"),
	}
}

// client records the ClientHello (or builds the TLS configuration) and
// returns a client for the flags.
func (f clientFlags) client() (*client, error) {
	if *f.addr == "" {
		return nil, fmt.Errorf("-addr is required")
	}
	if *f.label == "" {
		*f.label = *f.addr
	}
	cl := &client{
		addr:    *f.addr,
		timeout: 10 * time.Second,
		// No keepalive probes: they would wake idle connections.
		dialer: net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1},
	}
	if *f.tlsSVID != "" {
		cfg, err := mtlsConfig(*f.tlsSVID, false, *f.alpn)
		if err != nil {
			return nil, err
		}
		cfg.ServerName = *f.sni
		cl.tls = cfg
		return cl, nil
	}
	hello, err := recordHello(*f.sni, []string{*f.alpn})
	if err != nil {
		return nil, err
	}
	cl.hello = hello
	return cl, nil
}

// open dials, sends the ClientHello (or completes the TLS handshake) and
// reads the sink's ack.
func (cl *client) open() (conn, error) {
	nc, err := cl.dialer.Dial("tcp", cl.addr)
	if err != nil {
		return nil, err
	}
	var c conn = nc.(*net.TCPConn)
	c.SetDeadline(time.Now().Add(cl.timeout))
	if cl.tls != nil {
		tc := tls.Client(c, cl.tls)
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, fmt.Errorf("TLS handshake through the proxy: %w", err)
		}
		c = tc
	} else if _, err := c.Write(cl.hello); err != nil {
		c.Close()
		return nil, fmt.Errorf("writing ClientHello: %w", err)
	}
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		c.Close()
		return nil, fmt.Errorf("waiting for the backend's ack (not routed?): %w", err)
	}
	if ack[0] != ackByte {
		c.Close()
		return nil, fmt.Errorf("backend answered %q, want %q", ack[0], ackByte)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// openMany opens n connections, at most conc at a time, and returns those
// that the backend acknowledged; each failure is counted in errs.
func (cl *client) openMany(n, conc int, errs *errorCount) []conn {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var conns []conn
	sem := make(chan struct{}, conc)
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := cl.open()
			if err != nil {
				errs.add(errConnect, err)
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		})
	}
	wg.Wait()
	return conns
}

// closeAll closes every connection.
func closeAll(conns []conn) {
	for _, c := range conns {
		c.Close()
	}
}
