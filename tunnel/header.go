package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/ewgate/ewgate/sni"
)

// HeaderVersion is the version of the stream header this package writes
// and the only one it reads.
const HeaderVersion = 1

// Header size limits. Encoding refuses, and decoding rejects, longer fields.
const (
	// MaxHostLen bounds Header.Key.Host (the longest DNS name).
	MaxHostLen = 253
	// MaxSubsetLen bounds Header.Key.Subset.
	MaxSubsetLen = 63
	// MaxClientAddrLen bounds Header.ClientAddr.
	MaxClientAddrLen = 64
)

// headerFixedLen is the length of the fixed part of an encoded header:
// version, hops, port (2), host length, subset length, client address length.
const headerFixedLen = 7

// MaxHeaderLen is the longest encoded header.
const MaxHeaderLen = headerFixedLen + MaxHostLen + MaxSubsetLen + MaxClientAddrLen

// ErrBadHeader is wrapped by every error that reports a malformed, oversized
// or unsupported stream header.
var ErrBadHeader = errors.New("tunnel: bad stream header")

// Header opens every tunnel stream. It tells the accepting gateway where to
// route the stream's bytes.
//
// Encoding (all integers big endian):
//
//	version u8 | hops u8 | port u16 | len(host) u8 | len(subset) u8 |
//	len(client) u8 | host | subset | client
type Header struct {
	// Key is the Istio routing key the client asked for.
	Key sni.Key
	// Hops counts the tunnels the connection has crossed before this one;
	// the dialing gateway sets 0 on the first hop.
	Hops uint8
	// ClientAddr is the original client's address, for logs only; it is
	// not authenticated.
	ClientAddr string
}

// AppendBinary appends h's encoding to b. It fails, wrapping ErrBadHeader,
// if a field exceeds its limit or the host is empty.
func (h Header) AppendBinary(b []byte) ([]byte, error) {
	switch {
	case h.Key.Host == "":
		return b, fmt.Errorf("%w: empty host", ErrBadHeader)
	case len(h.Key.Host) > MaxHostLen:
		return b, fmt.Errorf("%w: host is %d bytes, limit %d", ErrBadHeader, len(h.Key.Host), MaxHostLen)
	case len(h.Key.Subset) > MaxSubsetLen:
		return b, fmt.Errorf("%w: subset is %d bytes, limit %d", ErrBadHeader, len(h.Key.Subset), MaxSubsetLen)
	case len(h.ClientAddr) > MaxClientAddrLen:
		return b, fmt.Errorf("%w: client address is %d bytes, limit %d", ErrBadHeader, len(h.ClientAddr), MaxClientAddrLen)
	}
	b = append(b, HeaderVersion, h.Hops)
	b = binary.BigEndian.AppendUint16(b, h.Key.Port)
	b = append(b, byte(len(h.Key.Host)), byte(len(h.Key.Subset)), byte(len(h.ClientAddr)))
	b = append(b, h.Key.Host...)
	b = append(b, h.Key.Subset...)
	b = append(b, h.ClientAddr...)
	return b, nil
}

// MarshalBinary returns h's encoding; see [Header.AppendBinary].
func (h Header) MarshalBinary() ([]byte, error) {
	return h.AppendBinary(make([]byte, 0, headerFixedLen+len(h.Key.Host)+len(h.Key.Subset)+len(h.ClientAddr)))
}

// UnmarshalBinary decodes exactly one header from data. Errors wrap
// ErrBadHeader; it never panics.
func (h *Header) UnmarshalBinary(data []byte) error {
	if len(data) < headerFixedLen {
		return fmt.Errorf("%w: %d bytes, need at least %d", ErrBadHeader, len(data), headerFixedLen)
	}
	n, err := parseFixed(data[:headerFixedLen])
	if err != nil {
		return err
	}
	if len(data) != headerFixedLen+n {
		return fmt.Errorf("%w: %d bytes, header says %d", ErrBadHeader, len(data), headerFixedLen+n)
	}
	*h = decode(data)
	return nil
}

// ReadHeader reads one header from r, consuming exactly its bytes and no
// more. Malformed input gives an error wrapping ErrBadHeader; a stream that
// ends early gives one wrapping io.ErrUnexpectedEOF (or io.EOF if it ended
// before the first byte); other read errors are wrapped as they are.
func ReadHeader(r io.Reader) (Header, error) {
	var buf [MaxHeaderLen]byte
	if _, err := io.ReadFull(r, buf[:headerFixedLen]); err != nil {
		return Header{}, fmt.Errorf("tunnel: reading stream header: %w", err)
	}
	n, err := parseFixed(buf[:headerFixedLen])
	if err != nil {
		return Header{}, err
	}
	if _, err := io.ReadFull(r, buf[headerFixedLen:headerFixedLen+n]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Header{}, fmt.Errorf("tunnel: reading stream header: %w", err)
	}
	return decode(buf[:headerFixedLen+n]), nil
}

// parseFixed validates the fixed part and returns the length of the
// variable part.
func parseFixed(b []byte) (int, error) {
	if b[0] != HeaderVersion {
		return 0, fmt.Errorf("%w: unsupported version %d (want %d)", ErrBadHeader, b[0], HeaderVersion)
	}
	host, subset, client := int(b[4]), int(b[5]), int(b[6])
	switch {
	case host == 0:
		return 0, fmt.Errorf("%w: empty host", ErrBadHeader)
	case host > MaxHostLen:
		return 0, fmt.Errorf("%w: host length %d, limit %d", ErrBadHeader, host, MaxHostLen)
	case subset > MaxSubsetLen:
		return 0, fmt.Errorf("%w: subset length %d, limit %d", ErrBadHeader, subset, MaxSubsetLen)
	case client > MaxClientAddrLen:
		return 0, fmt.Errorf("%w: client address length %d, limit %d", ErrBadHeader, client, MaxClientAddrLen)
	}
	return host + subset + client, nil
}

// decode decodes a header whose fixed part parseFixed accepted and whose
// length matches it.
func decode(b []byte) Header {
	host, subset := int(b[4]), int(b[5])
	rest := b[headerFixedLen:]
	return Header{
		Key: sni.Key{
			Host:   string(rest[:host]),
			Port:   binary.BigEndian.Uint16(b[2:4]),
			Subset: string(rest[host : host+subset]),
		},
		Hops:       b[1],
		ClientAddr: string(rest[host+subset:]),
	}
}
