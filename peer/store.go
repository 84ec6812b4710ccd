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
	// body is the encoded summary (the entry's wire form after origin and
	// version), reused for push/pull state and relaying without
	// re-encoding. Entries with equal bodies share one body and one
	// decoded summary in the store: the gateways of one network usually
	// publish the same services.
	body []byte
	hash [sha256.Size]byte // of body, set by the store
	// received is when this version arrived (or was published).
	received time.Time
}

// newEntry encodes s as origin's entry at version v.
func newEntry(origin string, v Version, s Summary, received time.Time) *entry {
	head := encodeHead(origin, v)
	wire := encodeEntry(origin, v, &s)
	return &entry{origin: origin, version: v, summary: s, body: wire[len(head):], received: received}
}

// wire returns the entry's wire form (encodeEntry's), a new slice.
func (e *entry) wire() []byte {
	return append(encodeHead(e.origin, e.version), e.body...)
}

// size is the length of the entry's wire form.
func (e *entry) size() int { return len(encodeHead(e.origin, e.version)) + len(e.body) }

// encodeHead is the start of an entry's wire form: origin and version.
func encodeHead(origin string, v Version) []byte {
	var w writer
	w.str(origin)
	w.uvarint(v.Epoch)
	w.uvarint(v.Seq)
	return w.b
}

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
	if cur, ok := s.entries[e.origin]; ok {
		s.release(cur)
	}
	s.entries[e.origin] = e
}

// intern points e at the shared copy of its body and summary.
func (s *store) intern(e *entry) {
	e.hash = sha256.Sum256(e.body)
	if c, ok := s.contents[e.hash]; ok {
		e.body, e.summary = c.body, c.summary
		c.refs++
		return
	}
	s.contents[e.hash] = &content{body: e.body, summary: e.summary, refs: 1}
}

func (s *store) release(e *entry) {
	if c, ok := s.contents[e.hash]; ok {
		if c.refs--; c.refs <= 0 {
			delete(s.contents, e.hash)
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
