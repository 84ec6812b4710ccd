package main

import (
	"bytes"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// startSink serves the sink protocol on a loopback port (in TLS with cfg)
// until the test ends, and returns its address.
func startSink(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- acceptSink(ln, cfg) }()
	t.Cleanup(func() {
		ln.Close()
		if err := <-done; err != nil {
			t.Errorf("acceptSink: %v", err)
		}
	})
	return ln.Addr().String()
}

// startBackend runs serve on each connection of a loopback listener, after
// the sink's hello, ack and command, until the test ends.
func startBackend(t *testing.T, serve func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				tc := c.(*net.TCPConn)
				var cmd [1]byte
				if _, err := readHello(tc); err != nil {
					return
				}
				if _, err := tc.Write([]byte{ackByte}); err != nil {
					return
				}
				if _, err := io.ReadFull(tc, cmd[:]); err != nil {
					return
				}
				serve(tc)
			})
		}
	})
	return ln.Addr().String()
}

func newTestClient(t *testing.T, addr, svidDir string) *client {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cf := newClientFlags(fs)
	args := []string{"-addr", addr}
	if svidDir != "" {
		args = append(args, "-tls-svid", svidDir)
	}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	cl, err := cf.client()
	if err != nil {
		t.Fatal(err)
	}
	cl.timeout = 5 * time.Second
	return cl
}

// The identities of the TLS mode, as compare.sh issues them: the client is
// a sidecar of service account "sleep", the sink a sidecar of "echo".
var (
	benchTrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
	clientID         = spiffeid.RequireFromPath(benchTrustDomain, "/ns/demo/sa/sleep")
	sinkID           = spiffeid.RequireFromPath(benchTrustDomain, "/ns/demo/sa/echo")
)

// newTestCA is "ewgate ca init --trust-domain cluster.local".
func newTestCA(t *testing.T) *identity.DevCA {
	t.Helper()
	ca, err := identity.NewDevCA(benchTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// writeSVID is "ewgate ca issue --spiffe-id ID --out DIR": it issues an
// SVID for id from ca and writes it to a new directory, which it returns.
func writeSVID(t *testing.T, ca *identity.DevCA, id spiffeid.ID) string {
	t.Helper()
	svid, err := ca.Issue(id, identity.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := identity.WriteSVIDFiles(dir, svid, ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestOpenTLS(t *testing.T) {
	leakcheck.Check(t)
	ca := newTestCA(t)
	sinkCfg, err := mtlsConfig(writeSVID(t, ca, sinkID), true, "istio")
	if err != nil {
		t.Fatal(err)
	}
	addr := startSink(t, sinkCfg)
	svid := writeSVID(t, ca, clientID)

	c, err := newTestClient(t, addr, svid).open()
	if err != nil {
		t.Fatalf("open with the sink's CA: %v", err)
	}
	st := c.(*tls.Conn).ConnectionState()
	c.Close()
	if st.Version != tls.VersionTLS13 || st.DidResume || st.NegotiatedProtocol != "istio" {
		t.Errorf("version %x, resumed %v, ALPN %q; want TLS 1.3, full handshake, istio", st.Version, st.DidResume, st.NegotiatedProtocol)
	}
	if got := st.PeerCertificates[0].URIs[0].String(); got != sinkID.String() {
		t.Errorf("sink presented %s, want %s", got, sinkID)
	}

	// A second connection is a full handshake again: no tickets.
	c, err = newTestClient(t, addr, svid).open()
	if err != nil {
		t.Fatal(err)
	}
	resumed := c.(*tls.Conn).ConnectionState().DidResume
	c.Close()
	if resumed {
		t.Error("second connection resumed a session")
	}

	// A client of another CA, and a plain ClientHello replay, are refused.
	if c, err := newTestClient(t, addr, writeSVID(t, newTestCA(t), clientID)).open(); err == nil {
		c.Close()
		t.Error("open with another CA succeeded")
	}
	if c, err := newTestClient(t, addr, "").open(); err == nil {
		c.Close()
		t.Error("a replayed ClientHello passed the TLS sink")
	} else if !strings.Contains(err.Error(), "backend answered") && !strings.Contains(err.Error(), "ack") {
		t.Errorf("replayed hello: %v, want a wrong or missing ack", err)
	}
}

func TestMTLSConfigNeedsAnSVID(t *testing.T) {
	ca := newTestCA(t)
	caDir := t.TempDir()
	if err := ca.WriteFiles(caDir); err != nil {
		t.Fatal(err)
	}
	noBundle := writeSVID(t, ca, clientID)
	if err := os.Remove(filepath.Join(noBundle, identity.FileBundle)); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, dir, want string }{
		{"no directory", filepath.Join(t.TempDir(), "missing"), "ewgate ca issue"},
		{"the CA's directory", caDir, "ewgate ca issue"},
		{"no bundle", noBundle, "trust bundle in " + noBundle},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mtlsConfig(tt.dir, false, "istio")
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.dir) {
				t.Fatalf("mtlsConfig(%s) = %v, want an error naming the directory and %q", tt.dir, err, tt.want)
			}
		})
	}
}

func TestPingPongCountsErrors(t *testing.T) {
	leakcheck.Check(t)
	tests := []struct {
		name  string
		addr  func(t *testing.T) string
		kind  errKind
		count int
	}{
		{"the sink's echo", func(t *testing.T) string { return startSink(t, nil) }, 0, 0},
		{"an echo that flips a byte", func(t *testing.T) string {
			return startBackend(t, func(c *net.TCPConn) {
				buf := make([]byte, 64)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					buf[n-1] ^= 1
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			})
		}, errMismatch, 1},
		{"a backend that closes after half a request", func(t *testing.T) string {
			return startBackend(t, func(c *net.TCPConn) {
				buf := make([]byte, 32)
				io.ReadFull(c, buf)
				c.Write(buf[:16])
			})
		}, errRead, 1},
		{"a backend that writes before any request", func(t *testing.T) string {
			return startBackend(t, func(c *net.TCPConn) {
				c.Write(bytes.Repeat([]byte{0xff}, 32)) // no request's stamp
				io.Copy(io.Discard, c)
			})
		}, errMismatch, 1},
	}
	for _, tt := range tests {
		for _, paced := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/paced=%v", tt.name, paced), func(t *testing.T) {
				cl := newTestClient(t, tt.addr(t), "")
				s := &rrSet{label: "test"}
				c, err := cl.open()
				if err != nil {
					t.Fatal(err)
				}
				p := newPinger(c, 32, &s.errs)
				if p == nil {
					t.Fatalf("newPinger: %v", &s.errs)
				}
				s.pingers = []*pinger{p}
				defer s.close()
				if paced {
					if err := s.pace(1000); err != nil {
						t.Fatal(err)
					}
				}
				// Two turns: a pinger that failed stays failed, counted once.
				for range 2 {
					s.turn(100 * time.Millisecond)
				}
				if s.errs.total() != tt.count || s.errs.n[tt.kind] != tt.count {
					t.Fatalf("errors: %v, want %d of kind %s", &s.errs, tt.count, tt.kind)
				}
				if tt.count == 0 && len(p.samples) == 0 {
					t.Error("no round trips measured")
				}
			})
		}
	}
}

func TestCheckOpen(t *testing.T) {
	leakcheck.Check(t)
	closed := make(chan struct{}, 2)
	closing := startBackend(t, func(c *net.TCPConn) {
		c.Close()
		closed <- struct{}{}
	})
	holding := startBackend(t, func(c *net.TCPConn) {
		io.Copy(io.Discard, c) // until the client closes
	})
	var conns []conn
	var openErrs errorCount
	for _, addr := range []string{holding, holding, holding, closing, closing} {
		c := newTestClient(t, addr, "").openMany(1, 1, &openErrs)
		for _, c := range c {
			c.Write([]byte{cmdEcho}) // any command: the backends serve it
		}
		conns = append(conns, c...)
	}
	defer closeAll(conns)
	if openErrs.total() != 0 || len(conns) != 5 {
		t.Fatalf("opened %d of 5: %v", len(conns), &openErrs)
	}
	<-closed
	<-closed
	// The backend has closed, but its FINs reach the client, and the
	// reads start, in the machine's own time: check again until both
	// are seen (a FIN, once there, is seen by every later check).
	var errs *errorCount
	await.True(t, 10*time.Second, "checkOpen to see the closing backend's 2 connections end", func() bool {
		errs = new(errorCount)
		checkOpen(conns, 100*time.Millisecond, errs)
		return errs.n[errClosed] >= 2
	})
	if errs.n[errClosed] != 2 || errs.total() != 2 {
		t.Fatalf("errors %v, want closed 2 (the closing backend's)", errs)
	}
}

// echoLog is the echoes of two test backends, in the order they were
// served.
type echoLog struct {
	mu    sync.Mutex
	order []string // the serving backend's name, per echo
}

// startEchoBackend echoes 64-byte requests, each logged in l under name
// before its echo is written, until the test ends.
func startEchoBackend(t *testing.T, l *echoLog, name string) string {
	return startBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			l.mu.Lock()
			l.order = append(l.order, name)
			l.mu.Unlock()
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
}

func TestInterleaveTakesTurns(t *testing.T) {
	leakcheck.Check(t)
	var l echoLog
	proxy := newRRSet("proxy", newTestClient(t, startEchoBackend(t, &l, "proxy"), ""), 2, 64)
	direct := newRRSet("direct", newTestClient(t, startEchoBackend(t, &l, "direct"), ""), 2, 64)
	defer proxy.close()
	defer direct.close()
	dur, slice := 200*time.Millisecond, 50*time.Millisecond
	interleave([]*rrSet{proxy, direct}, dur, slice, nil)
	for _, s := range []*rrSet{proxy, direct} {
		n := 0
		for _, p := range s.pingers {
			n += len(p.samples)
		}
		if n == 0 || s.errs.total() != 0 {
			t.Errorf("%s: %d round trips, errors %v", s.label, n, &s.errs)
		}
	}
	// Taking turns: a set's turn ends when its last echo is back, before
	// the other set's starts, so the backends served runs of one set
	// alone, the proxy set's first, at most one run per turn. Each turn
	// of the proxy set lasts at least the slice asked for, so it has at
	// most dur/slice turns, and the direct set as many; sets running at
	// once would mix their echoes into hundreds of runs.
	l.mu.Lock()
	order := slices.Clone(l.order)
	l.mu.Unlock()
	runs := 0
	for i, name := range order {
		if i == 0 || name != order[i-1] {
			runs++
		}
	}
	if maxRuns := 2 * int((dur+slice-1)/slice); len(order) == 0 || order[0] != "proxy" || runs > maxRuns {
		first := ""
		if len(order) > 0 {
			first = order[0]
		}
		t.Errorf("%d echoes in %d runs of one set, the first %q's; want the proxy set's first and at most %d runs", len(order), runs, first, maxRuns)
	}
	if row := direct.row(2, 64); !strings.HasPrefix(row, "| direct | 2 | 64 | ") || !strings.HasSuffix(row, " | 0 |") {
		t.Errorf("row %q", row)
	}
}

func TestRRSetsTakeTurnsInOrder(t *testing.T) {
	leakcheck.Check(t)
	var l echoLog
	cl := newTestClient(t, startEchoBackend(t, &l, "a"), "")
	more := []labeledAddr{{"b", startEchoBackend(t, &l, "b")}, {"c", startEchoBackend(t, &l, "c")}}
	sets := newRRSets("a", cl, more, 2, 64)
	defer func() {
		for _, s := range sets {
			s.close()
		}
	}()
	var labels []string
	for _, s := range sets {
		labels = append(labels, s.label)
	}
	if !slices.Equal(labels, []string{"a", "b", "c"}) {
		t.Fatalf("sets %q, want a, b, c", labels)
	}
	var turns bytes.Buffer
	tl := newTurnLog(&turns)
	interleave(sets, 150*time.Millisecond, 30*time.Millisecond, tl)
	if err := tl.flush(); err != nil {
		t.Fatal(err)
	}
	checkTurnLog(t, turns.String(), sets)
	// Each backend serves runs of its own set alone, in the sets' order,
	// round after round.
	l.mu.Lock()
	order := slices.Clone(l.order)
	l.mu.Unlock()
	var runs []string
	for i, name := range order {
		if i == 0 || name != order[i-1] {
			runs = append(runs, name)
		}
	}
	if len(runs) < 6 {
		t.Fatalf("runs %q: want at least two rounds of a, b, c", runs)
	}
	for i, name := range runs {
		if want := labels[i%3]; name != want {
			t.Fatalf("run %d of %q is %s's, want %s's", i, runs, name, want)
		}
	}
}

// checkTurnLog checks that log has a line per turn of sets, in their
// order round after round, each turn after the last, and that each set's
// lines count its round trips.
func checkTurnLog(t *testing.T, log string, sets []*rrSet) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(log, "\n"), "\n")
	if len(lines) < 2*len(sets) {
		t.Fatalf("turn log has %d lines, want at least two rounds of %d sets:\n%s", len(lines), len(sets), log)
	}
	counted := map[string]int{}
	lastEnd := 0.0
	for i, line := range lines {
		var label string
		var start, end, p50, p99, largest float64
		var n, late int
		if _, err := fmt.Sscanf(strings.ReplaceAll(line, "\t", " "), "%s %f %f %d %f %f %f %d", &label, &start, &end, &n, &p50, &p99, &largest, &late); err != nil {
			t.Fatalf("turn log line %q: %v", line, err)
		}
		if want := sets[i%len(sets)].label; label != want {
			t.Fatalf("turn %d is %s's, want %s's:\n%s", i, label, want, log)
		}
		if start < lastEnd || end <= start {
			t.Fatalf("turn %d from %.6f to %.6f, after a turn that ended at %.6f", i, start, end, lastEnd)
		}
		if n > 0 && !(p50 <= p99 && p99 <= largest && largest > 0) {
			t.Errorf("turn %d: p50 %.1f, p99 %.1f, largest %.1f µs out of order", i, p50, p99, largest)
		}
		lastEnd = end
		counted[label] += n
	}
	for _, s := range sets {
		all := 0
		for _, p := range s.pingers {
			all += len(p.samples)
		}
		if all == 0 || counted[s.label] != all {
			t.Errorf("set %s: the turn log counts %d round trips, its samples %d", s.label, counted[s.label], all)
		}
	}
}

func TestRRSetFlag(t *testing.T) {
	for _, v := range []string{"noequals", "=127.0.0.1:1", "label="} {
		err := runRR([]string{"-addr", "127.0.0.1:1", "-set", v})
		if err == nil || !strings.Contains(err.Error(), "want LABEL=ADDR") {
			t.Errorf("rr -set %q: %v, want LABEL=ADDR asked for", v, err)
		}
	}
}
