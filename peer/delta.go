package peer

import (
	"cmp"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
)

// Deltas: a publish that changes a few services of a large summary travels
// as the services that changed (upserted whole) and the hosts removed,
// against the version it was computed from, instead of the whole summary.
// A receiver holding exactly that base version applies it; any other
// receiver ignores it (counted in Stats.DeltaMisses) and gets the entry
// by push/pull. Deltas are transport: the changed services are encoded as
// a summary by encodeEntry, whatever a service carries.
//
// Body: base epoch, base seq (uvarints), the changed services as an entry
// (origin, new version, the chain digest and signature of the whole new
// entry, network, services), the count of removed hosts and each host,
// then the signing chain when sent over TCP (empty in broadcasts).
const kindDelta byte = 4

// delta is one origin's change from base to the version of upserts.
type delta struct {
	base Version
	// upserts holds origin, new version, network and the changed
	// services, with the signature of the whole entry the delta makes.
	upserts *entry
	removed []string // hosts, sorted
	chain   []byte   // the signing chain, if carried
}

func encodeDelta(d *delta) []byte {
	var w writer
	w.uvarint(d.base.Epoch)
	w.uvarint(d.base.Seq)
	w.bytes(d.upserts.wire())
	w.uvarint(uint64(len(d.removed)))
	for _, h := range d.removed {
		w.str(h)
	}
	w.bytes(d.chain)
	return w.b
}

func decodeDelta(b []byte) (*delta, error) {
	r := reader{b: b}
	d := &delta{base: Version{Epoch: r.uvarint(), Seq: r.uvarint()}}
	eb := r.bytes()
	for n := r.count(); n > 0 && r.err == nil; n-- {
		d.removed = append(d.removed, r.str())
	}
	if d.chain = r.bytes(); len(d.chain) == 0 {
		d.chain = nil
	}
	if r.err != nil {
		return nil, fmt.Errorf("delta: %w", r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("delta: %d trailing bytes: %w", len(r.b), errMalformed)
	}
	e, err := decodeEntry(eb)
	if err != nil {
		return nil, fmt.Errorf("delta: %w", err)
	}
	if e.version.Compare(d.base) <= 0 {
		return nil, fmt.Errorf("delta from %q: version %v not after its base %v: %w", e.origin, e.version, d.base, errMalformed)
	}
	for i, h := range d.removed {
		if h == "" || (i > 0 && d.removed[i-1] >= h) {
			return nil, fmt.Errorf("delta from %q: removed hosts empty, duplicated or out of order: %w", e.origin, errMalformed)
		}
		if _, ok := slices.BinarySearchFunc(e.summary.Services, h, byHost); ok {
			return nil, fmt.Errorf("delta from %q: host %q both changed and removed: %w", e.origin, h, errMalformed)
		}
	}
	d.upserts = e
	return d, nil
}

func byHost(s ServiceSummary, h string) int { return cmp.Compare(s.Host, h) }

// diffSummary returns the delta from base to e, entries of one origin
// with canonical summaries, carrying e's signature.
func diffSummary(base, e *entry) *delta {
	old, cur := &base.summary, &e.summary
	d := &delta{base: base.version}
	up := Summary{Network: cur.Network}
	i, j := 0, 0
	for i < len(old.Services) || j < len(cur.Services) {
		switch {
		case j == len(cur.Services) || (i < len(old.Services) && old.Services[i].Host < cur.Services[j].Host):
			d.removed = append(d.removed, old.Services[i].Host)
			i++
		case i == len(old.Services) || cur.Services[j].Host < old.Services[i].Host:
			up.Services = append(up.Services, cur.Services[j])
			j++
		default:
			if !reflect.DeepEqual(old.Services[i], cur.Services[j]) {
				up.Services = append(up.Services, cur.Services[j])
			}
			i++
			j++
		}
	}
	d.upserts = newEntry(e.origin, e.version, up, time.Time{})
	d.upserts.sig, d.upserts.chainDigest = e.sig, e.chainDigest
	return d
}

// apply returns base's summary with d applied, in canonical order.
func (d *delta) apply(base *Summary) Summary {
	up := d.upserts.summary.Services
	out := Summary{Network: d.upserts.summary.Network, Services: make([]ServiceSummary, 0, len(base.Services)+len(up))}
	i, j := 0, 0
	for i < len(base.Services) || j < len(up) {
		switch {
		case j == len(up) || (i < len(base.Services) && base.Services[i].Host < up[j].Host):
			if _, gone := slices.BinarySearch(d.removed, base.Services[i].Host); !gone {
				out.Services = append(out.Services, base.Services[i])
			}
			i++
		case i == len(base.Services) || up[j].Host < base.Services[i].Host:
			out.Services = append(out.Services, up[j])
			j++
		default: // replaced
			out.Services = append(out.Services, up[j])
			i++
			j++
		}
	}
	return out
}

// applyDelta applies a remote delta if this node holds its base and the
// entry it makes is authentic, and reports whether it did.
func (n *Node) applyDelta(d *delta) bool {
	origin := d.upserts.origin
	now := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	if origin == n.cfg.Name {
		n.c.stale.Add(1)
		return false
	}
	cur := n.store.get(origin)
	switch {
	case cur != nil && cur.version.Compare(d.upserts.version) >= 0:
		n.c.stale.Add(1)
		return false
	case cur == nil || cur.version != d.base:
		n.c.deltaMisses.Add(1)
		return false
	}
	s := d.apply(&cur.summary)
	if s.Network != cur.summary.Network {
		n.reject(rMessageMalformed, fmt.Errorf("delta from %q changes its network from %q to %q", origin, cur.summary.Network, s.Network))
		return false
	}
	e := newEntry(origin, d.upserts.version, s, now)
	e.sig, e.chainDigest = d.upserts.sig, d.upserts.chainDigest
	return n.acceptLocked(e, d.chain, now) && n.c.deltasApplied.Add(1) > 0
}

// deltaBroadcast is one delta in memberlist's broadcast queue. Unlike
// entries, a newer delta must not replace an older one of the same origin
// (receivers need every link of the chain); a newer whole entry does.
type deltaBroadcast struct {
	origin string
	msg    []byte
}

var _ memberlist.UniqueBroadcast = (*deltaBroadcast)(nil)

func (b *deltaBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b *deltaBroadcast) Message() []byte                       { return b.msg }
func (b *deltaBroadcast) Finished()                             {}
func (b *deltaBroadcast) UniqueBroadcast()                      {}
