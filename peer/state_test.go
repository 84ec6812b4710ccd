package peer

import (
	"crypto/sha256"
	"fmt"
	"reflect"
	"testing"
	"time"
)

// Equal summaries of several origins are stored once and sent once.
func TestSharedState(t *testing.T) {
	st := newStore()
	a := meshSummary("net-a", 50, 1)
	b := meshSummary("net-b", 50, 2)
	for i := range 16 {
		for _, s := range []Summary{a, b} {
			st.merge(newEntry(fmt.Sprintf("%s-%d", s.Network, i), Version{Epoch: 1, Seq: uint64(i)}, s, time.Now()))
		}
	}
	if got := len(st.contents); got != 2 {
		t.Fatalf("store holds %d contents for 32 entries of 2 summaries", got)
	}
	var live []*entry
	var whole int
	for _, e := range st.entries {
		live = append(live, e)
		whole += e.size()
	}
	body := encodeSharedState(live)
	if len(body) > whole/8 {
		t.Errorf("shared state %d bytes, entries %d: equal bodies were not sent once", len(body), whole)
	}
	ps, err := parseSharedState(body)
	if err != nil {
		t.Fatal(err)
	}
	var decoded int
	got, refused := ps.entries(func([sha256.Size]byte) (Summary, bool) { decoded++; return Summary{}, false }, DefaultMaxEntryBytes)
	if len(refused) != 0 {
		t.Fatal(refused)
	}
	if decoded != 2 {
		t.Errorf("looked up %d bodies, want 2", decoded)
	}
	if len(got) != 32 {
		t.Fatalf("%d entries, want 32", len(got))
	}
	for _, e := range got {
		want := st.get(e.origin)
		if want == nil || e.version != want.version || !reflect.DeepEqual(e.summary, want.summary) {
			t.Errorf("entry %s: %v, want %v", e.origin, e.version, want)
		}
	}
	// Replacing and pruning release contents.
	for i := range 16 {
		st.merge(newEntry(fmt.Sprintf("net-a-%d", i), Version{Epoch: 2}, b, time.Now()))
	}
	if got := len(st.contents); got != 1 {
		t.Errorf("store holds %d contents after every net-a entry moved to b's summary", got)
	}
	st.prune(func(*entry) bool { return true })
	if got := len(st.contents); got != 0 {
		t.Errorf("store holds %d contents after pruning everything", got)
	}
}
