package tunnel

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
)

// writeRecorder counts the writes that reach a socket, and fails them
// once told to.
type writeRecorder struct {
	net.Conn
	mu     sync.Mutex
	writes int
	fail   error
}

func (w *writeRecorder) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.writes++
	fail := w.fail
	w.mu.Unlock()
	if fail != nil {
		return 0, fail
	}
	return w.Conn.Write(p)
}

func (w *writeRecorder) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes
}

// readTap keeps a copy of what is read from a socket: the TLS records a
// peer received.
type readTap struct {
	net.Conn
	mu  sync.Mutex
	got []byte
}

func (r *readTap) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	r.got = append(r.got, p[:n]...)
	r.mu.Unlock()
	return n, err
}

// lastRecordLen returns the length of the last TLS record read, -1 if
// none was: an encrypted TLS 1.3 close_notify is closeNotifyLen long.
func (r *readTap) lastRecordLen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	last := -1
	for b := r.got; len(b) >= 5; {
		n := int(b[3])<<8 | int(b[4])
		if len(b) < 5+n {
			return -2 // a record cut short
		}
		last, b = n, b[5+n:]
	}
	return last
}

// readAll reads c until EOF into got, then sends the read's error.
func readAll(c io.Reader) (got *bytes.Buffer, done <-chan error) {
	got = new(bytes.Buffer)
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(got, c)
		errc <- err
	}()
	return got, errc
}

// closeNotifyLen is the length of an encrypted TLS 1.3 close_notify
// record: the alert's two bytes, the inner content type, and the AEAD
// tag of AES-GCM or ChaCha20-Poly1305. No record of the tests' data is as
// short.
const closeNotifyLen = 2 + 1 + 16

// tlsOverBatch connects a TLS 1.3 client whose socket is a batchConn (over
// a writeRecorder) to a TLS server over real loopback TCP, with SVIDs of
// one development CA, and returns the client side as a link gives it to
// yamux, the recorder, the server connection and what its socket read.
func tlsOverBatch(t *testing.T) (*frameConn, *writeRecorder, *tls.Conn, *readTap) {
	t.Helper()
	ca := newCA(t, "a.test")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sraw, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	rec := &writeRecorder{Conn: raw}
	batch := &batchConn{Conn: rec}
	tap := &readTap{Conn: sraw}
	tc := tls.Client(batch, identity.ClientTLSConfig(newSource(t, ca, "/gw/client"), nil))
	sc := tls.Server(tap, identity.ServerTLSConfig(newSource(t, ca, "/gw/server"), nil))
	t.Cleanup(func() { tc.Close(); sc.Close() })
	errc := make(chan error, 1)
	go func() { errc <- sc.HandshakeContext(testContext(t)) }()
	if err := tc.HandshakeContext(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return &frameConn{Conn: tc, b: batch}, rec, sc, tap
}

// TestFrameConnBatchesRecords: each frame yamux writes reaches the socket
// in one write(2) while its records fit batchSize (crypto/tls alone makes
// one per 16 KiB record), in more only past that; writes outside frames
// pass straight through; and the peer reads every byte, in order, then
// the close_notify.
func TestFrameConnBatchesRecords(t *testing.T) {
	fc, rec, sc, tap := tlsOverBatch(t)
	got, readDone := readAll(sc)
	var sent bytes.Buffer
	send := func(p []byte, w io.Writer) {
		t.Helper()
		if n, err := w.Write(p); err != nil || n != len(p) {
			t.Fatalf("Write(%d bytes) = %d, %v", len(p), n, err)
		}
		sent.Write(p)
	}
	chunk := func(n int, seed uint64) []byte {
		b, err := io.ReadAll(data(seed, int64(n)))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// crypto/tls sends small records until 128 KiB have gone: past
	// them, records are 16 KiB, as on a link that has carried traffic.
	send(chunk(256<<10, 0), fc)
	for i, tc := range []struct {
		name   string
		size   int
		writes int
		frame  bool
	}{
		{"one byte", 1, 1, true},
		{"one record", 16 << 10, 1, true},
		{"a relay write as one frame", 128<<10 + 12, 1, true},
		{"a largest frame", yamuxMaxFrame, 2, true},
		{"outside a frame, one write per record", 64 << 10, 4, false},
	} {
		before := rec.count()
		var w io.Writer = fc
		if !tc.frame {
			w = fc.Conn
		}
		send(chunk(tc.size, uint64(i+1)), w)
		if n := rec.count() - before; n != tc.writes {
			t.Errorf("%s (%d bytes): %d writes to the socket, want %d", tc.name, tc.size, n, tc.writes)
		}
	}
	if err := fc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-readDone; err != nil {
		t.Fatalf("peer's read: %v", err)
	}
	if !bytes.Equal(got.Bytes(), sent.Bytes()) {
		t.Fatalf("peer read %d bytes that differ from the %d sent", got.Len(), sent.Len())
	}
	if n := tap.lastRecordLen(); n != closeNotifyLen {
		t.Errorf("the peer's last record is %d bytes long, want a close_notify's %d", n, closeNotifyLen)
	}
}

// deadlineHook runs then once, when a deadline already past is set for
// the socket's writes: where crypto/tls's Close has sent its close_notify
// and bars further writes, before it closes the socket.
type deadlineHook struct {
	net.Conn
	then func()
}

func (d *deadlineHook) SetWriteDeadline(t time.Time) error {
	err := d.Conn.SetWriteDeadline(t)
	if then := d.then; then != nil && !t.After(time.Now()) {
		d.then = nil
		then()
	}
	return err
}

// TestFrameConnCloseInBatch: a TLS Close that comes while a frame's
// records are being gathered (yamux closes a session from another
// goroutine than the send loop that writes frames) still sends them and
// the close_notify, in order, before the socket closes: the peer reads
// the frame and then the close_notify, not a plain EOF. The steps are
// frameConn.Write's, with the Close between them; in the last case the
// frame's end comes inside Close, after crypto/tls gathered its
// close_notify and set a deadline of now to bar later writes, which
// fails end's write before a byte goes.
func TestFrameConnCloseInBatch(t *testing.T) {
	const (
		closeBefore    = iota // Close before the frame's records
		closeAfter            // Close after them, then the frame's end
		endInCloseNote        // the frame's end between close_notify and the socket's Close
	)
	for _, tc := range []struct {
		name string
		when int
	}{
		{"after the frame's records", closeAfter},
		{"before the frame's records", closeBefore},
		{"end between close_notify and socket close", endInCloseNote},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leakcheck.Check(t)
			fc, _, sc, tap := tlsOverBatch(t)
			got, readDone := readAll(sc)
			frame, err := io.ReadAll(data(1, 128<<10+12))
			if err != nil {
				t.Fatal(err)
			}
			want := frame
			fc.b.begin()
			if tc.when == closeBefore {
				if err := fc.Close(); err != nil {
					t.Fatalf("Close: %v", err)
				}
				if _, err := fc.Conn.Write(frame); err == nil {
					t.Fatal("a Write after Close succeeded")
				}
				want = nil
				_ = fc.b.end()
			} else {
				if _, err := fc.Conn.Write(frame); err != nil {
					t.Fatal(err)
				}
				if tc.when == endInCloseNote {
					fc.b.Conn = &deadlineHook{Conn: fc.b.Conn, then: func() { _ = fc.b.end() }}
				}
				if err := fc.Close(); err != nil {
					t.Fatalf("Close: %v", err)
				}
				if tc.when == closeAfter {
					_ = fc.b.end()
				}
			}
			wantThenCloseNotify(t, got, readDone, tap, want)
		})
	}
}

// wantThenCloseNotify checks that the peer, reading into got until
// readDone, read want and then a close_notify, its last record.
func wantThenCloseNotify(t *testing.T, got *bytes.Buffer, readDone <-chan error, tap *readTap, want []byte) {
	t.Helper()
	if err := <-readDone; err != nil {
		t.Fatalf("peer's read: %v", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("peer read %d bytes, want the %d of the frame", got.Len(), len(want))
	}
	if n := tap.lastRecordLen(); n != closeNotifyLen {
		t.Errorf("the peer's last record is %d bytes long, want a close_notify's %d", n, closeNotifyLen)
	}
}

// TestBatchConnCloseBreaksWrite: Close does not wait for a socket write
// that cannot finish (a peer that stopped reading): it cuts it short, as
// closing the socket alone would.
func TestBatchConnCloseBreaksWrite(t *testing.T) {
	leakcheck.Check(t)
	fc, _, _, _ := tlsOverBatch(t) // the peer never reads
	werr := make(chan error, 1)
	go func() {
		// Far more than the socket buffers hold.
		_, err := fc.Write(make([]byte, yamuxMaxFrame))
		for err == nil {
			_, err = fc.Write(make([]byte, yamuxMaxFrame))
		}
		werr <- err
	}()
	await.True(t, testTimeout, "a write blocked on the socket", func() bool {
		if !fc.b.mu.TryLock() {
			return true
		}
		fc.b.mu.Unlock()
		return false
	})
	_ = fc.Close()
	if err := <-werr; err == nil {
		t.Fatal("the blocked write succeeded")
	}
}

// TestFrameConnWriteError: a socket error met while writing a frame's
// batch is the frame's error, so that yamux ends the link.
func TestFrameConnWriteError(t *testing.T) {
	fc, rec, _, _ := tlsOverBatch(t)
	broken := errors.New("socket broke")
	rec.mu.Lock()
	rec.fail = broken
	rec.mu.Unlock()
	n, err := fc.Write(make([]byte, 32<<10))
	if !errors.Is(err, broken) || n != 0 {
		t.Fatalf("Write = %d, %v; want 0 and the socket's error", n, err)
	}
}
