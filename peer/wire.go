package peer

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ProtocolVersion is the version of this package's wire formats (node
// meta, messages, push/pull state). It is advertised in [Meta].Version.
// Version 2 added service definitions to summaries, version 3 signatures
// (entries carry their origin's signature and name its certificate chain;
// entry messages, deltas and push/pull states carry chains). Nodes and
// messages of any other version are refused (RejectVersion).
const ProtocolVersion uint8 = 3

// Message header: wire version, kind, flags; then the body.
const (
	kindEntry byte = 1 // one origin's entry: broadcast or reliable send
	kindBye   byte = 3 // an origin leaves

	flagDeflate byte = 1 << 0 // body is DEFLATE-compressed

	headerLen = 3
)

// Errors of the wire decoders; rejection reasons are derived from them.
var (
	errMalformed   = errors.New("malformed")
	errTooLarge    = errors.New("too large")
	errVersion     = errors.New("another wire version")
	errCount       = errors.New("healthy count over MaxHealthyCount")
	errImplausible = errors.New("implausible version")
)

// reasonFor classifies a decoding error; other is the reason of errors
// that are none of the classified ones.
func reasonFor(err error, tooLarge, other reason) reason {
	switch {
	case errors.Is(err, errTooLarge):
		return tooLarge
	case errors.Is(err, errVersion):
		return rVersion
	case errors.Is(err, errCount):
		return rCountTooLarge
	case errors.Is(err, errImplausible):
		return rVersionImplausible
	}
	return other
}

// Meta is a node's memberlist metadata: what other networks need to reach
// and authenticate its gateway. Encoded, it must fit memberlist's 512-byte
// meta limit; [Start] checks.
type Meta struct {
	Network         string
	PassthroughAddr string
	TunnelAddr      string
	SPIFFEID        string
	// Version is the sender's ProtocolVersion. Nodes with Version 0 are
	// refused; fields a later version appends are ignored.
	Version uint8
	// Started is when the node started (Unix ns; 0 from nodes that do not
	// send it): of two nodes claiming one name, the one started later
	// yields (see [Node.Conflict]).
	Started uint64
}

// encode returns m in wire form: version byte, four length-prefixed
// strings, then Started as a uvarint.
func (m Meta) encode() []byte {
	var w writer
	w.b = append(w.b, m.Version)
	w.str(m.Network)
	w.str(m.PassthroughAddr)
	w.str(m.TunnelAddr)
	w.str(m.SPIFFEID)
	w.uvarint(m.Started)
	return w.b
}

// decodeMeta parses meta received from the network.
func decodeMeta(b []byte) (Meta, error) {
	if len(b) == 0 {
		return Meta{}, fmt.Errorf("meta: empty: %w", errMalformed)
	}
	m := Meta{Version: b[0]}
	if m.Version == 0 {
		return Meta{}, fmt.Errorf("meta: version 0: %w", errMalformed)
	}
	r := reader{b: b[1:]}
	m.Network = r.str()
	m.PassthroughAddr = r.str()
	m.TunnelAddr = r.str()
	m.SPIFFEID = r.str()
	if len(r.b) > 0 { // absent from nodes that predate it
		m.Started = r.uvarint()
	}
	if r.err != nil {
		return Meta{}, fmt.Errorf("meta: %w", r.err)
	}
	if m.Network == "" {
		return Meta{}, fmt.Errorf("meta: no network: %w", errMalformed)
	}
	// Trailing bytes are fields of a later version.
	return m, nil
}

// decodeEntry parses an entry's wire form (entry.wire). It validates
// every count against the bytes left, so garbage cannot make it allocate
// more than len(b) elements, and requires the summary to be canonical.
func decodeEntry(b []byte) (*entry, error) {
	r := reader{b: b}
	e, err := decodeHead(&r)
	if err != nil {
		return nil, err
	}
	if err := e.decodeBody(r.b); err != nil {
		return nil, err
	}
	return e, nil
}

// decodeHead reads an entry's head (entry.head) from r.
func decodeHead(r *reader) (*entry, error) {
	e := &entry{origin: r.str()}
	e.version.Epoch = r.uvarint()
	e.version.Seq = r.uvarint()
	digest, sig := r.bytes(), r.bytes()
	switch {
	case r.err != nil:
		return nil, fmt.Errorf("entry head: %w", r.err)
	case e.origin == "":
		return nil, fmt.Errorf("entry: no origin: %w", errMalformed)
	case e.version.Seq >= MaxSeq:
		return nil, fmt.Errorf("entry from %q: sequence %d at or over %d: %w", e.origin, e.version.Seq, uint64(MaxSeq), errImplausible)
	case len(digest) == 0 && len(sig) == 0:
	case len(digest) != len(e.chainDigest) || len(sig) == 0 || len(sig) > maxSignatureLen:
		return nil, fmt.Errorf("entry from %q: chain digest of %d bytes, signature of %d: %w", e.origin, len(digest), len(sig), errMalformed)
	default:
		copy(e.chainDigest[:], digest)
		e.sig = sig
	}
	return e, nil
}

// decodeBody sets e's summary from its encoded body, which it keeps.
func (e *entry) decodeBody(body []byte) error {
	r := reader{b: body}
	s := decodeSummary(&r)
	switch {
	case r.err != nil:
		return fmt.Errorf("entry from %q: %w", e.origin, r.err)
	case len(r.b) != 0:
		return fmt.Errorf("entry from %q: %d trailing bytes: %w", e.origin, len(r.b), errMalformed)
	case s.Network == "":
		return fmt.Errorf("entry from %q: no network: %w", e.origin, errMalformed)
	}
	if err := checkCanonical(&s); err != nil {
		return fmt.Errorf("entry from %q: %w: %w", e.origin, err, errMalformed)
	}
	e.summary, e.body, e.hash = s, body, sha256.Sum256(body)
	return nil
}

// entryMessage is a kindEntry body: an entry and, when sent over TCP,
// the certificate chain that signed it.
type entryMessage struct {
	entry *entry
	chain []byte // concatenated DER certificates, leaf first; nil if not carried
}

func encodeEntryMessage(e *entry, chain []byte) []byte {
	var w writer
	w.bytes(e.wire())
	w.bytes(chain)
	return w.b
}

func decodeEntryMessage(b []byte) (entryMessage, error) {
	r := reader{b: b}
	eb, chain := r.bytes(), r.bytes()
	switch {
	case r.err != nil:
		return entryMessage{}, fmt.Errorf("entry message: %w", r.err)
	case len(r.b) != 0:
		return entryMessage{}, fmt.Errorf("entry message: %d trailing bytes: %w", len(r.b), errMalformed)
	}
	e, err := decodeEntry(eb)
	if err != nil {
		return entryMessage{}, err
	}
	if len(chain) == 0 {
		chain = nil
	}
	return entryMessage{entry: e, chain: chain}, nil
}

// encodeMessage frames body as a message of the given kind, compressing it
// when that makes it smaller.
func encodeMessage(kind byte, body []byte) []byte {
	hdr := []byte{ProtocolVersion, kind, 0}
	if len(body) > 256 {
		if z := deflate(body); len(z) < len(body) {
			hdr[2] = flagDeflate
			return append(hdr, z...)
		}
	}
	return append(hdr, body...)
}

// decodeMessage checks a message's header and returns its kind and
// decompressed body, which may not exceed limit bytes.
func decodeMessage(b []byte, limit int) (kind byte, body []byte, err error) {
	if len(b) < headerLen {
		return 0, nil, fmt.Errorf("message: short header: %w", errMalformed)
	}
	if b[0] != ProtocolVersion {
		return 0, nil, fmt.Errorf("message: wire version %d, this node speaks %d (upgrade every gateway of the mesh): %w", b[0], ProtocolVersion, errVersion)
	}
	kind, flags, body := b[1], b[2], b[headerLen:]
	if kind != kindEntry && kind != kindBye && kind != kindDelta && kind != kindSharedState {
		return 0, nil, fmt.Errorf("message: kind %d: %w", kind, errMalformed)
	}
	if flags&^flagDeflate != 0 {
		return 0, nil, fmt.Errorf("message: flags %#x: %w", flags, errMalformed)
	}
	if len(body) > limit {
		return 0, nil, fmt.Errorf("message: %d bytes over limit %d: %w", len(body), limit, errTooLarge)
	}
	if flags&flagDeflate != 0 {
		if body, err = inflate(body, limit); err != nil {
			return 0, nil, fmt.Errorf("message: %w", err)
		}
	}
	return kind, body, nil
}

func deflate(b []byte) []byte {
	var buf bytes.Buffer
	zw, _ := flate.NewWriter(&buf, flate.DefaultCompression) // error only for a bad level
	zw.Write(b)                                              // writes to a bytes.Buffer do not fail
	zw.Close()
	return buf.Bytes()
}

// inflate decompresses b, refusing output over limit bytes.
func inflate(b []byte, limit int) ([]byte, error) {
	zr := flate.NewReader(bytes.NewReader(b))
	defer zr.Close()
	out, err := io.ReadAll(io.LimitReader(zr, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("inflate: %v: %w", err, errMalformed)
	}
	if len(out) > limit {
		return nil, fmt.Errorf("inflated over limit %d: %w", limit, errTooLarge)
	}
	return out, nil
}

// writer appends the wire primitives: uvarints and length-prefixed bytes.
type writer struct{ b []byte }

func (w *writer) uvarint(v uint64) { w.b = binary.AppendUvarint(w.b, v) }
func (w *writer) str(s string)     { w.uvarint(uint64(len(s))); w.b = append(w.b, s...) }
func (w *writer) bytes(b []byte)   { w.uvarint(uint64(len(b))); w.b = append(w.b, b...) }

// strs writes a count, then the strings.
func (w *writer) strs(ss []string) {
	w.uvarint(uint64(len(ss)))
	for _, s := range ss {
		w.str(s)
	}
}

// reader consumes the wire primitives. After the first error every method
// returns a zero value and err keeps that error.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("bad %s: %w", what, errMalformed)
	}
	r.b = nil
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// bounded reads a uvarint that must not exceed limit.
func (r *reader) bounded(limit uint64) uint64 {
	v := r.uvarint()
	if v > limit {
		r.fail("number")
		return 0
	}
	return v
}

// count reads an element count. Every element takes at least one byte, so
// a count over the bytes left is malformed; this bounds allocations.
func (r *reader) count() int {
	v := r.uvarint()
	if v > uint64(len(r.b)) {
		r.fail("count")
		return 0
	}
	return int(v)
}

func (r *reader) bytes() []byte {
	n := r.count()
	if r.err != nil {
		return nil
	}
	b := r.b[:n:n]
	r.b = r.b[n:]
	return b
}

func (r *reader) str() string { return string(r.bytes()) }

// strs reads what writer.strs wrote; no strings is nil.
func (r *reader) strs() []string {
	var out []string
	for n := r.count(); n > 0 && r.err == nil; n-- {
		out = append(out, r.str())
	}
	return out
}

// bye is a node's goodbye, sent by Leave.
type bye struct {
	origin  string
	version Version // the leaving node's entry version
	// sig is the origin's signature of signedBye(origin, version), by the
	// chain of that entry; nil when unsigned.
	sig []byte
}

func encodeBye(b bye) []byte {
	var w writer
	w.str(b.origin)
	w.uvarint(b.version.Epoch)
	w.uvarint(b.version.Seq)
	w.bytes(b.sig)
	return w.b
}

func decodeBye(body []byte) (bye, error) {
	r := reader{b: body}
	b := bye{origin: r.str(), version: Version{Epoch: r.uvarint(), Seq: r.uvarint()}}
	if b.sig = r.bytes(); len(b.sig) == 0 {
		b.sig = nil
	}
	switch {
	case len(b.sig) > maxSignatureLen:
		return bye{}, fmt.Errorf("bye: signature of %d bytes: %w", len(b.sig), errMalformed)
	case r.err != nil:
		return bye{}, fmt.Errorf("bye: %w", r.err)
	case len(r.b) != 0:
		return bye{}, fmt.Errorf("bye: %d trailing bytes: %w", len(r.b), errMalformed)
	case b.origin == "":
		return bye{}, fmt.Errorf("bye: no origin: %w", errMalformed)
	}
	return b, nil
}
