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
	peek [1]byte // wait's
}

func (s *quicStream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	return n, quicStreamError(err)
}

// wait peeks one byte: quic-go's Peek blocks until the stream has that
// many, without taking them (its Read returns at once for an empty
// buffer). When Peek sees the end instead, a Read of nothing, which then
// returns at once, consumes it as a Read would: quic-go completes a
// stream whose end was read, and Close would otherwise send STOP_SENDING
// for a stream that finished.
func (s *quicStream) wait() error {
	_, err := s.Stream.Peek(s.peek[:])
	if err == nil {
		return nil
	}
	if _, rerr := s.Stream.Read(nil); rerr != nil {
		err = rerr
	}
	return quicStreamError(err)
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
	if err == nil || err == io.EOF {
		return err
	}
	// errors.AsType, unlike errors.As with a pointer, does not allocate:
	// every stream ends through here.
	if se, ok := errors.AsType[*quic.StreamError](err); ok {
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
	if te, ok := errors.AsType[*quic.TransportError](err); ok && te.Remote && te.ErrorCode.IsCryptoError() {
		return fmt.Errorf("%w: it refused our certificate (TLS alert %d): %w",
			ErrRejected, uint8(te.ErrorCode-0x100), err)
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok && ae.Remote {
		if rerr := peerRefused(uint64(ae.ErrorCode), ae.ErrorMessage); rerr != nil {
			return rerr
		}
	}
	return err
}

// quicConfig returns the QUIC configuration; streams and uniStreams are
// the numbers of bidirectional and unidirectional streams the peer may open
// (-1 for none). Only the dialing side opens bidirectional streams; each
// side opens one unidirectional stream: the dialer its hello, the
// accepting side its verdict.
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

// dialQUIC sets up a QUIC link: QUIC and TLS handshakes, the check that
// the peer is the member it should be, our hello, then the accepting
// side's verdict, which it sends only after authorizing us.
func (e *Endpoint) dialQUIC(ctx context.Context, addr string) (conn, Member, error) {
	udpAddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, Member{}, fmt.Errorf("resolving: %w", err)
	}
	qc, err := e.tr.Dial(ctx, udpAddr, e.clientTLS, e.cfg.quicConfig(-1, 1))
	if err != nil {
		return nil, Member{}, quicError(err)
	}
	peer, err := e.expectPeer(addr, qc.ConnectionState().TLS)
	if err != nil {
		_ = qc.CloseWithError(codeWrongPeer, "not the member announcing this address")
		return nil, Member{}, err
	}
	if err := e.quicSetup(ctx, qc); err != nil {
		_ = qc.CloseWithError(codeInternal, "link setup failed")
		return nil, Member{}, err
	}
	return &quicConn{Conn: qc}, peer, nil
}

// quicSetup sends the hello and waits for the verdict.
func (e *Endpoint) quicSetup(ctx context.Context, qc *quic.Conn) error {
	hs, err := qc.OpenUniStream()
	if err != nil {
		return quicError(err)
	}
	if err := writeHello(hs, e.cfg.Name); err != nil {
		return quicError(err)
	}
	_ = hs.Close()
	rs, err := qc.AcceptUniStream(ctx)
	if err != nil {
		return quicError(err)
	}
	// QUIC limits streams itself: the count in the verdict is for TCP.
	if _, err := readVerdict(rs); err != nil {
		return quicError(err)
	}
	return nil
}

// acceptQUIC accepts inbound QUIC links until the Endpoint closes. The
// handshake slot of each was taken by connContext.
func (e *Endpoint) acceptQUIC() {
	defer e.wg.Done()
	var backoff time.Duration
	for {
		qc, err := e.ln.Accept(e.ctx)
		if err != nil {
			if e.ctx.Err() != nil || errors.Is(err, quic.ErrServerClosed) {
				return
			}
			if backoff = e.acceptFailed(TransportQUIC, err, backoff); backoff == 0 {
				return
			}
			continue
		}
		backoff = 0
		e.wg.Add(1)
		go e.serveQUIC(qc)
	}
}

// errDialerLeft is quicAdmit's error when the dialer closed the link
// before its hello; it was logged.
var errDialerLeft = errors.New("tunnel: the dialer closed the link")

// handshakeSlotKey is the context key of a QUIC connection's
// handshakeSlot.
type handshakeSlotKey struct{}

// handshakeSlot is an inbound QUIC connection's share of MaxHandshakes.
type handshakeSlot struct {
	done  func() // gives the slot back
	start time.Time
}

// connContext takes a handshake slot for each new inbound QUIC
// connection, before its handshake, or refuses it. The slot is given back
// when the link is admitted or refused, or when the handshake fails.
func (e *Endpoint) connContext(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	done, ok := e.startHandshake(info.RemoteAddr, TransportQUIC)
	if !ok {
		return nil, errTooManyHandshakes
	}
	context.AfterFunc(ctx, done)
	return context.WithValue(ctx, handshakeSlotKey{}, handshakeSlot{done: done, start: time.Now()}), nil
}

// serveQUIC reads the dialer's hello, admits the link, sends the ready
// signal and serves the link's streams.
func (e *Endpoint) serveQUIC(qc *quic.Conn) {
	defer e.wg.Done()
	log := e.log.With("peer", qc.RemoteAddr().String(), "transport", TransportQUIC)
	// The QUIC handshake and the hello share one HandshakeTimeout.
	slot, _ := qc.Context().Value(handshakeSlotKey{}).(handshakeSlot)
	ctx, cancel := context.WithDeadline(e.ctx, slot.start.Add(e.cfg.HandshakeTimeout))
	peer, err := e.quicAdmit(ctx, qc, log)
	cancel()
	slot.done()
	if err != nil {
		var r *refusal
		if errors.As(err, &r) {
			_ = qc.CloseWithError(quic.ApplicationErrorCode(r.code), r.msg)
		} else if !errors.Is(err, errDialerLeft) {
			log.Warn("inbound link failed", "err", err)
			_ = qc.CloseWithError(codeInternal, "link setup failed")
		}
		return
	}
	e.serveConn(&quicConn{Conn: qc}, peer, log.With("peer_id", peer.ID, "member", peer.Name))
}

// quicAdmit reads the hello, admits the peer and sends the ready signal.
// A *refusal error is to be sent to the peer; a peer admitted holds a
// link slot that serveConn gives back.
func (e *Endpoint) quicAdmit(ctx context.Context, qc *quic.Conn, log *slog.Logger) (Member, error) {
	hs, err := qc.AcceptUniStream(ctx)
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote && ae.ErrorCode == codeWrongPeer {
		log.Info("inbound link closed by its dialer: we are not the member it meant", "why", ae.ErrorMessage)
		return Member{}, errDialerLeft
	}
	if err != nil {
		return Member{}, e.badHello(log, err)
	}
	stop := context.AfterFunc(ctx, func() { hs.CancelRead(codeBadHello) })
	name, err := readHello(hs)
	stop()
	if err != nil {
		return Member{}, e.badHello(log, err)
	}
	peer, err := e.admit(qc.ConnectionState().TLS, name, log)
	if err != nil {
		return Member{}, err
	}
	if err := sendReady(qc, e.cfg.MaxIncomingStreams); err != nil {
		e.unadmit(peer)
		return Member{}, err
	}
	return peer, nil
}

func sendReady(qc *quic.Conn, streams int64) error {
	ss, err := qc.OpenUniStream()
	if err != nil {
		return fmt.Errorf("opening ready stream: %w", err)
	}
	if err := writeReady(ss, streams); err != nil {
		return fmt.Errorf("writing ready signal: %w", err)
	}
	return ss.Close()
}
