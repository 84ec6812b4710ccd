package tunnel

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// batchSize bounds what a TCP link gathers for one write(2): a 128 KiB
// relay write of the gateway (one yamux frame with its 12-byte header)
// is nine TLS records of at most 16 KiB + 22 bytes each, 131,282 bytes,
// which fit.
const batchSize = 132 << 10

// batchConn is a TCP link's socket as its TLS connection writes to it.
// crypto/tls makes one write(2) per record, at most 16 KiB of plaintext;
// while a yamux frame is being written ([frameConn]), batchConn gathers
// the frame's records and hands them to the socket in one write, so that
// a 128 KiB frame costs one system call, not nine, and reaches the peer
// in larger segments (fewer reads there too). What TLS writes outside a
// frame (the handshake, alerts) goes straight through, after anything
// gathered: all writes pass mu in the order TLS made them.
type batchConn struct {
	net.Conn // the socket; reads and the rest pass through
	mu       sync.Mutex
	frames   int         // frames being written
	buf      []byte      // records gathered; allocated at the link's first frame
	err      error       // the first socket write error: nothing is written after it
	cut      atomic.Bool // Close is cutting a write short: its error is final
}

// closeFlushTimeout bounds how long Close writes the records gathered
// when it came: crypto/tls gives its close_notify as long.
const closeFlushTimeout = 5 * time.Second

// Write takes one TLS record.
func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	if b.frames == 0 {
		// Records a frame's end could not write may still be gathered.
		if err := b.flush(); err != nil {
			return 0, err
		}
		return b.write(p)
	}
	if len(b.buf)+len(p) > cap(b.buf) {
		if err := b.flush(); err != nil {
			return 0, err
		}
		if len(p) > cap(b.buf) {
			return b.write(p)
		}
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// begin starts gathering the records of a frame.
func (b *batchConn) begin() {
	b.mu.Lock()
	if b.buf == nil {
		b.buf = make([]byte, 0, batchSize)
	}
	b.frames++
	b.mu.Unlock()
}

// end writes out what a frame's records left gathered. A write error is
// the frame's: yamux ends the session on it.
func (b *batchConn) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.frames--
	return b.flush()
}

// flush writes the gathered records; b.mu is held. They are dropped on
// an error, which ends the link, but for a deadline that let nothing be
// written: they stay for Close.
func (b *batchConn) flush() error {
	if len(b.buf) == 0 || b.err != nil {
		return b.err
	}
	_, err := b.write(b.buf)
	if err == nil || b.err != nil {
		b.buf = b.buf[:0]
	}
	return err
}

// write writes p to the socket; b.mu is held. After an error, which may
// have left part of a record written, nothing more is: the peer would
// read garbage. A deadline that passed before a byte went is not final,
// unless Close set it: crypto/tls's Close bars writes with a deadline of
// now once its close_notify is gathered, and a frame's end that comes
// then, before the socket closes, must leave the records to Close.
func (b *batchConn) write(p []byte) (int, error) {
	n, err := b.Conn.Write(p)
	if err != nil && (n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) || b.cut.Load()) {
		b.err = err
	}
	return n, err
}

// Close writes out what was gathered, then closes the socket. crypto/tls
// closes its connection while a frame may be being gathered (yamux ends a
// session from another goroutine than its send loop): its close_notify,
// and the frame's records before it, are then in buf, and closing the
// socket at once would drop them, the peer reading a plain EOF. A socket
// write under way (a peer that stopped reading) is cut short, as closing
// the socket would, rather than waited for.
func (b *batchConn) Close() error {
	// TryLock tells whether a writer holds the socket: then its write
	// ends now, and Close takes mu as soon as it returns.
	if !b.mu.TryLock() {
		b.cut.Store(true)
		_ = b.Conn.SetWriteDeadline(time.Now())
		b.mu.Lock()
	}
	defer b.mu.Unlock()
	if len(b.buf) > 0 && b.err == nil {
		// TLS set a deadline of now after its close_notify.
		_ = b.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
		_ = b.flush()
	}
	return b.Conn.Close()
}

// recordPayload is the most plaintext crypto/tls puts in one record.
const recordPayload = 16 << 10

// frameConn is a link's TLS connection as yamux uses it: each Write, one
// frame from yamux's send loop, reaches the socket as one batch of
// records. A frame of one record (window updates, pings, small writes)
// goes straight through: a link that carries only those never takes the
// batch buffer.
type frameConn struct {
	*tls.Conn
	b *batchConn
}

// Write writes p, one yamux frame, through TLS: as one batch of records
// if it takes more than one. An error writing the batch is the frame's,
// although TLS took every record.
func (c *frameConn) Write(p []byte) (int, error) {
	if len(p) <= recordPayload {
		return c.Conn.Write(p)
	}
	c.b.begin()
	n, err := c.Conn.Write(p)
	if ferr := c.b.end(); err == nil && ferr != nil {
		return 0, ferr
	}
	return n, err
}
