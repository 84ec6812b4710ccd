package peer

import (
	"time"
)

// entry is the latest summary known from one origin node.
type entry struct {
	origin  string
	version Version
	summary Summary
	// wire is the encoded entry body (encodeEntry), reused for push/pull
	// state and relaying without re-encoding.
	wire []byte
	// received is when this version arrived (or was published).
	received time.Time
}

// store holds the newest entry per origin. It is not safe for concurrent
// use; Node guards it with its mutex.
type store struct {
	entries map[string]*entry
}

func newStore() *store { return &store{entries: make(map[string]*entry)} }

// mergeResult says what merge did with an entry.
type mergeResult int

const (
	mergeStale    mergeResult = iota // older than or equal to what is held: ignored
	mergeAccepted                    // newer: replaced (or added)
)

// merge keeps e if it is newer than the entry held for its origin. Old
// news never overwrites new: an entry whose version is not greater than
// the held one is stale and ignored, whatever order entries arrive in.
func (s *store) merge(e *entry) mergeResult {
	if cur, ok := s.entries[e.origin]; ok && e.version.Compare(cur.version) <= 0 {
		return mergeStale
	}
	s.entries[e.origin] = e
	return mergeAccepted
}

// get returns the entry of origin, or nil.
func (s *store) get(origin string) *entry { return s.entries[origin] }

// prune deletes the entries for which drop returns true and reports how
// many it deleted.
func (s *store) prune(drop func(*entry) bool) int {
	n := 0
	for name, e := range s.entries {
		if drop(e) {
			delete(s.entries, name)
			n++
		}
	}
	return n
}
