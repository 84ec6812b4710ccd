package sni

import (
	"bytes"
	"crypto/tls"
	"errors"
	"slices"
	"testing"
)

// seedHellos returns the ClientHello messages of a few crypto/tls clients,
// plus hand-built ones.
func seedHellos(tb testing.TB) [][]byte {
	var msgs [][]byte
	for _, cfg := range []*tls.Config{
		clientConfig(istioSNI, "istio-peer-exchange", "istio"),
		clientConfig(""),
		{ServerName: "a.b", NextProtos: []string{"h2", "http/1.1"}, MaxVersion: tls.VersionTLS12},
		clientConfig(istioSNI, bigALPN(20)...),
	} {
		msgs = append(msgs, handshakeBytes(tb, captureHello(tb, cfg)))
	}
	return append(msgs,
		buildHello(nil),
		buildHello([]ext{{extServerName, sniExt(sniEntry{1, "x"}, sniEntry{0, "a.b"})}, {extALPN, alpnExt("a", "b")}}),
		buildHello(append(manyExts(40), ext{extALPN, alpnExt("istio")})),
	)
}

// errAbort stops a crypto/tls server handshake once it has parsed the hello.
var errAbort = errors.New("abort after ClientHello")

// cryptoTLSHello reports the server name and protocols crypto/tls's server
// sees in the ClientHello message msg, and whether it accepts msg at all.
func cryptoTLSHello(msg []byte) (serverName string, alpn []string, ok bool) {
	cfg := &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		serverName, alpn, ok = h.ServerName, h.SupportedProtos, true
		return nil, errAbort
	}}
	tls.Server(newMemConn(records(msg, maxPlaintext), 0), cfg).Handshake()
	return serverName, alpn, ok
}

// FuzzParseClientHello checks that ParseClientHello never panics and, with
// crypto/tls as the oracle, accepts every ClientHello crypto/tls accepts and
// finds the same server name and protocols in it.
func FuzzParseClientHello(f *testing.F) {
	for _, msg := range seedHellos(f) {
		f.Add(msg)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		h, err := ParseClientHello(msg)
		if err == nil {
			if slices.Contains(h.ALPN.Strings(), "") {
				t.Fatalf("empty protocol name in %q", h.ALPN)
			}
		} else if Reason(err) != "malformed" && Reason(err) != "not_client_hello" {
			t.Fatalf("error %v has reason %q", err, Reason(err))
		}

		// crypto/tls reads only the message its header announces, and no
		// more than 64 KiB of it: compare only where it sees all of msg.
		if len(msg) < handshakeHeaderLen || len(msg) > handshakeHeaderLen+65536 ||
			int(msg[1])<<16|int(msg[2])<<8|int(msg[3]) != len(msg)-handshakeHeaderLen {
			return
		}
		sn, alpn, ok := cryptoTLSHello(msg)
		if !ok {
			return
		}
		if err != nil {
			t.Fatalf("crypto/tls accepts the hello, ParseClientHello: %v", err)
		}
		if h.ServerName != sn || !slices.Equal(h.ALPN.Strings(), alpn) {
			t.Fatalf("got %q %q, crypto/tls sees %q %q", h.ServerName, h.ALPN, sn, alpn)
		}
	})
}

// FuzzPeek checks that Peek never panics, that Raw is always a prefix of
// what the connection carried, and that the outcome does not depend on how
// the bytes are split into reads.
func FuzzPeek(f *testing.F) {
	for _, msg := range seedHellos(f) {
		f.Add(records(msg, maxPlaintext), uint8(0), uint16(0))
		f.Add(records(msg, 5), uint8(3), uint16(600))
	}
	f.Add([]byte{0x80, 0x2e, 0x01, 0x00, 0x02}, uint8(1), uint16(0))
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0}, uint8(1), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8, maxBytes uint16) {
		p := &Peeker{MaxBytes: int(maxBytes)}
		whole, werr := p.Peek(newMemConn(data, 0), nil)
		split, serr := p.Peek(newMemConn(data, int(chunk)), make([]byte, chunk))
		for _, h := range []Hello{whole, split} {
			if !bytes.HasPrefix(data, h.Raw) {
				t.Fatalf("Raw % x is not a prefix of the input", h.Raw)
			}
			if len(h.Raw) > p.maxBytes() {
				t.Fatalf("read %d bytes, limit %d", len(h.Raw), p.maxBytes())
			}
		}
		if Reason(werr) != Reason(serr) || whole.ServerName != split.ServerName || !slices.Equal(whole.ALPN.Strings(), split.ALPN.Strings()) {
			t.Fatalf("in one read: %q %q %v; in reads of %d bytes: %q %q %v",
				whole.ServerName, whole.ALPN, werr, chunk, split.ServerName, split.ALPN, serr)
		}
	})
}

// FuzzParseName checks that ParseName never panics and that the names of
// every key it returns parse back to that key.
func FuzzParseName(f *testing.F) {
	for _, s := range []string{
		"outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local",
		"outbound_.9080_._.reviews.bookinfo.svc.cluster.local",
		"outbound|9080|v1|reviews.bookinfo.svc.cluster.local",
		"outbound|9080||Reviews.BookInfo",
		"outbound_.80_._.10.0.0.1",
		"outbound_.80_._.0x1.a",
		"outbound|1|a|::1",
		"inbound|80||a",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseName(s)
		if err != nil {
			if !errors.Is(err, ErrBadName) {
				t.Fatalf("error %v is not ErrBadName", err)
			}
			return
		}
		if k.Host == "" || k.Port == 0 {
			t.Fatalf("ParseName(%q) = %+v", s, k)
		}
		for _, name := range []string{k.SNI(), k.ClusterName()} {
			if k2, err := ParseName(name); err != nil || k2 != k {
				t.Fatalf("ParseName(%q) = %+v; ParseName(%q) = %+v, %v", s, k, name, k2, err)
			}
		}
	})
}
