package peer

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestStoreMergeKeepsNewest(t *testing.T) {
	v := func(epoch, seq uint64) Version { return Version{Epoch: epoch, Seq: seq} }
	tests := []struct {
		name     string
		held     *Version
		incoming Version
		want     mergeResult
	}{
		{"first entry", nil, v(1, 0), mergeAccepted},
		{"newer seq", &Version{1, 1}, v(1, 2), mergeAccepted},
		{"same version", &Version{1, 1}, v(1, 1), mergeStale},
		{"older seq", &Version{1, 5}, v(1, 4), mergeStale},
		{"newer epoch beats higher seq", &Version{1, 9}, v(2, 0), mergeAccepted},
		{"older epoch loses despite higher seq", &Version{2, 0}, v(1, 9), mergeStale},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore()
			if tt.held != nil {
				s.merge(&entry{origin: "n", version: *tt.held})
			}
			if got := s.merge(&entry{origin: "n", version: tt.incoming}); got != tt.want {
				t.Errorf("merge = %v, want %v", got, tt.want)
			}
			want := tt.incoming
			if tt.want == mergeStale {
				want = *tt.held
			}
			if got := s.get("n").version; got != want {
				t.Errorf("held %v, want %v", got, want)
			}
		})
	}

	t.Run("any order ends at the newest", func(t *testing.T) {
		versions := []Version{v(1, 0), v(1, 1), v(1, 2), v(2, 0), v(2, 1), v(3, 0)}
		rng := rand.New(rand.NewPCG(1, 2))
		for range 100 {
			s := newStore()
			for _, i := range rng.Perm(len(versions)) {
				s.merge(&entry{origin: "n", version: versions[i]})
			}
			if got := s.get("n").version; got != v(3, 0) {
				t.Fatalf("held %v after shuffled merges", got)
			}
		}
	})
}

func TestWireRoundTrip(t *testing.T) {
	m := Meta{Network: "net-a", PassthroughAddr: "10.0.0.1:15443", TunnelAddr: "10.0.0.1:15008", SPIFFEID: "spiffe://td/ns/x/sa/y", Version: ProtocolVersion}
	got, err := decodeMeta(m.encode())
	if err != nil || got != m {
		t.Errorf("meta round trip = %+v, %v", got, err)
	}
	if got, err := decodeMeta(append(m.encode(), 0xff, 0x01)); err != nil || got != m {
		t.Errorf("meta with a later version's trailing fields = %+v, %v", got, err)
	}

	s := bigSummary("net-a", 500)
	v := Version{Epoch: 42, Seq: 7}
	src := newEntry("a1", v, s, time.Time{})
	src.sig, src.chainDigest = []byte("signature"), [32]byte{1}
	chain := []byte("chain")
	kind, body, err := decodeMessage(encodeMessage(kindEntry, encodeEntryMessage(src, chain)), DefaultMaxStateBytes)
	if err != nil || kind != kindEntry {
		t.Fatalf("decodeMessage: kind %d, %v", kind, err)
	}
	em, err := decodeEntryMessage(body)
	if err != nil {
		t.Fatal(err)
	}
	e := em.entry
	if e.origin != "a1" || e.version != v || !reflect.DeepEqual(e.summary, s) || e.hash != src.hash ||
		!bytes.Equal(e.sig, src.sig) || e.chainDigest != src.chainDigest || !bytes.Equal(em.chain, chain) {
		t.Errorf("entry round trip differs")
	}
	b1 := newEntry("b1", v, Summary{Network: "b"}, time.Time{})
	st, err := parseSharedState(encodeSharedState([]*entry{e, b1}))
	if err != nil {
		t.Fatal(err)
	}
	entries, refused := st.entries(func([32]byte) (Summary, bool) { return Summary{}, false }, DefaultMaxEntryBytes)
	if len(entries) != 2 || len(refused) != 0 || entries[1].origin != "b1" || entries[1].signed() || !bytes.Equal(entries[0].sig, src.sig) {
		t.Errorf("state round trip: %d entries, %v", len(entries), refused)
	}
}

// testNode starts an unjoined node for feeding its delegate directly.
func testNode(t *testing.T, modify func(*Config)) *Node {
	t.Helper()
	cfg := testConfig("self", "a")
	if modify != nil {
		modify(&cfg)
	}
	return startNode(t, cfg)
}

func TestDelegateRejectsGarbage(t *testing.T) {
	leakcheck.Check(t)
	n := testNode(t, func(c *Config) { c.MaxStateBytes = 4096 })
	d := (*delegate)(n)
	entryMsg := func(v Version, s Summary) []byte { return encodeEntryMessage(newEntry("peer", v, s, time.Time{}), nil) }
	valid := entryMsg(Version{1, 1}, Summary{Network: "b"})
	unsorted := Summary{Network: "b", Services: []ServiceSummary{{Host: "z"}, {Host: "a"}}}
	longKey := Summary{Network: "b", Services: []ServiceSummary{{Host: "a", Subsets: []SubsetDefinition{
		{Name: "v1", Labels: map[string]string{strings.Repeat("k", maxKeyLen+1): "v"}}}}}}
	inflated := summaryOf("b", MaxHealthyCount+1, "a")
	bomb := encodeMessage(kindSharedState, make([]byte, 1<<20)) // 1 MiB of zeros, compressed small
	hdr := func(kind, flags byte, body []byte) []byte {
		return append([]byte{ProtocolVersion, kind, flags}, body...)
	}
	future := Version{Epoch: uint64(time.Now().Add(2 * MaxClockSkew).UnixNano())}
	head := []byte{6, 1, 'p', 1, 1, 0, 0} // length-prefixed head: origin "p", version 1.1, unsigned

	tests := []struct {
		name   string
		msg    []byte // to NotifyMsg
		state  []byte // to MergeRemoteState
		reason string
	}{
		{"empty message", []byte{}, nil, RejectMessageMalformed},
		{"short header", []byte{1, 1}, nil, RejectMessageMalformed},
		{"unknown wire version", hdr(kindEntry, 0, valid)[0:0:0], nil, RejectVersion},
		{"state of another wire version", nil, append([]byte{ProtocolVersion - 1}, hdr(kindSharedState, 0, encodeSharedState(nil))[1:]...), RejectVersion},
		{"oversized label key", hdr(kindEntry, 0, entryMsg(Version{1, 3}, longKey)), nil, RejectMessageMalformed},
		{"unknown kind", hdr(9, 0, valid), nil, RejectMessageMalformed},
		{"unknown flag", hdr(kindEntry, 0x80, valid), nil, RejectMessageMalformed},
		{"state as message", hdr(kindSharedState, 0, encodeSharedState(nil)), nil, RejectMessageMalformed},
		{"truncated entry", hdr(kindEntry, 0, valid[:len(valid)-1]), nil, RejectMessageMalformed},
		{"trailing bytes", hdr(kindEntry, 0, append(bytes.Clone(valid), 0)), nil, RejectMessageMalformed},
		{"huge count", hdr(kindEntry, 0, []byte{0xff, 0xff, 0xff, 0xff, 0x0f}), nil, RejectMessageMalformed},
		{"non-canonical summary", hdr(kindEntry, 0, entryMsg(Version{1, 2}, unsorted)), nil, RejectMessageMalformed},
		{"signature without chain digest", hdr(kindEntry, 0, []byte{10, 1, 'p', 1, 1, 0, 1, 's', 1, 'b', 0, 0}), nil, RejectMessageMalformed},
		{"sequence at MaxSeq", hdr(kindEntry, 0, entryMsg(Version{1, MaxSeq}, Summary{Network: "b"})), nil, RejectVersionImplausible},
		{"epoch far in the future", hdr(kindEntry, 0, entryMsg(future, Summary{Network: "b"})), nil, RejectVersionImplausible},
		{"inflated count", hdr(kindEntry, 0, entryMsg(Version{1, 4}, inflated)), nil, RejectCountTooLarge},
		{"unsigned entry", hdr(kindEntry, 0, valid), nil, RejectUnsigned},
		{"bad deflate", hdr(kindEntry, flagDeflate, []byte{0xff, 0xfe, 0xfd}), nil, RejectMessageMalformed},
		{"bye without origin", hdr(kindBye, 0, []byte{0, 1, 1}), nil, RejectMessageMalformed},
		{"oversize message", hdr(kindEntry, 0, make([]byte, 5000)), nil, RejectMessageTooLarge},
		{"truncated delta", hdr(kindDelta, 0, []byte{1, 1}), nil, RejectMessageMalformed},
		{"delta not after its base", hdr(kindDelta, 0, encodeDelta(&delta{base: Version{1, 2}, upserts: newEntry("peer", Version{1, 1}, Summary{Network: "b"}, time.Time{})})), nil, RejectMessageMalformed},
		{"delta removing unsorted hosts", hdr(kindDelta, 0, encodeDelta(&delta{base: Version{1, 0}, upserts: newEntry("peer", Version{1, 1}, Summary{Network: "b"}, time.Time{}), removed: []string{"z", "a"}})), nil, RejectMessageMalformed},
		{"oversize delta", hdr(kindDelta, 0, make([]byte, 5000)), nil, RejectMessageTooLarge},
		{"shared state index out of range", nil, hdr(kindSharedState, 0, slices.Concat([]byte{1, 0, 0, 1}, head, []byte{5})), RejectStateMalformed},
		{"shared state head without bodies", nil, hdr(kindSharedState, 0, slices.Concat([]byte{0, 0, 1}, head, []byte{0})), RejectStateMalformed},
		{"shared state with a bad body", nil, hdr(kindSharedState, 0, slices.Concat([]byte{1, 2, 9, 9, 0, 1}, head, []byte{0})), RejectStateMalformed},
		{"shared state trailing bytes", nil, hdr(kindSharedState, 0, []byte{0, 0, 0, 7}), RejectStateMalformed},
		{"empty state", nil, []byte{}, RejectStateMalformed},
		{"entry as state", nil, hdr(kindEntry, 0, valid), RejectStateMalformed},
		{"state count over bytes", nil, hdr(kindSharedState, 0, []byte{0x7f}), RejectStateMalformed},
		{"decompression bomb", nil, bomb, RejectStateTooLarge},
	}
	// A corrupted header version, since hdr always writes the right one.
	tests[2].msg = hdr(kindEntry, 0, valid)
	tests[2].msg[0] = 99

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := n.Stats().Rejected[tt.reason]
			if tt.msg != nil {
				d.NotifyMsg(tt.msg)
			} else {
				d.MergeRemoteState(tt.state, false)
			}
			if got := n.Stats().Rejected[tt.reason]; got != before+1 {
				t.Errorf("Rejected[%s] = %d, want %d", tt.reason, got, before+1)
			}
			if got := len(n.store.entries); got != 1 {
				t.Errorf("store holds %d entries after garbage", got)
			}
		})
	}

	t.Run("bad meta", func(t *testing.T) {
		for _, meta := range [][]byte{nil, {0}, {1}, {1, 0, 0, 0, 0}, {1, 200, 'x'}} {
			if err := d.NotifyAlive(&memberlist.Node{Name: "x", Meta: meta}); err == nil {
				t.Errorf("NotifyAlive accepted meta %v", meta)
			}
		}
		if got := n.Stats().Rejected[RejectMetaMalformed]; got != 5 {
			t.Errorf("Rejected[meta] = %d, want 5", got)
		}
	})

	t.Run("node of another wire version", func(t *testing.T) {
		old := Meta{Network: "b", PassthroughAddr: "10.0.0.2:15443", Version: ProtocolVersion - 1}
		if err := d.NotifyAlive(&memberlist.Node{Name: "old", Meta: old.encode()}); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("wire version %d", ProtocolVersion-1)) {
			t.Errorf("NotifyAlive of a version %d node: %v", old.Version, err)
		}
		if got := n.Stats().Rejected[RejectVersion]; got != 3 {
			t.Errorf("Rejected[wire_version] = %d, want 3", got)
		}
	})

	t.Run("random bytes never panic", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(3, 4))
		for range 2000 {
			b := make([]byte, rng.IntN(64))
			for i := range b {
				b[i] = byte(rng.UintN(256))
			}
			if len(b) > 1 && rng.IntN(2) == 0 {
				b[0], b[1] = ProtocolVersion, byte(1+rng.IntN(5))
			}
			d.NotifyMsg(b)
			d.MergeRemoteState(b, false)
			decodeMeta(b)
		}
	})
}

// settledState waits until n's local state settles, as it does
// asynchronously after Start (the node's own join event changes
// membership, and so the state): until two reads share one build. It
// returns that state.
func settledState(t *testing.T, n *Node) []byte {
	t.Helper()
	d := (*delegate)(n)
	var s0 []byte
	await.True(t, 5*time.Second, "the local state to settle", func() bool {
		s0 = d.LocalState(false)
		builds := n.Stats().StateBuilds
		s1 := d.LocalState(true)
		return &s0[0] == &s1[0] && n.Stats().StateBuilds == builds
	})
	return s0
}

// TestLocalStateBuiltOnce checks that push/pulls asking for the state
// at once share one build: memberlist asks within each exchange's
// deadline, and builds of a large catalog in parallel shared the CPU
// until none finished within one (TestLargeCatalogSyncs under load).
func TestLocalStateBuiltOnce(t *testing.T) {
	leakcheck.Check(t)
	n := testNode(t, nil)
	d := (*delegate)(n)
	settledState(t, n)
	if err := n.Publish(bigSummary("a", 10_000)); err != nil {
		t.Fatal(err)
	}
	builds := n.Stats().StateBuilds

	const callers = 8
	// The first build is held until every caller waits, for it or, had
	// each its own build, in the hold too: the callers find the cache
	// stale together however the scheduler runs them.
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseAll := func() { releaseOnce.Do(func() { close(release) }) }
	defer releaseAll()
	n.mu.Lock()
	n.buildingState = func() { <-release }
	n.mu.Unlock()
	states := make(chan []byte, callers)
	for range callers {
		go func() { states <- d.LocalState(false) }()
	}
	await.True(t, 10*time.Second, "every caller to wait for a build", func() bool {
		return blockedIn("peer.(*delegate).LocalState(") == callers
	})
	releaseAll()
	first := <-states
	for range callers - 1 {
		if s := <-states; &s[0] != &first[0] {
			t.Error("callers got states of different builds")
		}
	}
	if got := n.Stats().StateBuilds - builds; got != 1 {
		t.Errorf("%d callers at once built the state %d times, want 1", callers, got)
	}
	if _, body, err := decodeMessage(first, 1<<30); err != nil || len(body) < 10_000 {
		t.Errorf("state of %d bytes: %v", len(body), err)
	}
}

// blockedIn counts the goroutines blocked on a channel receive with a
// call of fn on their stacks, frames as runtime.Stack prints them.
func blockedIn(fn string) int {
	count := 0
	for _, g := range bytes.Split(leakcheck.Stacks(), []byte("\n\n")) {
		header, _, _ := bytes.Cut(g, []byte("\n"))
		if bytes.Contains(header, []byte("[chan receive")) && bytes.Contains(g, []byte(fn)) {
			count++
		}
	}
	return count
}

func TestPublish(t *testing.T) {
	leakcheck.Check(t)
	n := testNode(t, nil)
	d := (*delegate)(n)
	version := func() Version { s, _ := summaryFrom(n, "self"); return s.Version }

	s0 := settledState(t, n)
	builds := n.Stats().StateBuilds

	v0 := version()
	if err := n.Publish(summaryOf("", 2, "b.ns", "a.ns")); err != nil {
		t.Fatal(err)
	}
	v1 := version()
	if v1.Compare(v0) <= 0 {
		t.Errorf("version %v not above %v", v1, v0)
	}
	if s, _ := summaryFrom(n, "self"); s.Summary.Network != "a" || s.Summary.Services[0].Host != "a.ns" {
		t.Errorf("published summary not filled in and sorted: %+v", s.Summary)
	}
	if err := n.Publish(summaryOf("a", 2, "a.ns", "b.ns")); err != nil || version() != v1 {
		t.Errorf("identical publish changed the version: %v, %v", version(), err)
	}
	if s2 := d.LocalState(false); bytes.Equal(s2, s0) || n.Stats().StateBuilds <= builds {
		t.Errorf("LocalState not rebuilt after a change")
	}

	for name, s := range map[string]Summary{
		"other network":  summaryOf("b", 1, "x"),
		"empty host":     summaryOf("a", 1, ""),
		"duplicate host": summaryOf("a", 1, "x", "x"),
		"port 0":         {Services: []ServiceSummary{{Host: "x", Ports: []PortSummary{{Port: 0}}}}},
	} {
		if err := n.Publish(s); err == nil {
			t.Errorf("%s: Publish accepted it", name)
		}
	}

	t.Run("earlier incarnation superseded", func(t *testing.T) {
		cur := version()
		old := Version{Epoch: cur.Epoch + 1000, Seq: 3} // a previous run, clock ahead
		e := newEntry("self", old, Summary{Network: "a"}, time.Time{})
		if err := n.signer.sign(e); err != nil { // with this gateway's SVID, as that run did
			t.Fatal(err)
		}
		d.MergeRemoteState(encodeMessage(kindSharedState, encodeSharedState([]*entry{e})), false)
		s, _ := summaryFrom(n, "self")
		if s.Version.Compare(old) <= 0 || len(s.Summary.Services) != 2 {
			t.Errorf("after an earlier incarnation's entry: %v with %d services", s.Version, len(s.Summary.Services))
		}
	})

	n.Shutdown()
	if err := n.Publish(summaryOf("a", 1, "y")); err != ErrClosed {
		t.Errorf("Publish after Shutdown = %v", err)
	}
	if err := n.Leave(0); err != ErrClosed {
		t.Errorf("Leave after Shutdown = %v", err)
	}
}

func TestSetKeysOnPlaintextNode(t *testing.T) {
	leakcheck.Check(t)
	n := testNode(t, func(c *Config) { c.Keys, c.Insecure = nil, true })
	if err := n.SetKeys([][]byte{testKey(1)}); err == nil {
		t.Error("SetKeys turned encryption on")
	}
}

func TestLoadKeyring(t *testing.T) {
	k16 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 16))
	k32 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 32))
	tests := []struct {
		name    string
		file    string
		want    int    // keys
		wantErr string // substring
	}{
		{"one key", k32 + "\n", 1, ""},
		{"primary first, comments, blanks", "# rotated 2026-01\n\n  " + k16 + "  \n# old\n" + k32 + "\n", 2, ""},
		{"no trailing newline", k32, 1, ""},
		{"empty", "", 0, "no keys"},
		{"only comments", "# nothing\n\n", 0, "no keys"},
		{"not base64", "not*base64\n", 0, ":1: not base64"},
		{"wrong length", base64.StdEncoding.EncodeToString([]byte("short")) + "\n", 0, ":1:"},
		{"duplicate", k32 + "\n" + k32 + "\n", 0, ":2: duplicate"},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			if err := os.WriteFile(path, []byte(tt.file), 0o600); err != nil {
				t.Fatal(err)
			}
			keys, err := LoadKeyring(path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || len(keys) != tt.want {
				t.Fatalf("got %d keys, %v", len(keys), err)
			}
		})
	}
	if _, err := LoadKeyring(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file: no error")
	}
	// The primary is the first key in the file.
	path := filepath.Join(dir, "order")
	os.WriteFile(path, []byte(k16+"\n"+k32+"\n"), 0o600)
	if keys, _ := LoadKeyring(path); len(keys) != 2 || len(keys[0]) != 16 {
		t.Errorf("primary not first")
	}
	if _, err := Start(context.Background(), Config{Network: "a", Keys: [][]byte{}}); err != ErrNoKeys {
		t.Errorf("Start without keys = %v", err)
	}
}
