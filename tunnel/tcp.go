package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-yamux/v5"
)

// The TCP fallback: a TLS 1.3 connection with the same identities and
// ALPN as QUIC, on the TCP port with the number of the UDP one. After the
// handshake the accepting side authorizes the dialer and writes one status
// byte (and, when it refuses, a reason), then both run yamux over the TLS
// connection: one yamux stream per forwarded connection, with the same
// stream header as QUIC. yamux brings per-stream flow control, half-close
// (FIN) and resets (RST).

// yamuxStreamWindow is the receive window every yamux stream starts
// with, fixed by yamux.
const yamuxStreamWindow = 256 << 10

// yamuxMaxFrame is the largest data frame a TCP link sends: a stream
// write of up to this size (the gateway relays 128 KiB) travels as one
// frame, one hand-off to the session's send loop and one TLS write,
// instead of yamux's default 64 KiB pieces. It costs no memory: the
// receive window, not the frame, bounds what a stream buffers.
const yamuxMaxFrame = 256 << 10

// yamuxConfig returns the yamux settings for one side of a TCP link.
func (c Config) yamuxConfig(log *slog.Logger) *yamux.Config {
	yc := yamux.DefaultConfig()
	yc.EnableKeepAlive = true
	yc.KeepAliveInterval = c.KeepAlivePeriod
	// yamux pings after KeepAliveInterval without receiving and gives up
	// on a ping or a frame write after ConnectionWriteTimeout: together
	// they make MaxIdleTimeout, as for QUIC.
	yc.ConnectionWriteTimeout = c.MaxIdleTimeout - c.KeepAlivePeriod
	streams := c.tcpStreams()
	yc.MaxIncomingStreams = uint32(min(streams, 1<<31))
	yc.AcceptBacklog = int(min(streams, 1<<16))
	yc.MaxStreamWindowSize = uint32(max(min(c.MaxStreamReceiveWindow, 1<<31), yamuxStreamWindow))
	yc.MaxMessageSize = yamuxMaxFrame
	yc.LogOutput = slog.NewLogLogger(log.Handler(), slog.LevelWarn).Writer()
	return yc
}

// dialTCP sets up a link over TCP + TLS 1.3: the handshake, the check
// that the peer is the member it should be, our hello, then the
// accepting side's verdict.
func (e *Endpoint) dialTCP(ctx context.Context, addr string) (conn, Member, error) {
	d := net.Dialer{}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, Member{}, err
	}
	l := newTCPLayers(raw, tls.Client, e.clientTLS)
	tc := l.tc
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, Member{}, tlsError(err)
	}
	peer, err := e.expectPeer(addr, tc.ConnectionState())
	if err != nil {
		_ = raw.Close()
		return nil, Member{}, err
	}
	// The verdict read also carries the peer's verdict on our certificate:
	// a TLS 1.3 client learns of a refusal only when it reads.
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Now()) })
	streams, err := e.tcpSetup(tc)
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		_ = tc.Close()
		return nil, Member{}, err
	}
	_ = raw.SetDeadline(time.Time{})
	// Open no more streams than the peer accepts, or than our own budget
	// holds the answers of: past that, openStream waits as QUIC does.
	c, err := e.startYamux(l, yamux.Client, min(streams, e.cfg.tcpStreams()))
	if err != nil {
		_ = tc.Close()
		return nil, Member{}, err
	}
	return c, peer, nil
}

// tcpLayers is a TCP link's stack below yamux: the socket, counted for
// liveness (countingConn); the batch that gathers the TLS records of one
// yamux frame into one write (batchConn); and TLS 1.3 over the batch.
type tcpLayers struct {
	counted *countingConn
	batch   *batchConn
	tc      *tls.Conn
}

// newTCPLayers stacks the layers on raw, with TLS as side (tls.Client or
// tls.Server) with cfg; the handshake is the caller's.
func newTCPLayers(raw net.Conn, side func(net.Conn, *tls.Config) *tls.Conn, cfg *tls.Config) tcpLayers {
	counted := &countingConn{Conn: raw}
	batch := &batchConn{Conn: counted}
	return tcpLayers{counted: counted, batch: batch, tc: side(batch, cfg)}
}

// startYamux runs yamux as side (yamux.Client or yamux.Server) over the
// layers, each frame one batch (frameConn), with a fresh memory budget
// for the link; streams is how many streams the dialing side may open (0
// on the accepting side).
func (e *Endpoint) startYamux(l tcpLayers, side func(net.Conn, *yamux.Config, func() (yamux.MemoryManager, error)) (*yamux.Session, error), streams int64) (*tcpConn, error) {
	budget := newLinkBudget(e.cfg.MaxTCPLinkMemory)
	sess, err := side(&frameConn{Conn: l.tc, b: l.batch}, e.cfg.yamuxConfig(e.log), budget.span)
	if err != nil {
		return nil, fmt.Errorf("starting yamux: %w", err)
	}
	return newTCPConn(sess, l.tc, l.counted, streams), nil
}

// tcpSetup sends the hello and reads the verdict: the number of streams
// the peer allows on the link.
func (e *Endpoint) tcpSetup(tc *tls.Conn) (int64, error) {
	if err := writeHello(tc, e.cfg.Name); err != nil {
		return 0, tlsError(err)
	}
	streams, err := readVerdict(tc)
	if err != nil {
		return 0, tlsError(err)
	}
	if streams <= 0 {
		return 0, fmt.Errorf("%w: the peer allows no streams", errBadVerdict)
	}
	return streams, nil
}

// tlsError explains a TLS failure: an alert from the peer during or just
// after the handshake means it refused our certificate.
func tlsError(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" {
		return fmt.Errorf("%w: it refused our certificate (%v): %w", ErrRejected, oe.Err, err)
	}
	return err
}

// acceptTCP accepts TCP links until the listener closes. An accept error,
// such as running out of file descriptors, is retried after a backoff.
// A connection over MaxHandshakes is closed at once.
func (e *Endpoint) acceptTCP() {
	defer e.wg.Done()
	var backoff time.Duration
	for {
		c, err := e.tcpLn.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if backoff = e.acceptFailed(TransportTCP, err, backoff); backoff == 0 {
				return
			}
			continue
		}
		backoff = 0
		done, ok := e.startHandshake(c.RemoteAddr(), TransportTCP)
		if !ok {
			_ = c.Close()
			continue
		}
		e.wg.Add(1)
		go e.serveTCP(c, done)
	}
}

// serveTCP runs the TLS handshake of an inbound TCP link, reads the
// dialer's hello, admits the peer, answers with its verdict and serves
// the link's streams. done gives back the handshake slot.
func (e *Endpoint) serveTCP(raw net.Conn, done func()) {
	defer e.wg.Done()
	log := e.log.With("peer", raw.RemoteAddr().String(), "transport", TransportTCP)
	l := newTCPLayers(raw, tls.Server, e.serverTLS)
	tc := l.tc
	peer, err := e.tcpAdmit(tc, log)
	done()
	if err != nil {
		var r *refusal
		if errors.As(err, &r) {
			_ = raw.SetWriteDeadline(time.Now().Add(time.Second))
			_ = writeRefusal(tc, r)
		}
		_ = tc.Close()
		return
	}
	_ = raw.SetDeadline(time.Time{})
	c, err := e.startYamux(l, yamux.Server, 0)
	if err != nil {
		log.Error("inbound link failed", "err", err)
		e.unadmit(peer)
		_ = raw.Close()
		return
	}
	e.serveConn(c, peer, log.With("peer_id", peer.ID, "member", peer.Name))
}

// tcpAdmit runs the handshake, reads the hello, admits the peer and sends
// the ready status, all within HandshakeTimeout. A *refusal error is to be
// sent to the peer; a peer admitted holds a link slot that serveConn
// gives back.
func (e *Endpoint) tcpAdmit(tc *tls.Conn, log *slog.Logger) (Member, error) {
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.HandshakeTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = tc.NetConn().SetDeadline(time.Now()) })
	defer stop()
	if err := tc.HandshakeContext(ctx); err != nil {
		// Certificate refusals were counted by VerifyConnection.
		log.Warn("inbound tunnel handshake failed", "err", err)
		return Member{}, err
	}
	name, err := readHello(tc)
	if err != nil {
		return Member{}, e.badHello(log, err)
	}
	peer, err := e.admit(tc.ConnectionState(), name, log)
	if err != nil {
		return Member{}, err
	}
	if err := writeReady(tc, e.cfg.tcpStreams()); err != nil {
		log.Warn("inbound link failed", "err", err)
		e.unadmit(peer)
		return Member{}, err
	}
	if !stop() {
		e.unadmit(peer)
		return Member{}, ctx.Err()
	}
	return peer, nil
}

// countingConn counts the bytes read from a TCP connection, so that a
// link can tell whether its peer has been heard lately.
type countingConn struct {
	net.Conn
	n atomic.Uint64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(uint64(n))
	return n, err
}

// tcpConn is a link over TCP: a yamux session over TLS.
type tcpConn struct {
	sess *yamux.Session
	tc   *tls.Conn
	raw  *countingConn
	open atomic.Int64
	// slots holds a token per stream opened and not yet released, up to
	// what the peer allows (yamux resets streams past that instead of
	// making the opener wait); nil on the accepting side.
	slots chan struct{}
}

// newTCPConn returns a link over sess; streams is how many streams the
// dialing side may have open at once (0 on the accepting side).
func newTCPConn(sess *yamux.Session, tc *tls.Conn, raw *countingConn, streams int64) *tcpConn {
	c := &tcpConn{sess: sess, tc: tc, raw: raw}
	if streams > 0 {
		c.slots = make(chan struct{}, streams)
	}
	return c
}

func (c *tcpConn) openStream(ctx context.Context) (rawStream, error) {
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for one of the peer's %d streams: %w", cap(c.slots), ctx.Err())
	case <-c.sess.CloseChan():
		return nil, yamuxError(yamux.ErrSessionShutdown)
	}
	ys, err := c.sess.OpenStream(ctx)
	if err != nil {
		<-c.slots
		return nil, yamuxError(err)
	}
	c.open.Add(1)
	return &tcpStream{Stream: ys, open: &c.open, slots: c.slots}, nil
}

func (c *tcpConn) acceptStream(ctx context.Context) (rawStream, error) {
	// yamux's Accept takes no context: closing the session ends it.
	stop := context.AfterFunc(ctx, func() { _ = c.sess.Close() })
	defer stop()
	ys, err := c.sess.AcceptStream()
	if err != nil {
		return nil, yamuxError(err)
	}
	c.open.Add(1)
	return &tcpStream{Stream: ys, open: &c.open}, nil
}

func (c *tcpConn) close(code uint64, _ string) { _ = c.sess.CloseWithError(uint32(code)) }

func (c *tcpConn) done() <-chan struct{}         { return c.sess.CloseChan() }
func (c *tcpConn) rtt() time.Duration            { return c.sess.RTT() }
func (c *tcpConn) received() uint64              { return c.raw.n.Load() }
func (c *tcpConn) streams() int64                { return c.open.Load() }
func (c *tcpConn) transport() Transport          { return TransportTCP }
func (c *tcpConn) tlsState() tls.ConnectionState { return c.tc.ConnectionState() }
func (c *tcpConn) LocalAddr() net.Addr           { return c.tc.LocalAddr() }
func (c *tcpConn) RemoteAddr() net.Addr          { return c.tc.RemoteAddr() }

// tcpStream is a yamux stream of a tcpConn.
type tcpStream struct {
	*yamux.Stream
	open  *atomic.Int64
	slots chan struct{} // the link's, or nil
	eof   atomic.Bool   // Read returned io.EOF: the peer finished sending
}

func (s *tcpStream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	if err == io.EOF {
		s.eof.Store(true)
	}
	return n, yamuxError(err)
}

// wait is a Read of nothing: yamux's waits until the stream has bytes
// (returning none of them), EOF, a reset or the read deadline.
func (s *tcpStream) wait() error {
	_, err := s.Read(nil)
	return err
}

func (s *tcpStream) Write(p []byte) (int, error) {
	n, err := s.Stream.Write(p)
	return n, yamuxError(err)
}

func (s *tcpStream) closeWrite() error { return yamuxError(s.Stream.CloseWrite()) }
func (s *tcpStream) closeRead()        { _ = s.Stream.CloseRead() }
func (s *tcpStream) abort(code uint64) { _ = s.ResetWithError(uint32(code)) }

// release ends the send direction after what was written if the peer has
// finished sending; otherwise it resets the stream, as closing a TCP
// socket with unread data does. (yamux cannot tell the peer to stop
// sending, as QUIC's STOP_SENDING does, so a reset is the faithful
// mapping.)
func (s *tcpStream) release() {
	if s.eof.Load() {
		_ = s.Stream.CloseWrite()
	} else {
		_ = s.ResetWithError(codeCanceled)
	}
	s.open.Add(-1)
	if s.slots != nil {
		// The FIN or reset just queued ends the stream on the peer's
		// side before any later stream's SYN reaches it.
		<-s.slots
	}
}

// yamuxError maps yamux errors: resets wrap ErrReset; io.EOF and timeouts
// pass through unchanged.
func yamuxError(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	if se, ok := errors.AsType[*yamux.StreamError](err); ok {
		return resetError(se.Remote, uint64(se.ErrorCode), err)
	}
	if errors.Is(err, yamux.ErrStreamReset) {
		return resetError(false, codeCanceled, err)
	}
	if errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, yamux.ErrRemoteGoAway) {
		return fmt.Errorf("tunnel: link closed: %w: %w", net.ErrClosed, err)
	}
	return err
}
