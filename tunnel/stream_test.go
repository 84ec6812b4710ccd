package tunnel

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

// TestStreamWait: Wait returns once the stream has bytes (taking none),
// then io.EOF once they are read and the peer half-closed, a reset's
// error after a reset, and the deadline's error; after its io.EOF or
// reset, Read returns the same.
func TestStreamWait(t *testing.T) {
	// The handler obeys one command byte: 'w' writes "hello" and
	// half-closes; 'r' resets.
	handler := func(_ context.Context, _ Header, s *Stream) {
		var cmd [1]byte
		if _, err := io.ReadFull(s, cmd[:]); err != nil {
			return
		}
		switch cmd[0] {
		case 'w':
			s.Write([]byte("hello"))
			s.CloseWrite()
			io.Copy(io.Discard, s)
		case 'r':
			s.Abort()
		}
	}
	forTransports(t, func(t *testing.T, tr Transport) {
		p := newPair(t, tr, handler)
		ctx := testContext(t)
		s, err := p.client.Dial(ctx, p.addr(), key("wait.example"))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.SetReadDeadline(time.Now())
		if err := s.Wait(); !errors.Is(err, os.ErrDeadlineExceeded) && !isTimeout(err) {
			t.Fatalf("Wait past the deadline = %v, want a timeout", err)
		}
		s.SetReadDeadline(time.Time{})
		if _, err := s.Write([]byte("w")); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := s.Wait(); err != nil {
				t.Fatalf("Wait with bytes coming = %v", err)
			}
		}
		got, err := io.ReadAll(s)
		if err != nil || string(got) != "hello" {
			t.Fatalf("read %q, %v after Wait; want all of \"hello\"", got, err)
		}
		if err := s.Wait(); err != io.EOF {
			t.Fatalf("Wait after the peer's half-close = %v, want io.EOF", err)
		}
		if n, err := s.Read(make([]byte, 8)); n != 0 || err != io.EOF {
			t.Fatalf("Read after Wait's io.EOF = %d, %v", n, err)
		}

		r, err := p.client.Dial(ctx, p.addr(), key("wait.example"))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if _, err := r.Write([]byte("r")); err != nil {
			t.Fatal(err)
		}
		if err := r.Wait(); !errors.Is(err, ErrReset) {
			t.Fatalf("Wait on a reset stream = %v, want ErrReset", err)
		}
		if _, err := r.Read(make([]byte, 8)); !errors.Is(err, ErrReset) {
			t.Fatalf("Read after Wait's reset = %v, want ErrReset", err)
		}
	})
}

// isTimeout reports whether err is a timeout net.Error, as yamux's are.
func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}
