package peer

import (
	"crypto/sha256"
	"time"
)

// entry is the latest summary known from one origin node.
type entry struct {
	origin  string
	version Version
	summary Summary
	// body is the encoded summary (the entry's wire form after its head),
	// reused for push/pull state and relaying without re-encoding.
	// Entries with equal bodies share one body and one decoded summary in
	// the store: the gateways of one network usually publish the same
	// services.
	body []byte
	hash [sha256.Size]byte // of body
	// sig is the origin's signature of signedEntry(origin, version, hash),
	// made with the key of the certificate chain whose digest is
	// chainDigest; nil, and chainDigest zero, for an unsigned entry.
	sig         []byte
	chainDigest [sha256.Size]byte
	// chain is the verified chain that signed the entry: set when the
	// entry was signed here or verified on receipt, nil otherwise.
	chain *chain
	// received is when this version arrived (or was published).
	received time.Time
}

// newEntry encodes s as origin's unsigned entry at version v.
func newEntry(origin string, v Version, s Summary, received time.Time) *entry {
	var w writer
	encodeSummary(&w, &s)
	return &entry{origin: origin, version: v, summary: s, body: w.b, hash: sha256.Sum256(w.b), received: received}
}

// signed reports whether the entry carries a signature.
func (e *entry) signed() bool { return e.sig != nil }

// signer is the SPIFFE ID of the verified chain that signed e, or "".
func (e *entry) signer() string {
	if e.chain == nil {
		return ""
	}
	return e.chain.id
}

// wire returns the entry's wire form: its head, then its body.
func (e *entry) wire() []byte {
	return append(e.head(), e.body...)
}

// head is the start of an entry's wire form: origin, version, the digest
// of the signing chain and the signature (both empty when unsigned).
func (e *entry) head() []byte {
	var w writer
	w.str(e.origin)
	w.uvarint(e.version.Epoch)
	w.uvarint(e.version.Seq)
	if e.signed() {
		w.bytes(e.chainDigest[:])
	} else {
		w.bytes(nil)
	}
	w.bytes(e.sig)
	return w.b
}

// size is the length of the entry's wire form.
func (e *entry) size() int { return len(e.head()) + len(e.body) }

// content is one distinct summary body with the entries using it.
type content struct {
	body    []byte
	summary Summary
	refs    int
}

// store holds the newest entry per origin. It is not safe for concurrent
// use; Node guards it with its mutex.
type store struct {
	entries  map[string]*entry
	contents map[[sha256.Size]byte]*content
	// bytes estimates the push/pull state of what is held (see cost):
	// each distinct body once, each entry's head and chain.
	bytes int
}

// entryOverhead bounds what an entry adds to a push/pull state besides
// its origin, body and chain: version, chain digest, signature, index.
const entryOverhead = 160

// cost is what e adds to the state besides its body.
func (e *entry) cost() int {
	n := len(e.origin) + entryOverhead
	if e.chain != nil {
		n += len(e.chain.der) // counted per entry: an upper bound
	}
	return n
}

func newStore() *store {
	return &store{entries: make(map[string]*entry), contents: make(map[[sha256.Size]byte]*content)}
}

// mergeResult says what merge did with an entry.
type mergeResult int

const (
	mergeStale    mergeResult = iota // older than or equal to what is held: ignored
	mergeAccepted                    // newer: replaced (or added)
)

// merge keeps e if it is newer than the entry held for its origin. Old
// news never overwrites new: an entry whose version is not greater than
// the held one is stale and ignored, whatever order entries arrive in. An
// accepted entry whose body another entry has shares that one's body and
// summary.
func (s *store) merge(e *entry) mergeResult {
	cur, ok := s.entries[e.origin]
	if ok && e.version.Compare(cur.version) <= 0 {
		return mergeStale
	}
	s.put(e)
	return mergeAccepted
}

// put stores e under its origin unconditionally, replacing what was held.
func (s *store) put(e *entry) {
	s.intern(e)
	s.bytes += e.cost()
	if cur, ok := s.entries[e.origin]; ok {
		s.release(cur)
	}
	s.entries[e.origin] = e
}

// sizeWith returns what bytes would be with e in place of the entry held
// for its origin.
func (s *store) sizeWith(e *entry) int {
	n := s.bytes + e.cost()
	if _, ok := s.contents[e.hash]; !ok {
		n += len(e.body)
	}
	if cur, ok := s.entries[e.origin]; ok {
		n -= cur.cost()
		if c := s.contents[cur.hash]; c != nil && c.refs == 1 && cur.hash != e.hash {
			n -= len(c.body)
		}
	}
	return n
}

// intern points e at the shared copy of its body and summary.
func (s *store) intern(e *entry) {
	if c, ok := s.contents[e.hash]; ok {
		e.body, e.summary = c.body, c.summary
		c.refs++
		return
	}
	s.contents[e.hash] = &content{body: e.body, summary: e.summary, refs: 1}
	s.bytes += len(e.body)
}

// release drops e's share of the store's bytes and of its content.
func (s *store) release(e *entry) {
	s.bytes -= e.cost()
	if c, ok := s.contents[e.hash]; ok {
		if c.refs--; c.refs <= 0 {
			delete(s.contents, e.hash)
			s.bytes -= len(c.body)
		}
	}
}

// lookup returns the shared content with this hash, if held.
func (s *store) lookup(h [sha256.Size]byte) (*content, bool) {
	c, ok := s.contents[h]
	return c, ok
}

// get returns the entry of origin, or nil.
func (s *store) get(origin string) *entry { return s.entries[origin] }

// prune deletes the entries for which drop returns true and reports how
// many it deleted.
func (s *store) prune(drop func(*entry) bool) int {
	n := 0
	for name, e := range s.entries {
		if drop(e) {
			s.release(e)
			delete(s.entries, name)
			n++
		}
	}
	return n
}
