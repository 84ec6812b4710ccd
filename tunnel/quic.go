package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// Stream error codes sent in RESET_STREAM and STOP_SENDING frames (QUIC)
// and RST frames (the TCP fallback).
const (
	// codeCanceled: the stream was aborted or closed before the peer
	// finished sending.
	codeCanceled = 1
	// codeBadHeader: the accepting side could not read a valid header.
	codeBadHeader = 2
)

// quicConn is a link over QUIC.
type quicConn struct {
	*quic.Conn
	open atomic.Int64
}

func (c *quicConn) openStream(ctx context.Context) (rawStream, error) {
	qs, err := c.OpenStreamSync(ctx)
	if err != nil {
		return nil, quicError(err)
	}
	c.open.Add(1)
	return &quicStream{Stream: qs, open: &c.open}, nil
}

func (c *quicConn) acceptStream(ctx context.Context) (rawStream, error) {
	qs, err := c.AcceptStream(ctx)
	if err != nil {
		return nil, quicError(err)
	}
	c.open.Add(1)
	return &quicStream{Stream: qs, open: &c.open}, nil
}

func (c *quicConn) close(code uint64, why string) {
	_ = c.CloseWithError(quic.ApplicationErrorCode(code), why)
}

func (c *quicConn) done() <-chan struct{}         { return c.Context().Done() }
func (c *quicConn) rtt() time.Duration            { return c.ConnectionStats().SmoothedRTT }
func (c *quicConn) received() uint64              { return c.ConnectionStats().PacketsReceived }
func (c *quicConn) streams() int64                { return c.open.Load() }
func (c *quicConn) transport() Transport          { return TransportQUIC }
func (c *quicConn) tlsState() tls.ConnectionState { return c.ConnectionState().TLS }

// quicStream is a stream of a quicConn.
type quicStream struct {
	*quic.Stream
	open *atomic.Int64
}

func (s *quicStream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	return n, quicStreamError(err)
}

func (s *quicStream) Write(p []byte) (int, error) {
	n, err := s.Stream.Write(p)
	return n, quicStreamError(err)
}

func (s *quicStream) closeWrite() error { return quicStreamError(s.Stream.Close()) }
func (s *quicStream) closeRead()        { s.CancelRead(codeCanceled) }

func (s *quicStream) abort(code uint64) {
	s.CancelWrite(quic.StreamErrorCode(code))
	s.CancelRead(quic.StreamErrorCode(code))
}

// release stops reading (the peer's further writes fail with a reset) and
// ends the send direction after what was written, unless it was reset.
func (s *quicStream) release() {
	s.CancelRead(codeCanceled)
	_ = s.Stream.Close() // fails only if the send side was reset: nothing to do
	s.open.Add(-1)
}

// quicStreamError maps quic-go stream errors: resets wrap ErrReset,
// connection closes are explained by quicError; io.EOF and timeouts pass
// through unchanged.
func quicStreamError(err error) error {
	if err == nil {
		return nil
	}
	var se *quic.StreamError
	if errors.As(err, &se) {
		return resetError(se.Remote, uint64(se.ErrorCode), err)
	}
	return quicError(err)
}

// resetError is the error of a stream reset locally or by the peer.
func resetError(byPeer bool, code uint64, err error) error {
	who := "locally"
	if byPeer {
		who = "by peer"
	}
	return fmt.Errorf("%w %s (code %d): %w", ErrReset, who, code, err)
}

// quicError explains connection-level failures: a peer that refused our
// certificate or ID gives an error wrapping ErrRejected.
func quicError(err error) error {
	var te *quic.TransportError
	if errors.As(err, &te) && te.Remote && te.ErrorCode.IsCryptoError() {
		return fmt.Errorf("%w: it refused our certificate (TLS alert %d): %w",
			ErrRejected, uint8(te.ErrorCode-0x100), err)
	}
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote && ae.ErrorCode == codeNotMember {
		return fmt.Errorf("%w: %w: %s", ErrRejected, errNotMember, ae.ErrorMessage)
	}
	return err
}

// quicConfig returns the QUIC configuration; streams and uniStreams are
// the numbers of bidirectional and unidirectional streams the peer may open
// (-1 for none). Only the dialing side opens bidirectional streams; only
// the accepting side opens one unidirectional stream, the ready signal.
func (c Config) quicConfig(streams, uniStreams int64) *quic.Config {
	const initialStreamWindow = 512 << 10
	return &quic.Config{
		HandshakeIdleTimeout:           c.HandshakeTimeout,
		MaxIdleTimeout:                 c.MaxIdleTimeout,
		KeepAlivePeriod:                c.KeepAlivePeriod,
		InitialStreamReceiveWindow:     min(initialStreamWindow, c.MaxStreamReceiveWindow),
		MaxStreamReceiveWindow:         c.MaxStreamReceiveWindow,
		InitialConnectionReceiveWindow: min(initialStreamWindow*3/2, c.MaxConnectionReceiveWindow),
		MaxConnectionReceiveWindow:     c.MaxConnectionReceiveWindow,
		MaxIncomingStreams:             streams,
		MaxIncomingUniStreams:          uniStreams,
	}
}

// dialQUIC sets up a QUIC link: QUIC and TLS handshakes, then the
// accepting side's ready signal, which it sends only after authorizing us.
func (e *Endpoint) dialQUIC(ctx context.Context, addr string) (conn, error) {
	udpAddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolving: %w", err)
	}
	qc, err := e.tr.Dial(ctx, udpAddr, e.clientTLS, e.cfg.quicConfig(-1, 1))
	if err != nil {
		return nil, quicError(err)
	}
	if err := awaitReady(ctx, qc); err != nil {
		_ = qc.CloseWithError(codeInternal, "link setup failed")
		return nil, err
	}
	return &quicConn{Conn: qc}, nil
}

// readyByte is the content of the ready signal the accepting side sends
// after it has authorized the dialer: on QUIC, alone on a unidirectional
// stream; on TCP, as the status byte.
const readyByte = 1

// awaitReady waits for the ready signal. In TLS 1.3 the client finishes
// its handshake before the server has checked the client's certificate,
// so a completed Dial does not mean the peer accepted us; this does.
func awaitReady(ctx context.Context, qc *quic.Conn) error {
	rs, err := qc.AcceptUniStream(ctx)
	if err != nil {
		return quicError(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(rs, b[:]); err != nil {
		return quicError(err)
	}
	if b[0] != readyByte {
		return fmt.Errorf("tunnel: unexpected ready signal %#x", b[0])
	}
	return nil
}

// acceptQUIC accepts inbound QUIC links until the listener closes.
func (e *Endpoint) acceptQUIC() {
	defer e.wg.Done()
	for {
		qc, err := e.ln.Accept(e.ctx)
		if err != nil {
			return
		}
		e.wg.Add(1)
		go e.serveQUIC(qc)
	}
}

// serveQUIC authorizes an inbound QUIC link, sends the ready signal and
// serves the link's streams.
func (e *Endpoint) serveQUIC(qc *quic.Conn) {
	defer e.wg.Done()
	log := e.log.With("peer", qc.RemoteAddr().String(), "transport", TransportQUIC)
	peerID, err := e.admit(qc.ConnectionState().TLS, log)
	if err != nil {
		_ = qc.CloseWithError(quic.ApplicationErrorCode(refusalCode(err)), err.Error())
		return
	}
	if err := sendReady(qc); err != nil {
		log.Warn("inbound link failed", "err", err)
		_ = qc.CloseWithError(codeInternal, "link setup failed")
		return
	}
	e.serveConn(&quicConn{Conn: qc}, peerID, log.With("peer_id", peerID))
}

func sendReady(qc *quic.Conn) error {
	ss, err := qc.OpenUniStream()
	if err != nil {
		return fmt.Errorf("opening ready stream: %w", err)
	}
	if _, err := ss.Write([]byte{readyByte}); err != nil {
		return fmt.Errorf("writing ready signal: %w", err)
	}
	return ss.Close()
}
