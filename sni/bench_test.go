package sni

import (
	"crypto/tls"
	"testing"
)

// BenchmarkPeek peeks at the default ClientHello of a Go 1.26 client, served
// from memory, into a reused buffer.
func BenchmarkPeek(b *testing.B) {
	hello := captureHello(b, clientConfig(istioSNI, "istio-peer-exchange", "istio"))
	buf := make([]byte, DefaultMaxBytes)
	c := newMemConn(hello, 0)
	var p Peeker
	b.SetBytes(int64(len(hello)))
	b.ReportAllocs()
	for b.Loop() {
		c.r.Reset(hello)
		h, err := p.Peek(c, buf)
		if err != nil || h.ServerName != istioSNI {
			b.Fatal(h.ServerName, err)
		}
	}
}

// BenchmarkParseClientHello parses the same hello's handshake message.
func BenchmarkParseClientHello(b *testing.B) {
	msg := handshakeBytes(b, captureHello(b, clientConfig(istioSNI, "istio-peer-exchange", "istio")))
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		h, err := ParseClientHello(msg)
		if err != nil || h.ServerName != istioSNI {
			b.Fatal(h.ServerName, err)
		}
	}
}

// BenchmarkCryptoTLSGetConfigForClient gets the server name from the same
// hello the way crypto/tls offers: a server handshake whose
// GetConfigForClient records it and aborts.
func BenchmarkCryptoTLSGetConfigForClient(b *testing.B) {
	hello := captureHello(b, clientConfig(istioSNI, "istio-peer-exchange", "istio"))
	var serverName string
	cfg := &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		serverName = h.ServerName
		return nil, errAbort
	}}
	c := newMemConn(hello, 0)
	b.SetBytes(int64(len(hello)))
	b.ReportAllocs()
	for b.Loop() {
		c.r.Reset(hello)
		serverName = ""
		tls.Server(c, cfg).Handshake()
		if serverName != istioSNI {
			b.Fatal(serverName)
		}
	}
}

// BenchmarkParseName parses an Istio SNI name.
func BenchmarkParseName(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseName(istioSNI); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPeekSplit peeks at the same hello split into records of 512
// bytes, so that it must be reassembled, into a buffer that is too small
// at first (the gateway's pooled 4 KiB would hold it: 1 KiB here makes
// the peek grow its buffer).
func BenchmarkPeekSplit(b *testing.B) {
	hello := captureHello(b, clientConfig(istioSNI, "istio-peer-exchange", "istio"))
	split := records(handshakeBytes(b, hello), 512)
	c := newMemConn(split, 0)
	var p Peeker
	b.SetBytes(int64(len(split)))
	b.ReportAllocs()
	for b.Loop() {
		c.r.Reset(split)
		h, err := p.Peek(c, make([]byte, 1024))
		if err != nil || h.ServerName != istioSNI {
			b.Fatal(h.ServerName, err)
		}
	}
}
