package sni

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// shapingConn hands the client's first flight (its ClientHello) to shape to
// put on the wire, and passes everything after the client's first read
// through unchanged.
type shapingConn struct {
	*net.TCPConn
	shape func(c *net.TCPConn, records []byte) error
	read  bool
}

func (c *shapingConn) Write(p []byte) (int, error) {
	if c.read || c.shape == nil {
		return c.TCPConn.Write(p)
	}
	if err := c.shape(c.TCPConn, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *shapingConn) Read(p []byte) (int, error) {
	c.read = true
	return c.TCPConn.Read(p)
}

// oneByteWrites sends records one byte per write.
func oneByteWrites(c *net.TCPConn, records []byte) error {
	c.SetNoDelay(true)
	for i := range records {
		if _, err := c.Write(records[i : i+1]); err != nil {
			return err
		}
	}
	return nil
}

// refragment returns a shape that re-wraps the handshake bytes of each
// record crypto/tls writes into records of size bytes, then sends them in
// writes of write bytes (all at once if write is 0).
func refragment(size, write int) func(*net.TCPConn, []byte) error {
	return func(c *net.TCPConn, recs []byte) error {
		var msg []byte
		for len(recs) >= recordHeaderLen {
			n := int(recs[3])<<8 | int(recs[4])
			msg = append(msg, recs[recordHeaderLen:recordHeaderLen+n]...)
			recs = recs[recordHeaderLen+n:]
		}
		out := records(msg, size)
		if write == 0 {
			_, err := c.Write(out)
			return err
		}
		c.SetNoDelay(true)
		for _, b := range split(out, write) {
			if _, err := c.Write(b); err != nil {
				return err
			}
		}
		return nil
	}
}

// TestPeekCryptoTLS peeks at the hellos of real crypto/tls clients, however
// they reach the wire, then replays Hello.Raw into a crypto/tls server: the
// handshake can only complete if Raw is exactly what the client sent,
// because both ends sign the transcript.
func TestPeekCryptoTLS(t *testing.T) {
	tests := []struct {
		name     string
		client   *tls.Config
		shape    func(*net.TCPConn, []byte) error
		peeker   Peeker
		wantSNI  string
		wantALPN []string
		minRaw   int // fewest bytes the hello must take
	}{
		{
			name:     "istio",
			client:   clientConfig(istioSNI, "istio-peer-exchange", "istio"),
			wantSNI:  istioSNI,
			wantALPN: []string{"istio-peer-exchange", "istio"},
		},
		{
			name:     "TLS 1.2 client",
			client:   &tls.Config{ServerName: istioSNI, NextProtos: []string{"istio"}, InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12},
			wantSNI:  istioSNI,
			wantALPN: []string{"istio"},
		},
		{
			name:     "no SNI",
			client:   clientConfig("", "istio"),
			wantALPN: []string{"istio"},
		},
		{
			name:     "IP server name sends no SNI",
			client:   clientConfig("10.0.0.1", "istio"),
			wantALPN: []string{"istio"},
		},
		{
			name:    "no ALPN",
			client:  clientConfig(istioSNI),
			wantSNI: istioSNI,
		},
		{
			name:     "one-byte TCP writes",
			client:   clientConfig(istioSNI, "istio"),
			shape:    oneByteWrites,
			wantSNI:  istioSNI,
			wantALPN: []string{"istio"},
		},
		{
			name:     "7-byte records",
			client:   clientConfig(istioSNI, "istio"),
			shape:    refragment(7, 0),
			wantSNI:  istioSNI,
			wantALPN: []string{"istio"},
		},
		{
			name:     "1-byte records in 3-byte writes",
			client:   clientConfig(istioSNI, "istio"),
			shape:    refragment(1, 3),
			wantSNI:  istioSNI,
			wantALPN: []string{"istio"},
		},
		{
			name:     "larger than 16 KiB",
			client:   clientConfig(istioSNI, bigALPN(100)...),
			wantSNI:  istioSNI,
			wantALPN: bigALPN(100),
			minRaw:   20 << 10,
		},
		{
			name:     "larger than 16 KiB in 100-byte records",
			client:   clientConfig(istioSNI, bigALPN(100)...),
			shape:    refragment(100, 1000),
			wantSNI:  istioSNI,
			wantALPN: bigALPN(100),
			minRaw:   20 << 10,
		},
		{
			name:     "cap just fits",
			client:   clientConfig(istioSNI, "istio"),
			peeker:   Peeker{MaxBytes: len(captureHello(t, clientConfig(istioSNI, "istio")))},
			wantSNI:  istioSNI,
			wantALPN: []string{"istio"},
		},
	}
	server := serverConfig(t, "istio")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clientErr := make(chan error, 1)
			sc, h, err := peekTCP(t, &tt.peeker, func(c *net.TCPConn) {
				tc := tls.Client(&shapingConn{TCPConn: c, shape: tt.shape}, tt.client)
				clientErr <- tc.Handshake()
			})
			if err != nil {
				t.Fatalf("Peek: %v (reason %s)", err, Reason(err))
			}
			if h.ServerName != tt.wantSNI {
				t.Errorf("ServerName = %q, want %q", h.ServerName, tt.wantSNI)
			}
			if !slices.Equal(h.ALPN.Strings(), tt.wantALPN) {
				t.Errorf("ALPN = %q, want %q", h.ALPN, tt.wantALPN)
			}
			if len(h.Raw) < tt.minRaw {
				t.Errorf("hello of %d bytes, want at least %d", len(h.Raw), tt.minRaw)
			}
			ts := tls.Server(newReplayConn(sc, h.Raw), server)
			if err := ts.Handshake(); err != nil {
				t.Fatalf("server handshake after replaying Raw: %v", err)
			}
			if err := <-clientErr; err != nil {
				t.Fatalf("client handshake: %v", err)
			}
			if got, want := ts.ConnectionState().NegotiatedProtocol, "istio"; tt.wantALPN != nil && got != want {
				t.Errorf("negotiated protocol %q, want %q", got, want)
			}
		})
	}
}

// TestPeekErrors feeds Peek connections that carry no acceptable ClientHello.
func TestPeekErrors(t *testing.T) {
	hello := captureHello(t, clientConfig(istioSNI, "istio"))
	big := captureHello(t, clientConfig(istioSNI, bigALPN(100)...))
	msg := handshakeBytes(t, hello)
	dup := records(withDuplicateExtension(t, msg), 1<<14)

	tests := []struct {
		name   string
		peeker Peeker
		send   func(c *net.TCPConn)
		want   error
		also   error // another error the result must wrap, if not nil
	}{
		{
			name: "HTTP request",
			send: func(c *net.TCPConn) { writeAll(c, []byte("GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")) },
			want: ErrNotTLS,
		},
		{
			name: "1 MiB of non-TLS bytes",
			send: func(c *net.TCPConn) { writeAll(c, bytes.Repeat([]byte("A"), 1<<20)) },
			want: ErrNotTLS,
		},
		{
			name: "record version not 3",
			send: func(c *net.TCPConn) { writeAll(c, []byte{22, 1, 0}) },
			want: ErrNotTLS,
		},
		{
			name: "SSLv2 hello",
			send: func(c *net.TCPConn) {
				writeAll(c, []byte{0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10})
			},
			want: ErrSSLv2,
		},
		{
			name: "high bit but no SSLv2 hello",
			send: func(c *net.TCPConn) { writeAll(c, []byte{0x80, 0x2e, 0x07}) },
			want: ErrNotTLS,
		},
		{
			name: "server hello first",
			send: func(c *net.TCPConn) { writeAll(c, []byte{22, 3, 3, 0, 4, 2, 0, 0, 0}) },
			want: ErrNotClientHello,
		},
		{
			name: "zero-length record",
			send: func(c *net.TCPConn) { writeAll(c, []byte{22, 3, 1, 0, 0}) },
			want: ErrMalformed,
		},
		{
			name: "record longer than 2^14",
			send: func(c *net.TCPConn) { writeAll(c, []byte{22, 3, 1, 0x40, 0x01}) },
			want: ErrMalformed,
		},
		{
			name: "alert before the hello ends",
			send: func(c *net.TCPConn) {
				writeAll(c, records(msg[:100], 100), []byte{21, 3, 3, 0, 2, 2, 40})
			},
			want: ErrMalformed,
		},
		{
			name: "bad version in a later record",
			send: func(c *net.TCPConn) { writeAll(c, records(msg[:100], 100), []byte{22, 2, 3, 0, 2}) },
			want: ErrMalformed,
		},
		{
			name: "duplicate extension",
			send: func(c *net.TCPConn) { writeAll(c, dup) },
			want: ErrMalformed,
		},
		{
			name: "closed mid-hello",
			send: func(c *net.TCPConn) { writeAll(c, hello[:len(hello)/2]); c.Close() },
			want: ErrTruncated,
			also: io.EOF,
		},
		{
			name: "closed before sending",
			send: func(c *net.TCPConn) { c.Close() },
			want: ErrTruncated,
			also: io.EOF,
		},
		{
			name:   "over the cap",
			peeker: Peeker{MaxBytes: 16 << 10},
			send:   func(c *net.TCPConn) { writeAll(c, big) },
			want:   ErrTooLarge,
		},
		{
			name:   "over the cap by record overhead",
			peeker: Peeker{MaxBytes: 2 * len(hello)},
			send:   func(c *net.TCPConn) { writeAll(c, records(msg, 1)) },
			want:   ErrTooLarge,
		},
		{
			name: "claims 16 MiB",
			send: func(c *net.TCPConn) { writeAll(c, []byte{22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff}) },
			want: ErrTooLarge,
		},
		{
			name:   "slowloris",
			peeker: Peeker{Timeout: 200 * time.Millisecond},
			send: func(c *net.TCPConn) {
				writeAll(c, hello[:10])
				io.Copy(io.Discard, c) // wait for the server to give up
			},
			want: ErrTimeout,
			also: os.ErrDeadlineExceeded,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, h, err := peekTCP(t, &tt.peeker, tt.send)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Peek: got error %v, want %v", err, tt.want)
			}
			if tt.also != nil && !errors.Is(err, tt.also) {
				t.Errorf("Peek: error %v does not wrap %v", err, tt.also)
			}
			if got, want := Reason(err), Reason(tt.want); got != want {
				t.Errorf("Reason = %q, want %q", got, want)
			}
			if !slices.Contains(PeekReasons(), Reason(err)) {
				t.Errorf("Reason %q is not in PeekReasons() %q", Reason(err), PeekReasons())
			}
			if h.ServerName != "" || h.ALPN.Strings() != nil {
				t.Errorf("failed Peek returned ServerName %q, ALPN %q", h.ServerName, h.ALPN)
			}
			if limit := tt.peeker.maxBytes(); len(h.Raw) > limit {
				t.Errorf("read %d bytes, limit is %d", len(h.Raw), limit)
			}
		})
	}
}

// withDuplicateExtension returns a copy of the ClientHello message msg whose
// first extension appears twice.
func withDuplicateExtension(tb testing.TB, msg []byte) []byte {
	tb.Helper()
	// Walk to the extensions: header, version, random, session ID, cipher
	// suites, compression methods.
	off := handshakeHeaderLen + 2 + 32
	off += 1 + int(msg[off])
	off += 2 + (int(msg[off])<<8 | int(msg[off+1]))
	off += 1 + int(msg[off])
	extsLen := int(msg[off])<<8 | int(msg[off+1])
	first := msg[off+2:]
	first = first[:4+(int(first[2])<<8|int(first[3]))]

	out := slices.Concat(msg, first)
	bodyLen := len(out) - handshakeHeaderLen
	out[1], out[2], out[3] = byte(bodyLen>>16), byte(bodyLen>>8), byte(bodyLen)
	extsLen += len(first)
	out[off], out[off+1] = byte(extsLen>>8), byte(extsLen)
	return out
}

// deadlineConn records the read deadlines set on it.
type deadlineConn struct {
	*memConn
	deadlines []time.Time
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.deadlines = append(c.deadlines, t)
	return nil
}

// TestPeekClearsDeadline checks that Peek sets one read deadline and clears
// it before returning, whether it succeeds or fails, and leaves the deadline
// alone when Timeout is negative.
func TestPeekClearsDeadline(t *testing.T) {
	hello := captureHello(t, clientConfig(istioSNI, "istio"))
	tests := []struct {
		name    string
		timeout time.Duration
		data    []byte
		wantErr error
		want    int // calls to SetReadDeadline
	}{
		{name: "success", data: hello, want: 2},
		{name: "failure", data: []byte("GET / HTTP/1.1\r\n"), wantErr: ErrNotTLS, want: 2},
		{name: "truncated", data: hello[:20], wantErr: ErrTruncated, want: 2},
		{name: "no deadline", timeout: -1, data: hello, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &deadlineConn{memConn: newMemConn(tt.data, 100)}
			p := &Peeker{Timeout: tt.timeout}
			before := time.Now()
			if _, err := p.Peek(c, nil); !errors.Is(err, tt.wantErr) {
				t.Fatalf("Peek: %v, want %v", err, tt.wantErr)
			}
			if len(c.deadlines) != tt.want {
				t.Fatalf("SetReadDeadline called with %v, want %d calls", c.deadlines, tt.want)
			}
			if tt.want == 0 {
				return
			}
			if d := c.deadlines[0]; d.Before(before.Add(DefaultTimeout)) {
				t.Errorf("deadline %v is earlier than %v after Peek started", d, DefaultTimeout)
			}
			if d := c.deadlines[1]; !d.IsZero() {
				t.Errorf("last deadline %v, want the zero time", d)
			}
		})
	}
}

// TestPeekClearsDeadlineTCP checks on a real connection that a read long
// after Peek's timeout would have fired still succeeds.
func TestPeekClearsDeadlineTCP(t *testing.T) {
	const timeout = 50 * time.Millisecond
	hello := captureHello(t, clientConfig(istioSNI, "istio"))
	peeked := make(chan struct{})
	sc, _, err := peekTCP(t, &Peeker{Timeout: timeout}, func(c *net.TCPConn) {
		writeAll(c, hello)
		<-peeked
		writeAll(c, []byte("more"))
	})
	if err != nil {
		t.Fatal(err)
	}
	// Wait past the deadline Peek set, which was at most timeout from now:
	// had it stayed, the read below would fail whatever the scheduling.
	<-time.After(timeout + time.Millisecond)
	close(peeked)
	buf := make([]byte, 4)
	if _, err := io.ReadFull(sc, buf); err != nil {
		t.Fatalf("read after Peek: %v", err)
	}
	if string(buf) != "more" {
		t.Fatalf("read %q after Peek, want %q", buf, "more")
	}
}

// TestPeekChunked peeks at the same bytes delivered in reads of every size
// from 1 byte up, with buffers too small, just big enough and generous: the
// outcome must not depend on how the bytes arrive or on the buffer given.
func TestPeekChunked(t *testing.T) {
	hello := captureHello(t, clientConfig(istioSNI, "istio"))
	msg := handshakeBytes(t, hello)
	inputs := []struct {
		name string
		in   []byte
		need int // bytes that carry the hello
	}{
		{"one record", hello, len(hello)},
		{"3-byte records", records(msg, 3), len(records(msg, 3))},
		{"followed by data", append(slices.Clip(hello), 23, 3, 3, 0, 1, 0), len(hello)},
		{"dangling handshake", append(slices.Clip(hello), records([]byte{1, 2, 3}, 3)...), len(hello)},
	}
	for _, tt := range inputs {
		for _, bufSize := range []int{0, 1, len(hello), DefaultMaxBytes} {
			for chunk := 1; chunk <= len(tt.in); chunk += 1 + chunk/8 {
				buf := make([]byte, bufSize)
				h, err := new(Peeker).Peek(newMemConn(tt.in, chunk), buf)
				if err != nil {
					t.Fatalf("%s, buffer %d, reads of %d bytes: %v", tt.name, bufSize, chunk, err)
				}
				if h.ServerName != istioSNI || !slices.Equal(h.ALPN.Strings(), []string{"istio"}) {
					t.Fatalf("%s, buffer %d, reads of %d bytes: got %q %q", tt.name, bufSize, chunk, h.ServerName, h.ALPN)
				}
				if !bytes.HasPrefix(tt.in, h.Raw) || len(h.Raw) < tt.need {
					t.Fatalf("%s, buffer %d, reads of %d bytes: Raw is not the first %d bytes or more of the input",
						tt.name, bufSize, chunk, tt.need)
				}
				if bufSize >= len(tt.in) && &h.Raw[0] != &buf[0] {
					t.Fatalf("%s, buffer %d: Raw does not alias the buffer", tt.name, bufSize)
				}
			}
		}
	}
}

// TestPeekAllocs checks that, given a big enough buffer, Peek allocates
// nothing.
func TestPeekAllocs(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("instrumentation allocates")
	}
	hello := captureHello(t, clientConfig(istioSNI, "istio-peer-exchange", "istio"))
	buf := make([]byte, DefaultMaxBytes)
	c := newMemConn(hello, 0)
	var p Peeker
	allocs := testing.AllocsPerRun(100, func() {
		c.r.Reset(hello)
		if _, err := p.Peek(c, buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Peek allocates %v times, want 0", allocs)
	}
}

// A connection that ends before its first byte (a TCP health check)
// costs Peek no allocation: its error is ErrNoData, one value.
func TestPeekNoDataAllocs(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("instrumentation allocates")
	}
	buf := make([]byte, DefaultMaxBytes)
	c := newMemConn(nil, 0)
	var p Peeker
	allocs := testing.AllocsPerRun(100, func() {
		c.r.Reset(nil)
		if _, err := p.Peek(c, buf); err != ErrNoData {
			t.Fatalf("Peek of an empty connection: %v, want ErrNoData", err)
		}
	})
	if allocs != 0 {
		t.Errorf("Peek of an empty connection allocates %v times, want 0", allocs)
	}
	if !errors.Is(ErrNoData, ErrTruncated) || !errors.Is(ErrNoData, io.EOF) || Reason(ErrNoData) != Reason(ErrTruncated) {
		t.Errorf("ErrNoData %v: want ErrTruncated and io.EOF in its chain, and truncated's reason", ErrNoData)
	}
}

// TestPeekReasons checks that PeekReasons lists each label once, none
// that is not a peek error's; TestPeekErrors checks that every peek error
// has one of them.
func TestPeekReasons(t *testing.T) {
	got := PeekReasons()
	if len(got) != 8 || len(slices.Compact(slices.Sorted(slices.Values(got)))) != len(got) {
		t.Errorf("PeekReasons() = %q, want 8 distinct labels", got)
	}
	for _, bad := range []string{"", "other", Reason(ErrBadName)} {
		if slices.Contains(got, bad) {
			t.Errorf("PeekReasons() = %q holds %q, which Peek never returns", got, bad)
		}
	}
}

func TestReason(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{io.EOF, "other"},
		{ErrNotTLS, "not_tls"},
		{ErrSSLv2, "sslv2"},
		{ErrNotClientHello, "not_client_hello"},
		{ErrMalformed, "malformed"},
		{ErrTruncated, "truncated"},
		{ErrTooLarge, "too_large"},
		{ErrTimeout, "timeout"},
		{ErrBadName, "bad_name"},
	}
	for _, tt := range tests {
		if got := Reason(tt.err); got != tt.want {
			t.Errorf("Reason(%v) = %q, want %q", tt.err, got, tt.want)
		}
		if tt.err == nil {
			continue
		}
		wrapped := errors.Join(errors.New("context"), tt.err)
		if got := Reason(wrapped); got != tt.want {
			t.Errorf("Reason(%v) = %q, want %q", wrapped, got, tt.want)
		}
		if label := Reason(tt.err); strings.ContainsAny(label, " .-") {
			t.Errorf("label %q is not a plain identifier", label)
		}
	}
}
