package sni

import (
	"fmt"
	"unsafe"

	"golang.org/x/crypto/cryptobyte"
)

const (
	typeClientHello = 1  // HandshakeType client_hello, RFC 8446 section 4
	extServerName   = 0  // RFC 6066 section 3
	extALPN         = 16 // RFC 7301 section 3.1
	hostNameType    = 0  // NameType host_name, RFC 6066 section 3
)

// Hello is what a ClientHello offers.
//
// ServerName and ALPN are views of the bytes parsed, not copies, so that
// reading a hello allocates nothing: after Peek, of the buffer Raw is in
// (or of the message reassembled from several records); after
// ParseClientHello, of msg. They are valid only while those bytes are
// not reused: copy what must outlive them (strings.Clone,
// Protocols.Strings).
type Hello struct {
	// ServerName is the host_name from the server_name extension, exactly as
	// sent (not validated or case-folded), or "" if the hello has none.
	ServerName string

	// ALPN holds the protocols offered in the ALPN extension, in the
	// client's order of preference; empty if the hello has no such
	// extension.
	ALPN Protocols

	// Raw holds every byte Peek read from the connection, record headers
	// included, in order: replaying Raw and then the rest of the connection
	// reproduces what the client sent. Raw may extend past the ClientHello
	// (a client may send early data at once) but never past the limit. It
	// aliases the buffer given to Peek, or one Peek allocated when that was
	// too small. ParseClientHello leaves it nil.
	Raw []byte
}

// Protocols is the protocol list of an ALPN extension as the client sent
// it (each name after its length byte), checked: no name is empty or
// overruns the list. The zero value is no extension.
type Protocols struct {
	list []byte
}

// Contains reports whether proto is one of p's protocols.
func (p Protocols) Contains(proto string) bool {
	for l := p.list; len(l) > 0; l = l[1+int(l[0]):] {
		if string(l[1:1+int(l[0])]) == proto {
			return true
		}
	}
	return false
}

// Strings returns copies of p's protocols in the client's order, or nil
// for no extension.
func (p Protocols) Strings() []string {
	var out []string
	for l := p.list; len(l) > 0; l = l[1+int(l[0]):] {
		out = append(out, string(l[1:1+int(l[0])]))
	}
	return out
}

// String returns p's protocols as a list, for logs.
func (p Protocols) String() string { return fmt.Sprintf("%q", p.Strings()) }

// ParseClientHello parses msg, one complete handshake message as carried in
// TLS handshake records (the 4-byte type and length header included), and
// returns the server name and ALPN protocols it offers, as views of msg
// (see Hello); Raw is left nil.
//
// It checks the structure it must walk to reach the extensions and the two
// extensions it decodes, and ignores the contents of all other extensions:
// every message that crypto/tls accepts as a ClientHello is accepted, with the
// same server name and protocols. It returns an error wrapping
// [ErrNotClientHello] if msg is another handshake message and [ErrMalformed]
// if it is not well formed, for example if its length field disagrees with
// len(msg) or an extension appears twice. It never panics.
func ParseClientHello(msg []byte) (Hello, error) {
	s := cryptobyte.String(msg)
	var typ uint8
	if !s.ReadUint8(&typ) {
		return Hello{}, fmt.Errorf("%w: empty handshake message", ErrMalformed)
	}
	if typ != typeClientHello {
		return Hello{}, fmt.Errorf("%w: handshake type %d", ErrNotClientHello, typ)
	}
	var body cryptobyte.String
	if !s.ReadUint24LengthPrefixed(&body) || !s.Empty() {
		return Hello{}, fmt.Errorf("%w: handshake length disagrees with the %d-byte message", ErrMalformed, len(msg))
	}

	// Like crypto/tls, accept any session ID, cipher suite and compression
	// method lists that are well formed: judging them is the upstream's job.
	var sessionID, suites, compression cryptobyte.String
	if !body.Skip(2+32) || // legacy_version, random
		!body.ReadUint8LengthPrefixed(&sessionID) ||
		!body.ReadUint16LengthPrefixed(&suites) || len(suites)%2 != 0 ||
		!body.ReadUint8LengthPrefixed(&compression) {
		return Hello{}, fmt.Errorf("%w: bad fixed fields", ErrMalformed)
	}
	if body.Empty() {
		return Hello{}, nil // a hello may end before the extensions
	}
	var exts cryptobyte.String
	if !body.ReadUint16LengthPrefixed(&exts) || !body.Empty() {
		return Hello{}, fmt.Errorf("%w: extensions length disagrees with the message", ErrMalformed)
	}

	var (
		seen       extSet
		serverName []byte
		alpn       cryptobyte.String
	)
	for !exts.Empty() {
		var typ uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
			return Hello{}, fmt.Errorf("%w: extension overruns the extensions block", ErrMalformed)
		}
		if !seen.add(typ) {
			return Hello{}, fmt.Errorf("%w: duplicate extension %d", ErrMalformed, typ)
		}
		var err error
		switch typ {
		case extServerName:
			serverName, err = parseServerName(data)
		case extALPN:
			alpn, err = parseALPN(data)
		}
		if err != nil {
			return Hello{}, err
		}
	}
	return Hello{ServerName: unsafe.String(unsafe.SliceData(serverName), len(serverName)), ALPN: Protocols{alpn}}, nil
}

// parseServerName returns the host_name in a server_name extension's data,
// or nil if it holds names of other types only.
func parseServerName(data cryptobyte.String) ([]byte, error) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || list.Empty() || !data.Empty() {
		return nil, fmt.Errorf("%w: bad server_name extension", ErrMalformed)
	}
	var name []byte
	for !list.Empty() {
		var typ uint8
		var n cryptobyte.String
		if !list.ReadUint8(&typ) || !list.ReadUint16LengthPrefixed(&n) || n.Empty() {
			return nil, fmt.Errorf("%w: bad server_name entry", ErrMalformed)
		}
		if typ != hostNameType {
			continue // RFC 6066 defines no other type; crypto/tls skips them too
		}
		if name != nil {
			return nil, fmt.Errorf("%w: more than one host_name", ErrMalformed)
		}
		if n[len(n)-1] == '.' {
			return nil, fmt.Errorf("%w: host_name ends in a dot", ErrMalformed)
		}
		name = n
	}
	return name, nil
}

// parseALPN checks an ALPN extension's data and returns its protocol
// list.
func parseALPN(data cryptobyte.String) (cryptobyte.String, error) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || list.Empty() || !data.Empty() {
		return nil, fmt.Errorf("%w: bad ALPN extension", ErrMalformed)
	}
	for l := list; !l.Empty(); {
		var proto cryptobyte.String
		if !l.ReadUint8LengthPrefixed(&proto) || proto.Empty() {
			return nil, fmt.Errorf("%w: bad ALPN protocol name", ErrMalformed)
		}
	}
	return list, nil
}

// extSet records the extension types seen in one ClientHello. Real hellos
// carry 10 to 20 extensions, so a linear scan of a small array is fastest;
// past that a bitmap of all 2^16 types takes over, so that a hostile hello
// with thousands of extensions costs linear time, not quadratic.
type extSet struct {
	n     int
	small [32]uint16
	big   *[1 << 16 / 64]uint64
}

// add records typ and reports whether it was new.
func (s *extSet) add(typ uint16) bool {
	if s.big == nil {
		for _, t := range s.small[:s.n] {
			if t == typ {
				return false
			}
		}
		if s.n < len(s.small) {
			s.small[s.n] = typ
			s.n++
			return true
		}
		s.big = new([1 << 16 / 64]uint64)
		for _, t := range s.small {
			s.big[t/64] |= 1 << (t % 64)
		}
	}
	word, bit := typ/64, uint64(1)<<(typ%64)
	if s.big[word]&bit != 0 {
		return false
	}
	s.big[word] |= bit
	return true
}
