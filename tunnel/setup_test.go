package tunnel

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestLinkSetupMessages(t *testing.T) {
	var b bytes.Buffer
	if err := writeHello(&b, "gw-a"); err != nil {
		t.Fatal(err)
	}
	if name, err := readHello(&b); err != nil || name != "gw-a" {
		t.Errorf("hello round trip: %q, %v", name, err)
	}
	b.Reset()
	if err := writeReady(&b, 1024); err != nil {
		t.Fatal(err)
	}
	if n, err := readVerdict(&b); err != nil || n != 1024 {
		t.Errorf("ready round trip: %d, %v", n, err)
	}
	b.Reset()
	if err := writeRefusal(&b, &refusal{code: codeIDMismatch, msg: strings.Repeat("x", 300)}); err != nil {
		t.Fatal(err)
	}
	var rej *rejectedError
	if _, err := readVerdict(&b); !errors.As(err, &rej) || rej.reason != ReasonIDMismatch || len(rej.msg) != 255 || !errors.Is(err, ErrRejected) {
		t.Errorf("refusal round trip: %v", err)
	}

	for _, tc := range []struct {
		name    string
		in      []byte
		wantErr string
	}{
		{"empty", nil, "EOF"},
		{"other version", []byte{2, 0}, "hello version 2"},
		{"name cut short", []byte{1, 5, 'g', 'w'}, "unexpected EOF"},
	} {
		if _, err := readHello(bytes.NewReader(tc.in)); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("hello %s: %v, want %q", tc.name, err, tc.wantErr)
		}
	}
	for _, tc := range []struct {
		name    string
		in      []byte
		wantErr error
	}{
		{"unknown status", []byte{7}, errBadVerdict},
		{"ready cut short", []byte{statusReady, 0, 0}, errBadVerdict},
		{"refusal cut short", []byte{statusRefuse}, errBadVerdict},
		{"refusal with an unknown code", []byte{statusRefuse, 0x7f, 2, 'n', 'o'}, ErrRejected},
	} {
		if _, err := readVerdict(bytes.NewReader(tc.in)); !errors.Is(err, tc.wantErr) {
			t.Errorf("verdict %s: %v, want %v", tc.name, err, tc.wantErr)
		}
	}
}

// FuzzLinkSetup: whatever a peer sends as its hello or verdict is parsed
// without panicking, and a hello that parses is written back the same.
func FuzzLinkSetup(f *testing.F) {
	f.Add([]byte{helloVersion, 4, 'g', 'w', '-', 'a'})
	f.Add([]byte{statusReady, 0, 0, 4, 0})
	f.Add([]byte{statusRefuse, codeNotMember, 3, 'w', 'h', 'y'})
	f.Fuzz(func(t *testing.T, in []byte) {
		if name, err := readHello(bytes.NewReader(in)); err == nil {
			var b bytes.Buffer
			if err := writeHello(&b, name); err != nil || !bytes.Equal(b.Bytes(), in[:b.Len()]) {
				t.Errorf("hello %q rewritten as %x from %x", name, b.Bytes(), in)
			}
		}
		_, _ = readVerdict(bytes.NewReader(in))
	})
}
