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

// Status bytes the accepting side writes after the TLS handshake.
const (
	statusReady  = readyByte
	statusRefuse = 2 // followed by a one-byte length and the reason
)

// yamuxConfig returns the yamux settings for one side of a TCP link.
func (c Config) yamuxConfig(log *slog.Logger) *yamux.Config {
	yc := yamux.DefaultConfig()
	yc.EnableKeepAlive = true
	yc.KeepAliveInterval = c.KeepAlivePeriod
	// yamux pings after KeepAliveInterval without receiving and gives up
	// on a ping or a frame write after ConnectionWriteTimeout: together
	// they make MaxIdleTimeout, as for QUIC.
	yc.ConnectionWriteTimeout = c.MaxIdleTimeout - c.KeepAlivePeriod
	yc.MaxIncomingStreams = uint32(min(c.MaxIncomingStreams, 1<<31))
	yc.AcceptBacklog = int(min(c.MaxIncomingStreams, 1<<16))
	yc.MaxStreamWindowSize = uint32(max(min(c.MaxStreamReceiveWindow, 1<<31), 256<<10))
	yc.LogOutput = slog.NewLogLogger(log.Handler(), slog.LevelWarn).Writer()
	return yc
}

// dialTCP sets up a link over TCP + TLS 1.3 and waits for the accepting
// side's status.
func (e *Endpoint) dialTCP(ctx context.Context, addr string) (conn, error) {
	d := net.Dialer{}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	counted := &countingConn{Conn: raw}
	tc := tls.Client(counted, e.clientTLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, tlsError(err)
	}
	// The status read also carries the peer's verdict on our certificate:
	// a TLS 1.3 client learns of a refusal only when it reads.
	stop := context.AfterFunc(ctx, func() { _ = raw.SetReadDeadline(time.Now()) })
	err = readStatus(tc)
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		_ = tc.Close()
		return nil, err
	}
	_ = raw.SetReadDeadline(time.Time{})
	sess, err := yamux.Client(tc, e.cfg.yamuxConfig(e.log), nil)
	if err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("starting yamux: %w", err)
	}
	return newTCPConn(sess, tc, counted), nil
}

// readStatus reads the accepting side's verdict.
func readStatus(r io.Reader) error {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:1]); err != nil {
		return tlsError(err)
	}
	switch b[0] {
	case statusReady:
		return nil
	case statusRefuse:
		if _, err := io.ReadFull(r, b[1:]); err != nil {
			return fmt.Errorf("%w: %w", ErrRejected, errNotMember)
		}
		why := make([]byte, b[1])
		n, _ := io.ReadFull(r, why)
		return fmt.Errorf("%w: %w: %s", ErrRejected, errNotMember, why[:n])
	default:
		return fmt.Errorf("tunnel: unexpected status byte %#x", b[0])
	}
}

// writeRefusal tells a dialer why it was refused.
func writeRefusal(w io.Writer, why string) error {
	why = why[:min(len(why), 255)]
	_, err := w.Write(append([]byte{statusRefuse, byte(len(why))}, why...))
	return err
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

// acceptTCP accepts TCP links until the listener closes.
func (e *Endpoint) acceptTCP() {
	defer e.wg.Done()
	for {
		c, err := e.tcpLn.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				e.log.Error("tunnel: TCP accept failed; no more TCP links", "err", err)
			}
			return
		}
		e.wg.Add(1)
		go e.serveTCP(c)
	}
}

// serveTCP runs the TLS handshake of an inbound TCP link, authorizes the
// peer, answers with its status and serves the link's streams.
func (e *Endpoint) serveTCP(raw net.Conn) {
	defer e.wg.Done()
	log := e.log.With("peer", raw.RemoteAddr().String(), "transport", TransportTCP)
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.HandshakeTimeout)
	defer cancel()
	counted := &countingConn{Conn: raw}
	tc := tls.Server(counted, e.serverTLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		// Certificate refusals were counted by VerifyConnection.
		log.Warn("inbound tunnel handshake failed", "err", err)
		_ = raw.Close()
		return
	}
	peerID, err := e.admit(tc.ConnectionState(), log)
	if err != nil {
		_ = raw.SetWriteDeadline(time.Now().Add(time.Second))
		_ = writeRefusal(tc, err.Error())
		_ = tc.Close()
		return
	}
	if _, err := tc.Write([]byte{statusReady}); err != nil {
		log.Warn("inbound link failed", "err", err)
		_ = raw.Close()
		return
	}
	sess, err := yamux.Server(tc, e.cfg.yamuxConfig(e.log), nil)
	if err != nil {
		log.Error("inbound link failed", "err", err)
		_ = raw.Close()
		return
	}
	e.serveConn(newTCPConn(sess, tc, counted), peerID, log.With("peer_id", peerID))
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
}

func newTCPConn(sess *yamux.Session, tc *tls.Conn, raw *countingConn) *tcpConn {
	return &tcpConn{sess: sess, tc: tc, raw: raw}
}

func (c *tcpConn) openStream(ctx context.Context) (rawStream, error) {
	ys, err := c.sess.OpenStream(ctx)
	if err != nil {
		return nil, yamuxError(err)
	}
	c.open.Add(1)
	return &tcpStream{Stream: ys, open: &c.open}, nil
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
	open *atomic.Int64
	eof  atomic.Bool // Read returned io.EOF: the peer finished sending
}

func (s *tcpStream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	if err == io.EOF {
		s.eof.Store(true)
	}
	return n, yamuxError(err)
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
}

// yamuxError maps yamux errors: resets wrap ErrReset; io.EOF and timeouts
// pass through unchanged.
func yamuxError(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	var se *yamux.StreamError
	if errors.As(err, &se) {
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
