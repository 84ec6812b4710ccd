package main

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// errCaptured ends the recording handshake once the ClientHello is written.
var errCaptured = errors.New("ClientHello captured")

// recordHello returns the bytes of a real crypto/tls ClientHello for
// serverName offering the ALPN protocols alpn. It runs a client handshake
// over a connection that keeps the first write and then fails, so the
// bytes are exactly what a Go TLS client puts on the wire.
func recordHello(serverName string, alpn []string) ([]byte, error) {
	c := &captureConn{}
	err := tls.Client(c, &tls.Config{ServerName: serverName, NextProtos: alpn}).Handshake()
	if len(c.data) == 0 {
		return nil, fmt.Errorf("recording ClientHello: nothing written (%v)", err)
	}
	return c.data, nil
}

// captureConn is a net.Conn that keeps the first write and fails every
// operation after it.
type captureConn struct{ data []byte }

func (c *captureConn) Write(p []byte) (int, error) {
	if c.data == nil {
		c.data = append([]byte(nil), p...)
	}
	return 0, errCaptured
}

func (c *captureConn) Read([]byte) (int, error)         { return 0, errCaptured }
func (c *captureConn) Close() error                     { return nil }
func (c *captureConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *captureConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *captureConn) SetDeadline(time.Time) error      { return nil }
func (c *captureConn) SetReadDeadline(time.Time) error  { return nil }
func (c *captureConn) SetWriteDeadline(time.Time) error { return nil }

// maxHello bounds the ClientHello the sink reads.
const maxHello = 64 << 10

// readHello reads one whole ClientHello, however many TLS records carry it,
// and returns how many bytes it read.
func readHello(r io.Reader) (int, error) {
	var hdr [5]byte
	var body []byte
	need := -1 // handshake message length with its 4-byte header, once known
	read := 0
	for need < 0 || len(body) < need {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return read, fmt.Errorf("reading record header: %w", err)
		}
		if hdr[0] != 22 {
			return read, fmt.Errorf("record type %d, want handshake (22)", hdr[0])
		}
		n := int(binary.BigEndian.Uint16(hdr[3:5]))
		if read += 5 + n; read > maxHello {
			return read, fmt.Errorf("ClientHello longer than %d bytes", maxHello)
		}
		body = append(body, make([]byte, n)...)
		if _, err := io.ReadFull(r, body[len(body)-n:]); err != nil {
			return read, fmt.Errorf("reading record: %w", err)
		}
		if need < 0 && len(body) >= 4 {
			need = 4 + (int(body[1])<<16 | int(body[2])<<8 | int(body[3]))
		}
	}
	return read, nil
}
