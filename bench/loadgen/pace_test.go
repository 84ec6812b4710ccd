package main

import (
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/leakcheck"
)

func TestScheduleSpreadsTheSetEvenly(t *testing.T) {
	tests := []struct {
		name  string
		conns int
		rate  float64
	}{
		{"one connection", 1, 100},
		{"four at 1000/s", 4, 1000},
		{"compare.sh's 32 at 10000/s", 32, 10000},
		{"an interval of no whole nanoseconds", 3, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			scheds := make([]schedule, tt.conns)
			for i := range scheds {
				scheds[i] = newSchedule(i, tt.conns, tt.rate)
			}
			if want := time.Duration(float64(tt.conns) * 1e9 / tt.rate); scheds[0].every != want {
				t.Errorf("interval %v, want connections/rate = %v", scheds[0].every, want)
			}
			// Request j of the set is connection j mod conns's request
			// j / conns, due j/rate after the start: one after another,
			// evenly spaced, never two at once (to the nanosecond's
			// rounding of each term).
			for j := range 10 * tt.conns {
				i, k := j%tt.conns, j/tt.conns
				got := scheds[i].at(start, k).Sub(start)
				want := time.Duration(float64(j) * 1e9 / tt.rate)
				if d := got - want; d < -time.Duration(k+1) || d > time.Duration(k+1) {
					t.Fatalf("request %d (connection %d, its %d-th) due at %v, want %v", j, i, k, got, want)
				}
			}
		})
	}
}

// receipts is when an echo backend read each request, by the client's
// port: a request leaves the client before it is read, so one read before
// its time on the schedule left early.
type receipts struct {
	mu     sync.Mutex
	byPort map[int][]time.Time
}

// startTimedEcho echoes 64-byte requests, logging in r when each was read.
func startTimedEcho(t *testing.T, r *receipts) string {
	r.byPort = make(map[int][]time.Time)
	return startBackend(t, func(c *net.TCPConn) {
		port := c.RemoteAddr().(*net.TCPAddr).Port
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			r.mu.Lock()
			r.byPort[port] = append(r.byPort[port], time.Now())
			r.mu.Unlock()
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
}

// pacedSet opens a set of conc connections to addr, paced at rate.
func pacedSet(t *testing.T, label, addr string, conc int, rate float64) *rrSet {
	t.Helper()
	s := newRRSet(label, newTestClient(t, addr, ""), conc, 64)
	t.Cleanup(s.close)
	if len(s.pingers) != conc {
		t.Fatalf("%s: opened %d of %d connections: %v", label, len(s.pingers), conc, &s.errs)
	}
	if err := s.pace(rate); err != nil {
		t.Fatal(err)
	}
	return s
}

func roundTrips(s *rrSet) (n, late int) {
	for _, p := range s.pingers {
		n += len(p.samples)
		late += p.late
	}
	return n, late
}

func TestPacedTurnKeepsItsSchedule(t *testing.T) {
	leakcheck.Check(t)
	const conc, rate, d = 4, 2000.0, 300 * time.Millisecond
	var r receipts
	s := pacedSet(t, "paced", startTimedEcho(t, &r), conc, rate)
	start := time.Now()
	end := start.Add(d)
	s.pacedTurn(start, end)
	if s.errs.total() != 0 {
		t.Fatalf("errors: %v", &s.errs)
	}
	// No request leaves before its time: connection i's first not
	// before i/rate (the stagger), its k-th not before k intervals more,
	// and none is sent whose time is at or after the end. (When a write
	// due before the end happens is up to the scheduler, so its moment is
	// not checked against the end.)
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, p := range s.pingers {
		got := r.byPort[p.c.LocalAddr().(*net.TCPAddr).Port]
		if len(got) == 0 {
			t.Fatalf("connection %d sent nothing", i)
		}
		for k, w := range got {
			due := p.sched.at(start, k)
			if w.Before(due) {
				t.Errorf("connection %d: request %d read %v before its time", i, k, due.Sub(w))
			}
			if !due.Before(end) {
				t.Errorf("connection %d sent request %d, due %v after the end", i, k, due.Sub(end))
			}
		}
		if len(p.samples) != len(got) {
			t.Errorf("connection %d: %d round trips for %d requests", i, len(p.samples), len(got))
		}
	}
	// d×rate requests are due; a generous range (a quarter of them up), as the machine is
	// shared, far from what unpaced connections do in 300 ms (tens of
	// thousands).
	if n, _ := roundTrips(s); n < int(rate*d.Seconds())/4 || n > int(rate*d.Seconds()) {
		t.Errorf("%d round trips, want about %v (rate × d), at most that", n, rate*d.Seconds())
	}
	if row := s.row(conc, 64); !strings.HasPrefix(row, "| paced | 4 | 64 | 2000 | ") || !strings.HasSuffix(row, " | 0 |") {
		t.Errorf("row %q, want the rate asked for after the size and no errors", row)
	}
}

func TestPacedSetsTakeTurnsAtTheRate(t *testing.T) {
	leakcheck.Check(t)
	const conc, rate, d, slice = 4, 1000.0, 400 * time.Millisecond, 100 * time.Millisecond
	proxy := pacedSet(t, "proxy", startSink(t, nil), conc, rate)
	direct := pacedSet(t, "direct", startSink(t, nil), conc, rate)
	interleave([]*rrSet{proxy, direct}, d, slice, nil)
	for _, s := range []*rrSet{proxy, direct} {
		// Each set is at rate while active, for d: about rate × d round
		// trips each, whatever the other set did.
		if n, _ := roundTrips(s); n < int(rate*d.Seconds())/4 || n > int(1.5*rate*d.Seconds()) || s.errs.total() != 0 {
			t.Errorf("%s: %d round trips, errors %v; want about %v", s.label, n, &s.errs, rate*d.Seconds())
		}
	}
}

func TestPacedSetCountsLateRequests(t *testing.T) {
	leakcheck.Check(t)
	// An echo takes 20 ms, ten intervals of 2 ms (2 connections at
	// 1000/s): every request but each connection's first is due while
	// the last is still out, and leaves late when its echo is in.
	const conc, rate, d, delay = 2, 1000.0, 200 * time.Millisecond, 20 * time.Millisecond
	slow := startBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			time.Sleep(delay) // the slow backend, not synchronisation
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	s := pacedSet(t, "slow", slow, conc, rate)
	interleave([]*rrSet{s}, d, d, nil)
	n, late := roundTrips(s)
	if s.errs.total() != 0 {
		t.Fatalf("errors: %v", &s.errs)
	}
	// One request outstanding per connection: at most d/delay each (and
	// the one in flight at the end), far fewer than the rate asks.
	if n <= conc || n > conc*(int(d/delay)+2) {
		t.Fatalf("%d round trips, want more than %d and at most %d", n, conc, conc*(int(d/delay)+2))
	}
	if late < n-conc || late > n {
		t.Errorf("%d of %d requests counted late, want at least %d", late, n, n-conc)
	}
	if row := s.row(conc, 64); !strings.HasSuffix(row, " | "+strconv.Itoa(late)+" | 0 |") {
		t.Errorf("row %q, want the late count (%d) before the errors", row, late)
	}
}

func TestRRRateFlag(t *testing.T) {
	tests := []struct{ name, rate string }{
		{"negative", "-1"},
		{"not a number", "NaN"},
		{"infinite", "+Inf"},
		// 32 connections at 1/s: one request each every 32 s, more
		// than -d; 1e-12/s would overflow the schedule.
		{"an interval beyond -d", "1"},
		{"an interval beyond any duration", "1e-12"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := runRR([]string{"-addr", "127.0.0.1:1", "-c", "32", "-d", "5s", "-rate", tt.rate})
			if err == nil || !strings.Contains(err.Error(), "-rate") {
				t.Errorf("rr -rate %s: %v, want an error about -rate", tt.rate, err)
			}
		})
	}
}
