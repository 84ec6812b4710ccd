package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
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
