package sni

import (
	"bytes"
	"errors"
	"testing"
)

// Parse applies Peek's rule to the bytes read so far: at every prefix of
// every input it returns ErrIncomplete exactly where Peek, given that
// prefix and then EOF, runs out of bytes (ErrTruncated), and otherwise
// Peek's hello or the error of the same reason; PeekFrom, given such a
// prefix, ends as Peek does on the whole input.
func TestParseAgreesWithPeek(t *testing.T) {
	hello := captureHello(t, clientConfig(istioSNI, "istio"))
	msg := handshakeBytes(t, hello)
	inputs := []struct {
		name   string
		in     []byte
		peeker Peeker
	}{
		{"one record", hello, Peeker{}},
		{"3-byte records", records(msg, 3), Peeker{}},
		{"HTTP request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Peeker{}},
		{"SSLv2 hello", []byte{0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15}, Peeker{}},
		{"server hello first", []byte{22, 3, 3, 0, 4, 2, 0, 0, 0}, Peeker{}},
		{"larger than MaxBytes", hello, Peeker{MaxBytes: 512}},
		{"reassembled under a budget", records(msg, 3), Peeker{Budget: NewBudget(1 << 20)}},
	}
	for _, tt := range inputs {
		whole, wholeErr := tt.peeker.Peek(newMemConn(tt.in, 0), make([]byte, 4096))
		for k := 1; k <= len(tt.in); k++ {
			got, err := tt.peeker.Parse(bytes.Clone(tt.in[:k]))
			want, wantErr := tt.peeker.Peek(newMemConn(tt.in[:k], 0), make([]byte, 4096))
			if errors.Is(err, ErrIncomplete) {
				if !errors.Is(wantErr, ErrTruncated) {
					t.Fatalf("%s, %d bytes: Parse incomplete, Peek %v", tt.name, k, wantErr)
				}
				buf := make([]byte, max(4096, k))
				copy(buf, tt.in[:k])
				h, err := tt.peeker.PeekFrom(newMemConn(tt.in[k:], 0), buf, k)
				if Reason(err) != Reason(wholeErr) || h.ServerName != whole.ServerName {
					t.Fatalf("%s, from %d bytes: PeekFrom %q, %v; Peek of the whole %q, %v", tt.name, k, h.ServerName, err, whole.ServerName, wholeErr)
				}
				continue
			}
			if (err == nil) != (wantErr == nil) || err != nil && Reason(err) != Reason(wantErr) {
				t.Fatalf("%s, %d bytes: Parse %v, Peek %v", tt.name, k, err, wantErr)
			}
			if got.ServerName != want.ServerName || !bytes.Equal(got.Raw, want.Raw) {
				t.Fatalf("%s, %d bytes: Parse %q (%d bytes), Peek %q (%d bytes)", tt.name, k, got.ServerName, len(got.Raw), want.ServerName, len(want.Raw))
			}
		}
		if b := tt.peeker.Budget; b != nil && b.InUse() != 0 {
			t.Fatalf("%s: %d bytes of the budget still held", tt.name, b.InUse())
		}
	}
}
