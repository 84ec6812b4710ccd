package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The link setup exchange, the same on both transports once TLS is up. In
// TLS 1.3 the client finishes its handshake before the server has checked
// the client's certificate, so a finished handshake does not mean the
// peer accepted us; the verdict does.
//
//	dialer:   hello   = helloVersion, len(name), name (its gossip member)
//	acceptor: ready   = statusReady, max streams (uint32, big endian)
//	          refusal = statusRefuse, code, len(reason), reason (TCP; QUIC
//	                    closes the connection with the code and reason)
//
// On QUIC the hello and the verdict each travel alone on a unidirectional
// stream; on TCP they are the first bytes of each direction. The dialer
// sends its hello with its TLS Finished, so the exchange costs no round
// trip beyond the handshake's.

const (
	helloVersion = 1
	// maxNameLen is the longest member name a hello carries.
	maxNameLen = 255

	statusReady  = 1
	statusRefuse = 2
)

// Connection close codes sent in CONNECTION_CLOSE frames (QUIC), GO_AWAY
// frames and refusals (the TCP fallback).
const (
	// codeShutdown: the endpoint is closing, or the link is not needed.
	codeShutdown = 0
	// codeNotMember: no live member has the name the dialer gave.
	codeNotMember = 0x10
	// codeInternal: the accepting side failed to set the link up.
	codeInternal = 0x11
	// codeIDMismatch: the member the dialer named announces another ID.
	codeIDMismatch = 0x12
	// codeTooManyLinks: the peer holds MaxLinksPerPeer links already.
	codeTooManyLinks = 0x13
	// codeBadHello: the dialer's hello was malformed or late.
	codeBadHello = 0x14
	// codeWrongPeer: the dialer found the peer is not the member that
	// announces the dialed address.
	codeWrongPeer = 0x15
)

// refusalReason returns the reason both sides count for a code an
// accepting side refuses a link with, and whether code is one.
func refusalReason(code uint64) (string, bool) {
	switch code {
	case codeNotMember:
		return ReasonNotMember, true
	case codeIDMismatch:
		return ReasonIDMismatch, true
	case codeTooManyLinks:
		return ReasonTooManyLinks, true
	case codeBadHello:
		return ReasonBadHello, true
	}
	return "", false
}

// refusal is the accepting side's reason to refuse a link; its message is
// sent to the dialer.
type refusal struct {
	code uint64
	msg  string
}

func (r *refusal) Error() string { return r.msg }

// rejectedError is what a dialer gets when the accepting side refused it.
type rejectedError struct {
	reason string
	msg    string
}

func (e *rejectedError) Error() string {
	return fmt.Sprintf("%v (%s): %s", ErrRejected, e.reason, e.msg)
}

func (e *rejectedError) Is(target error) bool { return target == ErrRejected }

// peerRefused explains a refusal code and message from the accepting
// side, or returns nil if code is not a refusal.
func peerRefused(code uint64, msg string) error {
	reason, ok := refusalReason(code)
	if !ok {
		return nil
	}
	return &rejectedError{reason: reason, msg: msg}
}

// writeHello sends the dialer's hello.
func writeHello(w io.Writer, name string) error {
	b := make([]byte, 0, 2+len(name))
	b = append(b, helloVersion, byte(len(name)))
	b = append(b, name...)
	_, err := w.Write(b)
	return err
}

// readHello reads a dialer's hello and returns the member name it gives.
func readHello(r io.Reader) (string, error) {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", fmt.Errorf("reading hello: %w", err)
	}
	if b[0] != helloVersion {
		return "", fmt.Errorf("hello version %d, want %d", b[0], helloVersion)
	}
	name := make([]byte, b[1])
	if _, err := io.ReadFull(r, name); err != nil {
		return "", fmt.Errorf("reading hello: %w", err)
	}
	return string(name), nil
}

// writeReady tells the dialer it may use the link, with at most streams
// concurrent streams.
func writeReady(w io.Writer, streams int64) error {
	var b [5]byte
	b[0] = statusReady
	binary.BigEndian.PutUint32(b[1:], uint32(min(streams, 1<<32-1)))
	_, err := w.Write(b[:])
	return err
}

// writeRefusal tells a dialer over TCP why it was refused.
func writeRefusal(w io.Writer, r *refusal) error {
	why := r.msg[:min(len(r.msg), 255)]
	_, err := w.Write(append([]byte{statusRefuse, byte(r.code), byte(len(why))}, why...))
	return err
}

// errBadVerdict is wrapped when the accepting side's verdict does not
// parse.
var errBadVerdict = errors.New("tunnel: malformed link setup verdict")

// readVerdict reads the accepting side's verdict: the number of streams
// it allows, or its refusal.
func readVerdict(r io.Reader) (streams int64, err error) {
	var b [5]byte
	if _, err := io.ReadFull(r, b[:1]); err != nil {
		return 0, err
	}
	switch b[0] {
	case statusReady:
		if _, err := io.ReadFull(r, b[1:]); err != nil {
			return 0, fmt.Errorf("%w: %w", errBadVerdict, err)
		}
		return int64(binary.BigEndian.Uint32(b[1:])), nil
	case statusRefuse:
		if _, err := io.ReadFull(r, b[1:3]); err != nil {
			return 0, fmt.Errorf("%w: %w", errBadVerdict, err)
		}
		why := make([]byte, b[2])
		n, _ := io.ReadFull(r, why)
		if err := peerRefused(uint64(b[1]), string(why[:n])); err != nil {
			return 0, err
		}
		return 0, &rejectedError{reason: ReasonOther, msg: string(why[:n])}
	default:
		return 0, fmt.Errorf("%w: status byte %#x", errBadVerdict, b[0])
	}
}
