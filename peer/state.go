package peer

import (
	"crypto/sha256"
	"fmt"
)

// kindSharedState is the push/pull state: each distinct summary body
// once, then every live origin's head (origin, version) with the index of
// its body. The gateways of one network usually publish the same
// services, so the state grows with the networks, not the gateways. The
// older kindState (every entry whole) is still accepted.
//
// Body: count of bodies, each length-prefixed; count of entries, each a
// length-prefixed head and a uvarint body index.
const kindSharedState byte = 5

// encodeSharedState returns the push/pull body for entries, which must be
// interned in one store (equal bodies have equal hashes).
func encodeSharedState(entries []*entry) []byte {
	index := make(map[[sha256.Size]byte]int)
	var bodies [][]byte
	size := 0
	for _, e := range entries {
		if _, ok := index[e.hash]; !ok {
			index[e.hash] = len(bodies)
			bodies = append(bodies, e.body)
			size += len(e.body) + 10
		}
		size += len(e.origin) + 40
	}
	w := writer{b: make([]byte, 0, size)}
	w.uvarint(uint64(len(bodies)))
	for _, b := range bodies {
		w.bytes(b)
	}
	w.uvarint(uint64(len(entries)))
	for _, e := range entries {
		w.bytes(encodeHead(e.origin, e.version))
		w.uvarint(uint64(index[e.hash]))
	}
	return w.b
}

// sharedState is a parsed push/pull body whose summaries are not decoded
// yet: decodeSummaries does that, skipping the ones a store already holds.
type sharedState struct {
	bodies [][]byte
	hashes [][sha256.Size]byte
	heads  []entryHead
}

type entryHead struct {
	origin  string
	version Version
	body    int
}

func parseSharedState(b []byte) (*sharedState, error) {
	r := reader{b: b}
	st := &sharedState{}
	for n := r.count(); n > 0 && r.err == nil; n-- {
		body := r.bytes()
		st.bodies = append(st.bodies, body)
		st.hashes = append(st.hashes, sha256.Sum256(body))
	}
	for n := r.count(); n > 0 && r.err == nil; n-- {
		hr := reader{b: r.bytes()}
		h := entryHead{origin: hr.str(), version: Version{Epoch: hr.uvarint(), Seq: hr.uvarint()}}
		h.body = int(r.bounded(uint64(max(len(st.bodies)-1, 0))))
		switch {
		case hr.err != nil:
			return nil, fmt.Errorf("state head: %w", hr.err)
		case len(hr.b) != 0 || h.origin == "":
			return nil, fmt.Errorf("state head: trailing bytes or no origin: %w", errMalformed)
		case len(st.bodies) == 0:
			return nil, fmt.Errorf("state head without bodies: %w", errMalformed)
		}
		st.heads = append(st.heads, h)
	}
	if r.err != nil {
		return nil, fmt.Errorf("state: %w", r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("state: %d trailing bytes: %w", len(r.b), errMalformed)
	}
	return st, nil
}

// entries decodes the state's entries; known returns the summary of a
// body already held, so that only new bodies are decoded. Any malformed
// body rejects the whole state.
func (st *sharedState) entries(known func([sha256.Size]byte) (Summary, bool)) ([]*entry, error) {
	sums := make([]Summary, len(st.bodies))
	for i, body := range st.bodies {
		if s, ok := known(st.hashes[i]); ok {
			sums[i] = s
			continue
		}
		e, err := decodeEntry(append(encodeHead("state", Version{}), body...))
		if err != nil {
			return nil, fmt.Errorf("state body %d: %w", i, err)
		}
		// A copy, so that a stored body does not pin the whole state.
		sums[i], st.bodies[i] = e.summary, e.body
	}
	out := make([]*entry, len(st.heads))
	for i, h := range st.heads {
		out[i] = &entry{origin: h.origin, version: h.version, summary: sums[h.body], body: st.bodies[h.body]}
	}
	return out, nil
}
