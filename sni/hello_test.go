package sni

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"
)

// ext is a raw extension for hand-built ClientHellos.
type ext struct {
	typ  uint16
	data []byte
}

// buildHello returns a ClientHello message with the given extensions, or
// with no extensions block at all if exts is nil.
func buildHello(exts []ext) []byte {
	var b cryptobyte.Builder
	b.AddUint8(typeClientHello)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(0x0303)
		b.AddBytes(make([]byte, 32))
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {})
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(0x1301) })
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) })
		if exts == nil {
			return
		}
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, e := range exts {
				b.AddUint16(e.typ)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.data) })
			}
		})
	})
	return b.BytesOrPanic()
}

// sniExt returns a server_name extension's data holding the given entries.
func sniExt(entries ...sniEntry) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, e := range entries {
			b.AddUint8(e.typ)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(e.name)) })
		}
	})
	return b.BytesOrPanic()
}

type sniEntry struct {
	typ  uint8
	name string
}

// alpnExt returns an ALPN extension's data offering protos.
func alpnExt(protos ...string) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, p := range protos {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p)) })
		}
	})
	return b.BytesOrPanic()
}

// manyExts returns n extensions of distinct types, none of them decoded.
func manyExts(n int) []ext {
	exts := make([]ext, n)
	for i := range exts {
		exts[i] = ext{typ: uint16(1000 + i)}
	}
	return exts
}

func TestParseClientHello(t *testing.T) {
	good := []ext{{extServerName, sniExt(sniEntry{0, istioSNI})}, {extALPN, alpnExt("istio-peer-exchange", "istio")}}
	tests := []struct {
		name     string
		msg      []byte
		wantSNI  string
		wantALPN []string
		wantErr  error
	}{
		{name: "SNI and ALPN", msg: buildHello(good), wantSNI: istioSNI, wantALPN: []string{"istio-peer-exchange", "istio"}},
		{name: "no extensions block", msg: buildHello(nil)},
		{name: "empty extensions block", msg: buildHello([]ext{})},
		{name: "other name types skipped", msg: buildHello([]ext{{extServerName, sniExt(sniEntry{7, "x"}, sniEntry{0, "a.b"}, sniEntry{8, "y"})}}), wantSNI: "a.b"},
		{name: "only other name types", msg: buildHello([]ext{{extServerName, sniExt(sniEntry{7, "x"})}})},
		{name: "unknown extensions ignored", msg: buildHello(append(manyExts(5), good...)), wantSNI: istioSNI, wantALPN: []string{"istio-peer-exchange", "istio"}},
		{name: "many extensions", msg: buildHello(append(manyExts(500), good...)), wantSNI: istioSNI, wantALPN: []string{"istio-peer-exchange", "istio"}},
		{name: "255-byte ALPN name", msg: buildHello([]ext{{extALPN, alpnExt(string(make([]byte, 255)))}}), wantALPN: []string{string(make([]byte, 255))}},

		{name: "empty", msg: nil, wantErr: ErrMalformed},
		{name: "server hello", msg: []byte{2, 0, 0, 0}, wantErr: ErrNotClientHello},
		{name: "length too long", msg: append(buildHello(nil), 0), wantErr: ErrMalformed},
		{name: "length too short", msg: buildHello(nil)[:40], wantErr: ErrMalformed},
		{name: "header only", msg: []byte{1, 0, 0, 0}, wantErr: ErrMalformed},
		{name: "odd cipher suites", msg: oddSuites(), wantErr: ErrMalformed},
		{name: "trailing byte after extensions", msg: trailingByte(buildHello(good)), wantErr: ErrMalformed},
		{name: "duplicate extension", msg: buildHello([]ext{{42, nil}, {43, nil}, {42, nil}}), wantErr: ErrMalformed},
		{name: "duplicate extension among many", msg: buildHello(append(manyExts(100), ext{typ: 1000})), wantErr: ErrMalformed},
		{name: "duplicate SNI extension", msg: buildHello(append(good, good[0])), wantErr: ErrMalformed},
		{name: "two host names", msg: buildHello([]ext{{extServerName, sniExt(sniEntry{0, "a"}, sniEntry{0, "b"})}}), wantErr: ErrMalformed},
		{name: "empty host name", msg: buildHello([]ext{{extServerName, sniExt(sniEntry{0, ""})}}), wantErr: ErrMalformed},
		{name: "host name with trailing dot", msg: buildHello([]ext{{extServerName, sniExt(sniEntry{0, "a.b."})}}), wantErr: ErrMalformed},
		{name: "empty server name list", msg: buildHello([]ext{{extServerName, sniExt()}}), wantErr: ErrMalformed},
		{name: "server_name extension empty", msg: buildHello([]ext{{extServerName, nil}}), wantErr: ErrMalformed},
		{name: "bytes after server name list", msg: buildHello([]ext{{extServerName, append(sniExt(sniEntry{0, "a"}), 0)}}), wantErr: ErrMalformed},
		{name: "empty ALPN list", msg: buildHello([]ext{{extALPN, alpnExt()}}), wantErr: ErrMalformed},
		{name: "empty ALPN name", msg: buildHello([]ext{{extALPN, alpnExt("istio", "")}}), wantErr: ErrMalformed},
		{name: "bytes after ALPN list", msg: buildHello([]ext{{extALPN, append(alpnExt("istio"), 0)}}), wantErr: ErrMalformed},
		{name: "ALPN name overruns", msg: buildHello([]ext{{extALPN, []byte{0, 3, 5, 'a', 'b'}}}), wantErr: ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseClientHello(tt.msg)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got error %v, want %v", err, tt.wantErr)
			}
			if h.ServerName != tt.wantSNI || !slices.Equal(h.ALPN.Strings(), tt.wantALPN) || h.Raw != nil {
				t.Errorf("got %q %q Raw %d bytes, want %q %q no Raw", h.ServerName, h.ALPN, len(h.Raw), tt.wantSNI, tt.wantALPN)
			}
		})
	}
}

// oddSuites returns a ClientHello whose cipher suite list has an odd length.
func oddSuites() []byte {
	msg := buildHello(nil)
	// Cipher suites start after the header, version, random and the empty
	// session ID; grow the list by one byte taken from compression methods.
	off := handshakeHeaderLen + 2 + 32 + 1
	msg[off+1]++
	return msg
}

// trailingByte appends a byte after the extensions block, fixing up the
// handshake length so that only the block's length disagrees.
func trailingByte(msg []byte) []byte {
	msg = append(slices.Clip(msg), 0)
	n := len(msg) - handshakeHeaderLen
	msg[1], msg[2], msg[3] = byte(n>>16), byte(n>>8), byte(n)
	return msg
}

// TestParseClientHelloAliases checks that the Hello's server name and
// protocols are views of the message, not copies: what Peek saves by
// not allocating them, which the caller must copy where they outlive
// the message.
func TestParseClientHelloAliases(t *testing.T) {
	msg := buildHello([]ext{{extServerName, sniExt(sniEntry{0, "a.b"})}, {extALPN, alpnExt("istio")}})
	h, err := ParseClientHello(msg)
	if err != nil {
		t.Fatal(err)
	}
	name, protos := strings.Clone(h.ServerName), h.ALPN.Strings()
	i := bytes.Index(msg, []byte("a.b"))
	j := bytes.Index(msg, []byte("istio"))
	msg[i], msg[j] = 'x', 'X'
	if h.ServerName != "x.b" || !h.ALPN.Contains("Xstio") {
		t.Fatalf("after changing the message: %q %q, want views of it", h.ServerName, h.ALPN)
	}
	if name != "a.b" || !slices.Equal(protos, []string{"istio"}) {
		t.Fatalf("copies changed with the message: %q %q", name, protos)
	}
}

func TestProtocolsContains(t *testing.T) {
	h, err := ParseClientHello(buildHello([]ext{{extALPN, alpnExt("istio-peer-exchange", "istio", "h2")}}))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		p    Protocols
		name string
		want bool
	}{
		{h.ALPN, "istio", true},
		{h.ALPN, "istio-peer-exchange", true},
		{h.ALPN, "h2", true},
		{h.ALPN, "istio-peer", false}, // a prefix of one
		{h.ALPN, "h", false},
		{h.ALPN, "", false},
		{Protocols{}, "istio", false},
	}
	for _, tt := range tests {
		if got := tt.p.Contains(tt.name); got != tt.want {
			t.Errorf("%q.Contains(%q) = %v, want %v", tt.p, tt.name, got, tt.want)
		}
	}
	if got := (Protocols{}).Strings(); got != nil {
		t.Errorf("no extension: Strings() = %q, want nil", got)
	}
}
