package peer

import (
	"cmp"
	"crypto/sha256"
	"fmt"
	"slices"
)

// kindSharedState is the push/pull state: each distinct summary body
// once, each distinct signing chain once, then every live origin's head
// (origin, version, chain digest, signature) with the index of its body.
// The gateways of one network usually publish the same services, so the
// state grows with the networks, not the gateways.
//
// Body: count of bodies, each length-prefixed; count of chains, each
// length-prefixed; count of entries, each a length-prefixed head and a
// uvarint body index.
const kindSharedState byte = 5

// encodeSharedState returns the push/pull body for entries, which must be
// interned in one store (equal bodies have equal hashes).
func encodeSharedState(entries []*entry) []byte {
	index := make(map[[sha256.Size]byte]int)
	chains := make(map[[sha256.Size]byte]bool)
	var bodies, ders [][]byte
	size := 0
	for _, e := range entries {
		if _, ok := index[e.hash]; !ok {
			index[e.hash] = len(bodies)
			bodies = append(bodies, e.body)
			size += len(e.body) + 10
		}
		if e.chain != nil && !chains[e.chain.digest] {
			chains[e.chain.digest] = true
			ders = append(ders, e.chain.der)
			size += len(e.chain.der) + 10
		}
		size += e.cost()
	}
	w := writer{b: make([]byte, 0, size)}
	w.uvarint(uint64(len(bodies)))
	for _, b := range bodies {
		w.bytes(b)
	}
	w.uvarint(uint64(len(ders)))
	for _, b := range ders {
		w.bytes(b)
	}
	w.uvarint(uint64(len(entries)))
	for _, e := range entries {
		w.bytes(e.head())
		w.uvarint(uint64(index[e.hash]))
	}
	return w.b
}

// trimState returns entries without the largest bodies of other origins
// than keep, dropping bodies until their total is at most limit bytes
// less than now, for a state that peers would refuse as a whole.
func trimState(entries []*entry, keep string, over int) []*entry {
	sizes := make(map[[sha256.Size]byte]int)
	for _, e := range entries {
		if e.origin != keep {
			sizes[e.hash] = len(e.body)
		}
	}
	hashes := make([][sha256.Size]byte, 0, len(sizes))
	for h := range sizes {
		hashes = append(hashes, h)
	}
	slices.SortFunc(hashes, func(a, b [sha256.Size]byte) int { return cmp.Compare(sizes[b], sizes[a]) })
	drop := make(map[[sha256.Size]byte]bool)
	for _, h := range hashes {
		if over <= 0 {
			break
		}
		drop[h] = true
		over -= sizes[h]
	}
	return slices.DeleteFunc(slices.Clone(entries), func(e *entry) bool { return e.origin != keep && drop[e.hash] })
}

// sharedState is a parsed push/pull body whose summaries are not decoded
// yet: entries does that, skipping the ones a store already holds.
type sharedState struct {
	bodies [][]byte
	hashes [][sha256.Size]byte
	ders   [][]byte                     // chains, in the order sent
	chains map[[sha256.Size]byte][]byte // ders by digest, built by the first chain call
	heads  []entryHead
}

type entryHead struct {
	*entry     // origin, version, signature; no body yet
	body   int // index into bodies
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
		st.ders = append(st.ders, r.bytes())
	}
	for n := r.count(); n > 0 && r.err == nil; n-- {
		hr := reader{b: r.bytes()}
		e, err := decodeHead(&hr)
		if err != nil {
			return nil, fmt.Errorf("state head: %w", err)
		}
		h := entryHead{entry: e, body: int(r.bounded(uint64(max(len(st.bodies)-1, 0))))}
		switch {
		case len(hr.b) != 0:
			return nil, fmt.Errorf("state head: %d trailing bytes: %w", len(hr.b), errMalformed)
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

// refusal is an entry of a state refused alone, with why.
type refusal struct {
	reason reason
	err    error
}

// entries decodes the state's entries; known returns the summary of a
// body already held, so that only new bodies are decoded. A body over
// maxEntry bytes or that does not decode refuses only the entries using
// it: the others still merge.
func (st *sharedState) entries(known func([sha256.Size]byte) (Summary, bool), maxEntry int) ([]*entry, []refusal) {
	sums := make([]Summary, len(st.bodies))
	bad := make([]error, len(st.bodies))
	var refused []refusal
	for i, body := range st.bodies {
		if s, ok := known(st.hashes[i]); ok {
			sums[i] = s
			continue
		}
		if len(body) > maxEntry {
			bad[i] = fmt.Errorf("state body %d is %d bytes, over the entry limit %d: %w", i, len(body), maxEntry, errTooLarge)
			continue
		}
		e := &entry{origin: "state"}
		// A copy, so that a stored body does not pin the whole state.
		if err := e.decodeBody(slices.Clone(body)); err != nil {
			bad[i] = fmt.Errorf("state body %d: %w", i, err)
			continue
		}
		sums[i], st.bodies[i] = e.summary, e.body
	}
	out := make([]*entry, 0, len(st.heads))
	for _, h := range st.heads {
		if err := bad[h.body]; err != nil {
			refused = append(refused, refusal{reasonFor(err, rEntryTooLarge, rStateMalformed), fmt.Errorf("entry of %q: %w", h.origin, err)})
			continue
		}
		e := h.entry
		e.summary, e.body, e.hash = sums[h.body], st.bodies[h.body], st.hashes[h.body]
		out = append(out, e)
	}
	return out, refused
}

// chain returns the chain with digest d carried in the state, or nil.
// Chains are hashed only when an entry needs one: a state of entries all
// held already costs no hashing.
func (st *sharedState) chain(d [sha256.Size]byte) []byte {
	if st.chains == nil {
		st.chains = make(map[[sha256.Size]byte][]byte, len(st.ders))
		for _, der := range st.ders {
			st.chains[sha256.Sum256(der)] = der
		}
	}
	return st.chains[d]
}
