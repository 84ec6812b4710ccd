package tunnel

import (
	"errors"
	"net"
	"sync"
	"time"
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
	rs     rawStream
	conn   conn
	peer   *peerStats
	member Member // the peer gateway
	once   sync.Once
}

func newStream(rs rawStream, c conn, peer *peerStats, m Member) *Stream {
	peer.streamsOpen.Add(1)
	peer.streamsTotal.Add(1)
	return &Stream{rs: rs, conn: c, peer: peer, member: m}
}

// PeerID returns the verified SPIFFE ID of the gateway at the other end.
func (s *Stream) PeerID() string { return s.member.ID }

// Peer returns the gateway at the other end: its verified SPIFFE ID and,
// with Config.Members, the gossip member the link is bound to and that
// member's network, the network an accepted stream comes from.
func (s *Stream) Peer() Member { return s.member }

// Transport returns the transport of the stream's link.
func (s *Stream) Transport() Transport { return s.conn.transport() }

// Read reads from the stream. It returns io.EOF after the peer's
// CloseWrite, and an error wrapping ErrReset after a reset.
func (s *Stream) Read(p []byte) (int, error) {
	n, err := s.rs.Read(p)
	s.peer.bytesReceived.Add(uint64(n))
	return n, err
}

// Wait waits until a Read would not block: the stream has bytes to read,
// or Read would return io.EOF, a reset or a deadline's error, which Wait
// then returns (nil when there are bytes). It takes no bytes and needs no
// buffer, so that a relay waiting on an idle stream holds none, as one
// waiting on a socket's readiness does. It must not be called while a
// Read runs. After it returned io.EOF or a reset, Read returns the same.
func (s *Stream) Wait() error { return s.rs.wait() }

// Write writes to the stream. It fails with an error wrapping ErrReset if
// the peer stopped reading or either side reset the stream.
func (s *Stream) Write(p []byte) (int, error) {
	n, err := s.rs.Write(p)
	s.peer.bytesSent.Add(uint64(n))
	return n, err
}

// CloseWrite closes the send direction after the bytes written so far
// (a QUIC or yamux FIN, the equivalent of TCP shutdown(SHUT_WR)). Reading
// goes on.
func (s *Stream) CloseWrite() error { return s.rs.closeWrite() }

// CloseRead stops reading. Over QUIC the peer's further writes fail with
// ErrReset; over the TCP fallback they are discarded.
func (s *Stream) CloseRead() error {
	s.rs.closeRead()
	return nil
}

// Close closes both directions and releases the stream. If the peer has
// finished sending, it ends the send direction gracefully (as CloseWrite
// does, unless it was reset). Otherwise, over QUIC, it ends the send
// direction gracefully and tells the peer to stop sending, and over the
// TCP fallback it resets the stream, as closing a TCP socket with unread
// data does. It is idempotent and always returns nil.
func (s *Stream) Close() error {
	s.once.Do(func() {
		s.rs.release()
		s.peer.streamsOpen.Add(-1)
	})
	return nil
}

// Abort resets both directions: bytes not yet delivered are discarded and
// the peer's reads and writes fail with an error wrapping ErrReset. Use it
// to forward a TCP RST. Close must still be called (it is then a no-op on
// the wire).
func (s *Stream) Abort() { s.rs.abort(codeCanceled) }

// LocalAddr returns the local address of the tunnel link.
func (s *Stream) LocalAddr() net.Addr { return s.conn.LocalAddr() }

// RemoteAddr returns the peer gateway's address on the tunnel link.
func (s *Stream) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// SetDeadline sets the read and write deadlines, as net.Conn does.
func (s *Stream) SetDeadline(t time.Time) error { return s.rs.SetDeadline(t) }

// SetReadDeadline sets the read deadline, as net.Conn does.
func (s *Stream) SetReadDeadline(t time.Time) error { return s.rs.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline, as net.Conn does.
func (s *Stream) SetWriteDeadline(t time.Time) error { return s.rs.SetWriteDeadline(t) }

var _ net.Conn = (*Stream)(nil)
