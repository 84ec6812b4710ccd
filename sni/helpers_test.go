package sni

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// istioSNI is the server name an Istio sidecar sends to reach reviews v1.
const istioSNI = "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local"

// memConn is an in-memory net.Conn that yields data to reads, at most chunk
// bytes at a time if chunk > 0, then io.EOF; it discards writes and ignores
// deadlines. It measures parsing, not the network.
type memConn struct {
	r     bytes.Reader
	chunk int
}

func newMemConn(data []byte, chunk int) *memConn {
	c := &memConn{chunk: chunk}
	c.r.Reset(data)
	return c
}

func (c *memConn) Read(p []byte) (int, error) {
	if c.chunk > 0 && len(p) > c.chunk {
		p = p[:c.chunk]
	}
	return c.r.Read(p)
}

func (c *memConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *memConn) Close() error                     { return nil }
func (c *memConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

// recordingConn records what is written to it and fails every read, so a
// crypto/tls client handshake over it writes its ClientHello and stops.
type recordingConn struct {
	memConn
	written bytes.Buffer
}

func (c *recordingConn) Read([]byte) (int, error)    { return 0, io.EOF }
func (c *recordingConn) Write(p []byte) (int, error) { return c.written.Write(p) }

// captureHello returns the records of the ClientHello that a crypto/tls
// client with cfg sends.
func captureHello(tb testing.TB, cfg *tls.Config) []byte {
	tb.Helper()
	c := &recordingConn{}
	if err := tls.Client(c, cfg).Handshake(); err == nil {
		tb.Fatal("handshake over a recording conn succeeded")
	}
	if c.written.Len() == 0 {
		tb.Fatal("crypto/tls client wrote no ClientHello")
	}
	return c.written.Bytes()
}

// clientConfig returns the configuration of a client that sends serverName
// (none if "") and offers protos.
func clientConfig(serverName string, protos ...string) *tls.Config {
	return &tls.Config{ServerName: serverName, NextProtos: protos, InsecureSkipVerify: true}
}

// bigALPN returns n long protocol names followed by "istio", which inflate a
// ClientHello by about n*200 bytes.
func bigALPN(n int) []string {
	protos := make([]string, 0, n+1)
	for i := range n {
		protos = append(protos, fmt.Sprintf("proto-%04d-%s", i, strings.Repeat("x", 189)))
	}
	return append(protos, "istio")
}

// handshakeBytes concatenates the fragments of the handshake records in raw.
func handshakeBytes(tb testing.TB, raw []byte) []byte {
	tb.Helper()
	var msg []byte
	for len(raw) > 0 {
		if len(raw) < recordHeaderLen || raw[0] != recordTypeHandshake {
			tb.Fatalf("not a handshake record: % x", raw[:min(len(raw), recordHeaderLen)])
		}
		n := int(raw[3])<<8 | int(raw[4])
		msg = append(msg, raw[recordHeaderLen:recordHeaderLen+n]...)
		raw = raw[recordHeaderLen+n:]
	}
	return msg
}

// records wraps handshake bytes in handshake records of at most size bytes.
func records(msg []byte, size int) []byte {
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, recordTypeHandshake, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// serverConfig returns a crypto/tls server configuration with a fresh
// self-signed certificate that accepts the protocols protos.
func serverConfig(tb testing.TB, protos ...string) *tls.Config {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "ewgate test"},
		DNSNames:     []string{"reviews.bookinfo.svc.cluster.local"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos:   protos,
	}
}

// replayConn is a server-side connection that first yields the bytes Peek
// read, then the rest of the connection.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func newReplayConn(c net.Conn, raw []byte) *replayConn {
	return &replayConn{Conn: c, r: io.MultiReader(bytes.NewReader(raw), c)}
}

// peekTCP connects to a loopback TCP listener, runs client on the client's
// end in a goroutine and peeks at the server's end with p and a fresh buffer.
// Cleanup closes both ends and waits for client to return.
func peekTCP(t *testing.T, p *Peeker, client func(c *net.TCPConn)) (net.Conn, Hello, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		cc.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		client(cc.(*net.TCPConn))
	}()
	t.Cleanup(func() {
		sc.Close()
		cc.Close()
		<-done
	})
	h, err := p.Peek(sc, nil)
	return sc, h, err
}

// writeAll writes each of chunks in its own write call, with Nagle's
// algorithm off so that each tends to travel in its own segment. It reports
// no error: the server may close the connection at any time.
func writeAll(c *net.TCPConn, chunks ...[]byte) {
	c.SetNoDelay(true)
	for _, b := range chunks {
		if _, err := c.Write(b); err != nil {
			return
		}
	}
}

// split cuts b into pieces of at most n bytes.
func split(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		k := min(n, len(b))
		out = append(out, b[:k])
		b = b[k:]
	}
	return out
}

// isTimeout reports whether err is a read deadline expiring.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}
