package peer

import (
	"crypto/sha256"
	"reflect"
	"testing"
	"time"
)

// FuzzDecodeEntry feeds arbitrary bytes to the decoders of what gossip
// carries (entry messages, deltas, push/pull states, goodbyes) and the signature
// check of a real signer: nothing may panic, a decoded entry must encode
// back to itself, and no mutation may pass the signature check except the
// entry that was signed.
//
//	go test -run='^$' -fuzz=FuzzDecodeEntry -fuzztime=60s ./peer/
func FuzzDecodeEntry(f *testing.F) {
	sg, _, err := newSigner(testIdentity(gatewayIDPrefix+"fuzz"), allowGateways)
	if err != nil {
		f.Fatal(err)
	}
	signed := newEntry("fuzz", Version{Epoch: 1, Seq: 2}, summaryOf("a", 3, "a.ns", "b.ns"), time.Time{})
	if err := sg.sign(signed); err != nil {
		f.Fatal(err)
	}
	f.Add(encodeEntryMessage(signed, signed.chain.der))
	f.Add(encodeEntryMessage(signed, nil))
	f.Add(encodeEntryMessage(newEntry("plain", Version{Epoch: 3}, bigSummary("b", 3), time.Time{}), nil))
	f.Add(encodeDelta(&delta{base: Version{Epoch: 1, Seq: 1}, upserts: signed, removed: []string{"c.ns"}, chain: signed.chain.der}))
	f.Add(encodeSharedState([]*entry{signed}))

	f.Fuzz(func(t *testing.T, b []byte) {
		if d, err := decodeDelta(b); err == nil {
			d.apply(&Summary{Network: d.upserts.summary.Network})
		}
		if by, err := decodeBye(b); err == nil && by.sig != nil {
			if c, _, err := sg.chainFor(signed.chainDigest, nil, time.Now()); err == nil &&
				sg.verifyMessage(c, signedBye(by.origin, by.version), by.sig) == nil {
				t.Fatalf("a goodbye nobody signed passed the check: %+v", by)
			}
		}
		if st, err := parseSharedState(b); err == nil {
			st.entries(func([sha256.Size]byte) (Summary, bool) { return Summary{}, false }, 1<<20)
		}
		if m, err := decodeEntryMessage(b); err == nil {
			e := m.entry
			again, err := decodeEntryMessage(encodeEntryMessage(e, m.chain))
			if err != nil {
				t.Fatalf("re-encoded entry does not decode: %v", err)
			}
			if a := again.entry; a.origin != e.origin || a.version != e.version || a.hash != e.hash ||
				!reflect.DeepEqual(a.summary, e.summary) || string(a.sig) != string(e.sig) || a.chainDigest != e.chainDigest {
				t.Fatalf("entry changed through encoding: %+v, then %+v", e, a)
			}
			if !e.signed() {
				return
			}
			c, _, err := sg.chainFor(e.chainDigest, m.chain, time.Now())
			// Another message cannot pass unless ECDSA is broken; checking
			// it (slow under coverage) is left to crypto's own tests.
			if err == nil && e.origin == signed.origin && e.version == signed.version && e.hash == signed.hash &&
				sg.verify(c, e.origin, e.version, e.hash, e.sig) == nil && string(e.sig) != string(signed.sig) {
				t.Fatalf("a changed signature passed the check: %x", e.sig)
			}
		}
	})
}
