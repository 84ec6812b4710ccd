package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"time"
)

// runRR implements "loadgen rr": -c connections each doing -size byte
// ping-pongs with the echoing sink for -d. Every echo is compared with its
// request, and every round trip's time is kept.
//
// With -paired ADDR, -c more connections go to ADDR (the sink directly),
// and the two sets take turns in slices of -slice until each was active
// for -d: the load of the moment, on a shared machine, then weighs on
// both alike, and the difference of their percentiles is the latency the
// proxy adds. The paired set's row follows the proxy's. Each -set adds
// one more set that takes its turn after those, with a row of its own: how
// several proxies and the sink share the same slices of the machine's load.
//
// With -rate R each set's round trips are paced at R per second in all
// (schedule), R×d in all; its row then also says the rate asked for and
// how many requests left more than one interval late. Without it every
// connection sends its next request as soon as the echo of the last is in.
func runRR(args []string) error {
	fs := flag.NewFlagSet("rr", flag.ContinueOnError)
	cf := newClientFlags(fs)
	conc := fs.Int("c", 50, "concurrent connections (of each set)")
	dur := fs.Duration("d", 5*time.Second, "time each set is active")
	size := fs.Int("size", 1024, "message size in bytes")
	paired := fs.String("paired", "", "`address` (of the sink) to interleave with -addr")
	pairedLabel := fs.String("paired-label", "", "row `label` of the paired set (default: direct (paired with LABEL))")
	slice := fs.Duration("slice", 250*time.Millisecond, "length of each set's turn with -paired or -set")
	rate := fs.Float64("rate", 0, "pace each set's round trips at `R` per second in all, spread over its connections (0: as fast as they go)")
	turns := fs.String("turns", "", "write a line per turn to `FILE`: label, start and end (CLOCK_MONOTONIC s), round trips, p50, p99 and largest µs, sent late")
	var more []labeledAddr
	fs.Func("set", "`LABEL=ADDR` of one more set taking turns with -addr's (repeatable; its row follows -paired's)", func(v string) error {
		label, addr, ok := strings.Cut(v, "=")
		if !ok || label == "" || addr == "" {
			return fmt.Errorf("want LABEL=ADDR, not %q", v)
		}
		more = append(more, labeledAddr{label, addr})
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *size < 1 || *conc < 1 || *slice <= 0 {
		return fmt.Errorf("-size, -c and -slice must be positive")
	}
	// !(x >= 0) is also true of NaN.
	if !(*rate >= 0) || math.IsInf(*rate, 1) {
		return fmt.Errorf("-rate %v: want a finite number of round trips per second, or 0 for no pacing", *rate)
	}
	// Each connection's interval, -c / -rate, at most -d: a request per
	// connection at least, and no schedule beyond time.Duration's range.
	if *rate > 0 && float64(*conc) / *rate > dur.Seconds() {
		return fmt.Errorf("-rate %v with -c %d is one request per connection every %.3g s, longer than -d %v", *rate, *conc, float64(*conc) / *rate, *dur)
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	if *paired != "" {
		if *pairedLabel == "" {
			*pairedLabel = "direct (paired with " + *cf.label + ")"
		}
		more = append([]labeledAddr{{*pairedLabel, *paired}}, more...)
	}
	sets := newRRSets(*cf.label, cl, more, *conc, *size)
	defer func() {
		for _, s := range sets {
			s.close()
		}
	}()
	if len(sets) == 1 {
		*slice = *dur
	}
	if *rate > 0 {
		for _, s := range sets {
			if err := s.pace(*rate); err != nil {
				return err
			}
		}
	}
	var tl *turnLog
	if *turns != "" {
		f, err := os.Create(*turns)
		if err != nil {
			return err
		}
		defer f.Close()
		tl = newTurnLog(f)
	}
	interleave(sets, *dur, *slice, tl)
	var errs []error
	if tl != nil {
		errs = append(errs, tl.flush())
	}
	for _, s := range sets {
		fmt.Println(s.row(*conc, *size))
		errs = append(errs, s.errs.result(s.label))
	}
	return errors.Join(errs...)
}

// newRRSets opens conc connections of label through cl, and as many to
// each of more, in that order.
func newRRSets(label string, cl *client, more []labeledAddr, conc, size int) []*rrSet {
	sets := []*rrSet{newRRSet(label, cl, conc, size)}
	for _, m := range more {
		mcl := *cl
		mcl.addr = m.addr
		sets = append(sets, newRRSet(m.label, &mcl, conc, size))
	}
	return sets
}

// labeledAddr is one -set flag: a set of connections to addr whose row
// is labeled label.
type labeledAddr struct{ label, addr string }

const rrHeader = `| proxy | connections | bytes | round trips | round trips/s | p50 µs | p99 µs | p99.9 µs | errors |
|---|---:|---:|---:|---:|---:|---:|---:|---:|`

// rrRateHeader is the header of the rows of rr -rate: the rate asked for
// comes before the rate done, and "sent late" counts the requests that
// left more than one interval (connections / rate) after their time.
const rrRateHeader = `| proxy | connections | bytes | round trips/s asked | round trips | round trips/s | p50 µs | p99 µs | p99.9 µs | sent late | errors |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|`

// rrSet is the connections of one rr row.
type rrSet struct {
	label   string
	pingers []*pinger
	errs    errorCount
	active  time.Duration // time its connections were doing round trips
	rate    float64       // round trips per second asked for; 0: unpaced
	poller  *poller       // of the paced connections; nil: unpaced
}

// newRRSet opens conc connections and asks the sink to echo on each; the
// failures are counted in the set.
func newRRSet(label string, cl *client, conc, size int) *rrSet {
	s := &rrSet{label: label}
	for _, c := range cl.openMany(conc, conc, &s.errs) {
		if p := newPinger(c, size, &s.errs); p != nil {
			s.pingers = append(s.pingers, p)
		}
	}
	return s
}

// pace makes the set's connections send rate round trips per second in
// all, each on its own schedule, served by one thread (pacedTurn). The
// connections must be plain TCP.
func (s *rrSet) pace(rate float64) error {
	pl, err := newPoller()
	if err != nil {
		return fmt.Errorf("pacing %s: %w", s.label, err)
	}
	s.rate, s.poller = rate, pl
	for i, p := range s.pingers {
		fd, err := rawFD(p.c)
		if err == nil {
			err = pl.add(fd, int32(i))
		}
		if err != nil {
			return fmt.Errorf("pacing %s: %w", s.label, err)
		}
		p.fd, p.sched = fd, newSchedule(i, len(s.pingers), rate)
	}
	return nil
}

// interleave gives each set turns of slice, in order, until the first has
// been active for dur; the last turn of each is shortened to dur. Each
// turn gets a line in tl unless it is nil.
func interleave(sets []*rrSet, dur, slice time.Duration, tl *turnLog) {
	for sets[0].active < dur {
		for _, s := range sets {
			d := min(slice, dur-s.active)
			if d <= 0 {
				continue
			}
			if tl == nil {
				s.turn(d)
				continue
			}
			m := tl.mark(s)
			s.turn(d)
			tl.record(s, m)
		}
	}
}

// turn runs the set's round trips, all connections at once, for d: a
// goroutine each, or paced on one thread.
func (s *rrSet) turn(d time.Duration) {
	if d <= 0 {
		return
	}
	start := time.Now()
	end := start.Add(d)
	if s.poller != nil {
		s.pacedTurn(start, end)
		s.active += time.Since(start)
		return
	}
	var wg sync.WaitGroup
	for _, p := range s.pingers {
		wg.Go(func() {
			p.run(end, &s.errs)
		})
	}
	wg.Wait()
	s.active += time.Since(start)
}

// row is the set's table row: rate over its active time, percentiles of
// all its round trips.
func (s *rrSet) row(conc, size int) string {
	parts := make([][]time.Duration, len(s.pingers))
	for i, p := range s.pingers {
		parts[i] = p.samples
	}
	lat := latencies(parts)
	rate := 0.0
	if s.active > 0 {
		rate = float64(len(lat)) / s.active.Seconds()
	}
	if s.rate > 0 {
		late := 0
		for _, p := range s.pingers {
			late += p.late
		}
		return fmt.Sprintf("| %s | %d | %d | %.0f | %d | %.0f | %s | %s | %s | %d | %d |", s.label, conc, size, s.rate,
			len(lat), rate, micros(percentile(lat, 50)), micros(percentile(lat, 99)), micros(percentile(lat, 99.9)), late, s.errs.total())
	}
	return fmt.Sprintf("| %s | %d | %d | %d | %.0f | %s | %s | %s | %d |", s.label, conc, size,
		len(lat), rate, micros(percentile(lat, 50)), micros(percentile(lat, 99)), micros(percentile(lat, 99.9)), s.errs.total())
}

func (s *rrSet) close() {
	for _, p := range s.pingers {
		p.c.Close()
	}
	if s.poller != nil {
		s.poller.close()
	}
}

// pinger is one rr connection: its requests' sequence, its buffers and the
// time of every round trip. A request carries its sequence number, so a
// stale or misrouted echo is a mismatch. A paced pinger sends on its
// schedule and counts the requests it sent late (pacedTurn).
type pinger struct {
	c       conn
	seq     uint64
	out, in []byte
	samples []time.Duration
	failed  bool
	// Paced: the descriptor of c, the schedule, and the requests sent
	// more than sched.every after their time.
	fd    int
	sched schedule
	late  int
	// A paced turn's state: the next request's number and time, whether
	// it is out (since sent, got bytes of its echo in), and whether the
	// connection is done for the turn.
	k          int
	due, sent  time.Time
	out1, done bool
	got        int
}

// newPinger asks the sink to echo on c; nil (the failure counted, c
// closed) if it cannot.
func newPinger(c conn, size int, errs *errorCount) *pinger {
	if _, err := c.Write([]byte{cmdEcho}); err != nil {
		errs.add(errWrite, err)
		c.Close()
		return nil
	}
	return &pinger{c: c, out: make([]byte, size), in: make([]byte, size)}
}

// run writes requests and reads their echoes until end, each as soon as
// the last echo is in. It stops at the first failure, which it counts,
// and does nothing after one.
func (p *pinger) run(end time.Time, errs *errorCount) {
	if p.failed {
		return
	}
	p.c.SetDeadline(end.Add(10 * time.Second))
	for time.Now().Before(end) {
		stamp(p.out, p.seq)
		t := time.Now()
		if _, err := p.c.Write(p.out); err != nil {
			p.fail(errs, errWrite, err)
			return
		}
		if _, err := io.ReadFull(p.c, p.in); err != nil {
			p.fail(errs, errRead, err)
			return
		}
		p.samples = append(p.samples, time.Since(t))
		if !bytes.Equal(p.in, p.out) {
			p.fail(errs, errMismatch, fmt.Errorf("echo of request %d differs from it", p.seq))
			return
		}
		p.seq++
	}
}

func (p *pinger) fail(errs *errorCount, k errKind, err error) {
	p.failed = true
	errs.add(k, err)
}

// stamp fills b with a pattern of seq: its 8 bytes, big endian, repeated
// (truncated to len(b)).
func stamp(b []byte, seq uint64) {
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], seq)
	for i := range b {
		b[i] = s[i%8]
	}
}
