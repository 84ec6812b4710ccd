package tunnel

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Stream error codes sent in RESET_STREAM and STOP_SENDING frames.
const (
	// codeCanceled: the stream was aborted or closed before the peer
	// finished sending.
	codeCanceled quic.StreamErrorCode = 1
	// codeBadHeader: the accepting side could not read a valid header.
	codeBadHeader quic.StreamErrorCode = 2
)

// ErrReset is wrapped by the error a [Stream] read or write returns when
// either side reset the stream (the tunnel equivalent of a TCP RST).
var ErrReset = errors.New("tunnel: stream reset")

// Stream is one forwarded connection over a tunnel. It implements net.Conn
// with TCP-like half-close: CloseWrite ends the send direction and the peer
// reads io.EOF after the bytes sent before it; reads return io.EOF once the
// peer has called CloseWrite or Close. A reset by either side (Abort, or
// Close before the peer finished sending) makes reads and writes fail with
// an error wrapping ErrReset. Read and Write may be called concurrently;
// Stream is safe for concurrent use like a net.Conn.
type Stream struct {
	qs     *quic.Stream
	conn   *quic.Conn
	peer   *peerStats
	peerID string
	once   sync.Once
}

func newStream(qs *quic.Stream, conn *quic.Conn, peer *peerStats, peerID string) *Stream {
	peer.streamsOpen.Add(1)
	peer.streamsTotal.Add(1)
	return &Stream{qs: qs, conn: conn, peer: peer, peerID: peerID}
}

// PeerID returns the verified SPIFFE ID of the gateway at the other end.
func (s *Stream) PeerID() string { return s.peerID }

// Read reads from the stream. It returns io.EOF after the peer's
// CloseWrite, and an error wrapping ErrReset after a reset.
func (s *Stream) Read(p []byte) (int, error) {
	n, err := s.qs.Read(p)
	s.peer.bytesReceived.Add(uint64(n))
	return n, streamError(err)
}

// Write writes to the stream. It fails with an error wrapping ErrReset if
// the peer stopped reading or either side reset the stream.
func (s *Stream) Write(p []byte) (int, error) {
	n, err := s.qs.Write(p)
	s.peer.bytesSent.Add(uint64(n))
	return n, streamError(err)
}

// CloseWrite closes the send direction after the bytes written so far
// (a QUIC FIN, the equivalent of TCP shutdown(SHUT_WR)). Reading goes on.
func (s *Stream) CloseWrite() error {
	return streamError(s.qs.Close())
}

// CloseRead stops reading: the peer's further writes fail with ErrReset.
func (s *Stream) CloseRead() error {
	s.qs.CancelRead(codeCanceled)
	return nil
}

// Close closes both directions and releases the stream: it ends the send
// direction gracefully (as CloseWrite does, unless it was reset) and stops
// reading. It is idempotent and always returns nil.
func (s *Stream) Close() error {
	s.once.Do(func() {
		s.qs.CancelRead(codeCanceled)
		_ = s.qs.Close() // fails only if the send side was reset: nothing to do
		s.peer.streamsOpen.Add(-1)
	})
	return nil
}

// Abort resets both directions: bytes not yet delivered are discarded and
// the peer's reads and writes fail with an error wrapping ErrReset. Use it
// to forward a TCP RST. Close must still be called (it is then a no-op on
// the wire).
func (s *Stream) Abort() {
	s.qs.CancelWrite(codeCanceled)
	s.qs.CancelRead(codeCanceled)
}

// LocalAddr returns the local UDP address of the tunnel.
func (s *Stream) LocalAddr() net.Addr { return s.conn.LocalAddr() }

// RemoteAddr returns the peer gateway's UDP address.
func (s *Stream) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// SetDeadline sets the read and write deadlines, as net.Conn does.
func (s *Stream) SetDeadline(t time.Time) error { return s.qs.SetDeadline(t) }

// SetReadDeadline sets the read deadline, as net.Conn does.
func (s *Stream) SetReadDeadline(t time.Time) error { return s.qs.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline, as net.Conn does.
func (s *Stream) SetWriteDeadline(t time.Time) error { return s.qs.SetWriteDeadline(t) }

var _ net.Conn = (*Stream)(nil)

// streamError maps quic-go errors to this package's: resets wrap ErrReset,
// connection closes are explained by connError; io.EOF and timeouts pass
// through unchanged.
func streamError(err error) error {
	if err == nil {
		return nil
	}
	var se *quic.StreamError
	if errors.As(err, &se) {
		who := "locally"
		if se.Remote {
			who = "by peer"
		}
		return fmt.Errorf("%w %s (code %d): %w", ErrReset, who, se.ErrorCode, err)
	}
	return connError(err)
}
