package tunnel

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/sni"
)

func TestHeaderRoundTrip(t *testing.T) {
	for _, h := range []Header{
		{Key: sni.Key{Host: "reviews.default.svc.cluster.local", Port: 9080}},
		{Key: sni.Key{Host: "a", Port: 65535, Subset: "v2"}, Hops: 3, ClientAddr: "10.0.0.1:43210"},
		{
			Key:        sni.Key{Host: strings.Repeat("h", MaxHostLen), Subset: strings.Repeat("s", MaxSubsetLen)},
			Hops:       255,
			ClientAddr: strings.Repeat("c", MaxClientAddrLen),
		},
	} {
		b, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary(%+v): %v", h, err)
		}
		var got Header
		if err := got.UnmarshalBinary(b); err != nil || got != h {
			t.Errorf("UnmarshalBinary = %+v, %v; want %+v", got, err, h)
		}
		// ReadHeader consumes exactly the header and leaves what follows.
		r := bytes.NewReader(append(b, "payload"...))
		got, err = ReadHeader(r)
		if err != nil || got != h {
			t.Errorf("ReadHeader = %+v, %v; want %+v", got, err, h)
		}
		if rest, _ := io.ReadAll(r); string(rest) != "payload" {
			t.Errorf("ReadHeader left %q, want %q", rest, "payload")
		}
	}
}

func TestHeaderLimits(t *testing.T) {
	for name, h := range map[string]Header{
		"empty host":  {},
		"long host":   {Key: sni.Key{Host: strings.Repeat("h", MaxHostLen+1)}},
		"long subset": {Key: sni.Key{Host: "h", Subset: strings.Repeat("s", MaxSubsetLen+1)}},
		"long client": {Key: sni.Key{Host: "h"}, ClientAddr: strings.Repeat("c", MaxClientAddrLen+1)},
	} {
		if _, err := h.MarshalBinary(); !errors.Is(err, ErrBadHeader) {
			t.Errorf("%s: MarshalBinary error %v, want ErrBadHeader", name, err)
		}
	}
}

func TestHeaderDecodeErrors(t *testing.T) {
	good, err := Header{Key: sni.Key{Host: "h.example", Port: 80}}.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(i int, v byte) []byte {
		b := bytes.Clone(good)
		b[i] = v
		return b
	}
	for name, tc := range map[string]struct {
		in      []byte
		wantErr error
	}{
		"empty":        {nil, io.EOF},
		"short fixed":  {good[:3], io.ErrUnexpectedEOF},
		"short body":   {good[:len(good)-1], io.ErrUnexpectedEOF},
		"version":      {mutate(0, 2), ErrBadHeader},
		"zero host":    {mutate(4, 0), ErrBadHeader},
		"huge host":    {mutate(4, 255), ErrBadHeader},
		"huge subset":  {mutate(5, MaxSubsetLen+1), ErrBadHeader},
		"huge address": {mutate(6, MaxClientAddrLen+1), ErrBadHeader},
	} {
		if _, err := ReadHeader(bytes.NewReader(tc.in)); !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: ReadHeader error %v, want %v", name, err, tc.wantErr)
		}
		var h Header
		if err := h.UnmarshalBinary(tc.in); !errors.Is(err, ErrBadHeader) {
			t.Errorf("%s: UnmarshalBinary error %v, want ErrBadHeader", name, err)
		}
	}
	var h Header
	if err := h.UnmarshalBinary(append(bytes.Clone(good), 0)); !errors.Is(err, ErrBadHeader) {
		t.Errorf("trailing byte: UnmarshalBinary error %v, want ErrBadHeader", err)
	}
}

func FuzzHeader(f *testing.F) {
	for _, h := range []Header{
		{Key: sni.Key{Host: "reviews.default.svc.cluster.local", Port: 9080, Subset: "v1"}, Hops: 1, ClientAddr: "[::1]:1"},
		{Key: sni.Key{Host: "x"}},
	} {
		b, _ := h.MarshalBinary()
		f.Add(b)
	}
	f.Add([]byte{1, 0, 0, 0, 255, 255, 255})
	f.Fuzz(func(t *testing.T, data []byte) {
		var h Header
		uerr := h.UnmarshalBinary(data)
		rh, rerr := ReadHeader(bytes.NewReader(data))
		if uerr != nil {
			if !errors.Is(uerr, ErrBadHeader) {
				t.Fatalf("UnmarshalBinary error %v does not wrap ErrBadHeader", uerr)
			}
			return
		}
		if rerr != nil || rh != h {
			t.Fatalf("ReadHeader = %+v, %v; UnmarshalBinary = %+v", rh, rerr, h)
		}
		b, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary of decoded %+v: %v", h, err)
		}
		if !bytes.Equal(b, data) {
			t.Fatalf("re-encoding %x, input %x", b, data)
		}
	})
}
