package sni

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"
)

const (
	// DefaultMaxBytes is the default for [Peeker.MaxBytes]. It is four times
	// what one TLS record can hold and about the largest ClientHello that
	// crypto/tls accepts, so it leaves ample room for post-quantum key
	// shares and for hellos split into many small records.
	DefaultMaxBytes = 64 << 10

	// DefaultTimeout is the default for [Peeker.Timeout].
	DefaultTimeout = 5 * time.Second
)

const (
	recordHeaderLen     = 5
	handshakeHeaderLen  = 4
	recordTypeHandshake = 22
	maxPlaintext        = 1 << 14 // RFC 8446 section 5.1

	// initialBufSize is the buffer Peek allocates when the caller gives it
	// none: enough for the hellos of Go (about 1.5 KiB) and browsers (up to
	// about 2 KiB) in one read.
	initialBufSize = 4 << 10

	// maxEmptyReads bounds the reads in a row that may return no data and
	// no error, which io.Reader discourages but allows, so a broken
	// connection cannot make Peek spin.
	maxEmptyReads = 100
)

// Peeker reads TLS ClientHellos from connections without terminating TLS.
// The zero value, and a nil *Peeker, use the defaults. A Peeker may be used by
// several goroutines at once as long as its fields are not changed.
type Peeker struct {
	// MaxBytes caps the bytes Peek reads, record headers included; a
	// ClientHello that does not fit gets ErrTooLarge. Zero or less means
	// DefaultMaxBytes.
	MaxBytes int

	// Timeout bounds the time Peek waits for the whole ClientHello. Peek
	// sets the connection's read deadline to now plus Timeout and clears it
	// (sets the zero time) before returning, whether it succeeds or fails.
	// Zero means DefaultTimeout; less than zero means Peek leaves the read
	// deadline alone, and the caller must bound the wait some other way.
	Timeout time.Duration

	// Budget, if not nil, bounds the memory that all Peeks sharing it
	// allocate at once beyond the buffers their callers pass in: a Peek
	// that would exceed it fails with ErrOverBudget. Nil: no bound but
	// MaxBytes per Peek.
	Budget *Budget
}

// Budget is a bound on the bytes that Peeks sharing it hold at once in
// buffers they allocated. A Peek reserves each buffer it allocates before
// allocating it and releases everything when it returns. The zero Budget
// allows nothing to be allocated; a nil *Budget is no bound. It is safe
// for concurrent use.
type Budget struct {
	limit int64
	used  atomic.Int64
}

// NewBudget returns a Budget of limit bytes.
func NewBudget(limit int64) *Budget { return &Budget{limit: limit} }

// InUse returns the bytes reserved now.
func (b *Budget) InUse() int64 { return b.used.Load() }

// reserve takes n bytes from b if that keeps it within its limit.
func (b *Budget) reserve(n int) bool {
	if b == nil {
		return true
	}
	if b.used.Add(int64(n)) > b.limit {
		b.used.Add(-int64(n))
		return false
	}
	return true
}

// release returns n bytes to b.
func (b *Budget) release(n int) {
	if b != nil && n != 0 {
		b.used.Add(-int64(n))
	}
}

func (p *Peeker) maxBytes() int {
	if p == nil || p.MaxBytes <= 0 {
		return DefaultMaxBytes
	}
	return p.MaxBytes
}

func (p *Peeker) timeout() time.Duration {
	if p == nil || p.Timeout == 0 {
		return DefaultTimeout
	}
	return p.Timeout
}

// Peek reads from conn until it holds a complete ClientHello and returns the
// server name and ALPN protocols it offers, with every byte read in
// Hello.Raw. The ClientHello may arrive in any number of reads and span any
// number of TLS handshake records.
//
// Peek reads into buf, which the caller may reuse once it is done with
// Hello.Raw (for example from a sync.Pool). Peek uses all of buf's capacity,
// reading as much as conn has ready each time but never more than MaxBytes in
// all, and allocates a bigger buffer only once buf is full: twice the size,
// but no more than the hello's records need. What Peek holds thus grows
// with the bytes the client has actually sent, never with the length its
// hello announces: at most twice the bytes received, plus buf. With a big
// enough buf, Peek allocates nothing: the Hello's server name and ALPN
// are views of buf (see Hello); a hello split across records costs one
// allocation, to reassemble it once all of it has arrived, and then they
// are views of that.
//
// The error, if any, wraps one of ErrNotTLS, ErrSSLv2, ErrNotClientHello,
// ErrMalformed, ErrTruncated, ErrTooLarge, ErrTimeout or ErrOverBudget.
// Peek gives up as soon as the bytes read prove the connection cannot
// carry an acceptable ClientHello: a connection of non-TLS bytes fails
// after its first read. On
// error Hello.Raw still holds the bytes read, for logging or for handing the
// connection to another protocol.
func (p *Peeker) Peek(conn net.Conn, buf []byte) (Hello, error) {
	return p.PeekFrom(conn, buf, 0)
}

// PeekFrom is Peek for a connection of which the first n bytes were
// read already, into buf[:n] (as Parse found them incomplete), n at most
// MaxBytes: it reads the rest under the same rule and limits, the
// timeout counting from the call.
func (p *Peeker) PeekFrom(conn net.Conn, buf []byte, n int) (Hello, error) {
	limit := p.maxBytes()
	if t := p.timeout(); t > 0 {
		err := conn.SetReadDeadline(time.Now().Add(t))
		switch {
		case err == nil:
			// Clear it whatever the outcome: left behind, it would cut
			// short whatever the caller does with the connection next,
			// such as the forwarding copy.
			defer conn.SetReadDeadline(time.Time{})
		case !errors.Is(err, os.ErrNoDeadline):
			return Hello{}, fmt.Errorf("%w: setting read deadline: %w", ErrTruncated, err)
		}
	}

	buf = buf[:cap(buf)]
	if len(buf) > limit {
		buf = buf[:limit]
	}
	var (
		a     assembler
		empty int
	)
	a.budget = p.budget()
	defer func() { a.budget.release(a.held) }()
	if n > 0 {
		if h, done, err := a.hello(buf[:n], limit); done {
			return h, err
		}
	}
	for {
		if n == len(buf) {
			if n >= limit {
				return Hello{Raw: buf[:n]}, fmt.Errorf("%w: no complete ClientHello in %d bytes", ErrTooLarge, n)
			}
			size := min(max(2*len(buf), initialBufSize), limit)
			if a.want > n {
				size = min(size, a.want)
			}
			if !a.budget.reserve(size) {
				return Hello{Raw: buf[:n]}, fmt.Errorf("%w: %d more bytes after %d", ErrOverBudget, size, n)
			}
			b := make([]byte, size)
			copy(b, buf[:n])
			buf = b
			// The buffer it replaces, if Peek allocated it, is garbage now.
			a.budget.release(a.grown)
			a.held += size - a.grown
			a.grown = size
		}
		m, rerr := conn.Read(buf[n:])
		n += m
		// Look at the data before the error: a client may send its last
		// bytes and close at once.
		if h, done, err := a.hello(buf[:n], limit); done {
			return h, err
		}
		if rerr != nil {
			return Hello{Raw: buf[:n]}, ReadError(rerr, n)
		}
		if m > 0 {
			empty = 0
		} else if empty++; empty >= maxEmptyReads {
			return Hello{Raw: buf[:n]}, fmt.Errorf("%w after %d bytes: %w", ErrTruncated, n, io.ErrNoProgress)
		}
	}
}

// ErrIncomplete is Parse's error for bytes that are the start of an
// acceptable ClientHello but not all of it.
var ErrIncomplete = errors.New("sni: ClientHello incomplete")

// Parse applies Peek's rule to raw, the bytes a connection sent so far
// (read by the caller, as an event loop does): it returns the Hello, as
// Peek would, once raw holds a complete ClientHello, Peek's error as soon
// as raw proves the connection cannot carry an acceptable one (ErrTooLarge
// once raw reaches MaxBytes), or ErrIncomplete while more bytes are
// needed. A hello split across records is reassembled under the Budget,
// as Peek does; the Hello aliases raw otherwise.
func (p *Peeker) Parse(raw []byte) (Hello, error) {
	limit := p.maxBytes()
	if len(raw) > limit {
		raw = raw[:limit]
	}
	var a assembler
	a.budget = p.budget()
	defer func() { a.budget.release(a.held) }()
	if h, done, err := a.hello(raw, limit); done {
		return h, err
	}
	if len(raw) >= limit {
		return Hello{Raw: raw}, fmt.Errorf("%w: no complete ClientHello in %d bytes", ErrTooLarge, len(raw))
	}
	return Hello{Raw: raw}, ErrIncomplete
}

// hello examines raw, the bytes read so far, and reports whether they
// decide the peek: the ClientHello they hold, or the error that proves
// they cannot hold an acceptable one.
func (a *assembler) hello(raw []byte, limit int) (Hello, bool, error) {
	msg, err := a.advance(raw, limit)
	if err != nil {
		return Hello{Raw: raw}, true, err
	}
	if msg == nil {
		return Hello{}, false, nil
	}
	h, err := ParseClientHello(msg)
	h.Raw = raw
	return h, true, err
}

func (p *Peeker) budget() *Budget {
	if p == nil {
		return nil
	}
	return p.Budget
}

// ErrNoData is the error of a peek whose connection ended before its
// first byte (io.EOF after 0 bytes): a load balancer's TCP health check.
// It is one value, not made per connection, the commonest refusal being
// the cheapest.
var ErrNoData = fmt.Errorf("%w after 0 bytes: %w", ErrTruncated, io.EOF)

// ReadError maps err, from reading a connection's first n bytes for a
// peek, to the package's errors (ErrTimeout, ErrTruncated, ErrNoData),
// keeping err in the chain: for a caller that reads the bytes itself and
// parses them with Parse.
func ReadError(err error, n int) error {
	if n == 0 && err == io.EOF {
		return ErrNoData
	}
	var ne net.Error
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w after %d bytes: %w", ErrTimeout, n, err)
	}
	return fmt.Errorf("%w after %d bytes: %w", ErrTruncated, n, err)
}

// assembler reassembles a ClientHello from the TLS records at the start of a
// connection as they arrive. It checks each byte as soon as it is read, so
// that hopeless connections are dropped without waiting for more data. It
// copies nothing until the whole message has arrived, so that what a
// client makes it hold never exceeds what the client sent.
type assembler struct {
	off    int // offset of the first record not yet consumed
	msgLen int // length of the handshake message, header included; 0 until known
	want   int // bytes of records expected to carry the message; 0 until known
	got    int // message bytes in the records consumed
	hdr    [handshakeHeaderLen]byte
	hdrLen int // bytes of hdr filled from consumed records

	budget *Budget
	grown  int // size of the read buffer Peek allocated, 0 if none
	held   int // bytes reserved from budget
}

// advance examines raw, all the bytes read so far, and returns the complete
// ClientHello message once raw contains it. The message aliases raw when a
// single record carries it.
func (a *assembler) advance(raw []byte, limit int) ([]byte, error) {
	for {
		rest := raw[a.off:]
		if err := a.checkRecordHeader(rest); err != nil {
			return nil, err
		}
		if len(rest) < recordHeaderLen {
			return nil, nil
		}
		n := int(rest[3])<<8 | int(rest[4])
		frag := rest[recordHeaderLen:]
		complete := len(frag) >= n
		if complete {
			frag = frag[:n]
		}
		if err := a.checkHandshakeHeader(frag, limit); err != nil {
			return nil, err
		}
		a.expect(n)
		if !complete {
			return nil, nil
		}
		a.off += recordHeaderLen + n

		// Most hellos fit in their first record: parse them in place.
		if a.got == 0 && a.msgLen > 0 && len(frag) >= a.msgLen {
			return frag[:a.msgLen], nil
		}
		a.hdrLen += copy(a.hdr[a.hdrLen:], frag)
		a.got += len(frag)
		if a.msgLen > 0 && a.got >= a.msgLen {
			return a.join(raw)
		}
	}
}

// expect estimates, once the message length is known, the bytes of
// records that carry the message, taking the current record, of n bytes,
// as the size of the rest: exact for the usual hellos (one record, or
// records of one size), and only ever a hint for growing the buffer.
func (a *assembler) expect(n int) {
	if a.msgLen == 0 {
		return
	}
	a.want = a.off + recordHeaderLen + n
	if left := a.msgLen - a.got - n; left > 0 {
		a.want += left + (left+n-1)/n*recordHeaderLen
	}
}

// join copies the message out of the records of raw that carry it, once
// they have all arrived.
func (a *assembler) join(raw []byte) ([]byte, error) {
	// checkHandshakeHeader has bounded msgLen by limit, and every byte is
	// already in raw: a client cannot make this larger than what it sent.
	if !a.budget.reserve(a.msgLen) {
		return nil, fmt.Errorf("%w: %d bytes to reassemble the ClientHello", ErrOverBudget, a.msgLen)
	}
	a.held += a.msgLen
	msg := make([]byte, 0, a.msgLen)
	for off := 0; len(msg) < a.msgLen; {
		n := int(raw[off+3])<<8 | int(raw[off+4])
		frag := raw[off+recordHeaderLen : off+recordHeaderLen+n]
		msg = append(msg, frag[:min(len(frag), a.msgLen-len(msg))]...)
		off += recordHeaderLen + n
	}
	return msg, nil
}

// checkRecordHeader checks as much of a record header as h holds. The first
// record decides whether the connection speaks TLS at all; a later record
// that is not a handshake record interrupts the ClientHello, which TLS
// forbids.
func (a *assembler) checkRecordHeader(h []byte) error {
	first := a.off == 0
	if len(h) >= 1 && h[0] != recordTypeHandshake {
		switch {
		case !first:
			return fmt.Errorf("%w: record of type %d before the ClientHello ended", ErrMalformed, h[0])
		case h[0]&0x80 == 0:
			return fmt.Errorf("%w: first byte 0x%02x", ErrNotTLS, h[0])
		case len(h) < 3:
			return nil // the third byte tells an SSLv2 hello from noise
		case h[2] == typeClientHello:
			return ErrSSLv2
		default:
			return fmt.Errorf("%w: first byte 0x%02x", ErrNotTLS, h[0])
		}
	}
	if len(h) >= 2 && h[1] != 3 {
		if first {
			return fmt.Errorf("%w: record version 0x%02x%02x", ErrNotTLS, h[1], h[min(2, len(h)-1)])
		}
		return fmt.Errorf("%w: record version 0x%02x%02x", ErrMalformed, h[1], h[min(2, len(h)-1)])
	}
	if len(h) >= recordHeaderLen {
		if n := int(h[3])<<8 | int(h[4]); n == 0 || n > maxPlaintext {
			return fmt.Errorf("%w: record length %d", ErrMalformed, n)
		}
	}
	return nil
}

// checkHandshakeHeader checks as much of the handshake message header as the
// consumed records and frag, the current record's fragment so far, hold.
// Once the header is complete it fixes msgLen, and fails at once if the
// message cannot fit in limit bytes.
func (a *assembler) checkHandshakeHeader(frag []byte, limit int) error {
	if a.msgLen > 0 {
		return nil
	}
	h := a.hdr
	k := a.hdrLen
	k += copy(h[k:], frag)
	if k == 0 {
		return nil
	}
	if h[0] != typeClientHello {
		return fmt.Errorf("%w: handshake type %d", ErrNotClientHello, h[0])
	}
	if k < handshakeHeaderLen {
		return nil
	}
	msgLen := handshakeHeaderLen + (int(h[1])<<16 | int(h[2])<<8 | int(h[3]))
	records := (msgLen + maxPlaintext - 1) / maxPlaintext
	need := msgLen + records*recordHeaderLen
	if need > limit {
		return fmt.Errorf("%w: ClientHello of %d bytes needs at least %d bytes of records, limit is %d",
			ErrTooLarge, msgLen, need, limit)
	}
	a.msgLen = msgLen
	return nil
}
