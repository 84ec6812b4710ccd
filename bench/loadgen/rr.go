package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
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
// proxy adds. The paired set's row follows the proxy's.
func runRR(args []string) error {
	fs := flag.NewFlagSet("rr", flag.ContinueOnError)
	cf := newClientFlags(fs)
	conc := fs.Int("c", 50, "concurrent connections (of each set)")
	dur := fs.Duration("d", 5*time.Second, "time each set is active")
	size := fs.Int("size", 1024, "message size in bytes")
	paired := fs.String("paired", "", "`address` (of the sink) to interleave with -addr")
	pairedLabel := fs.String("paired-label", "", "row `label` of the paired set (default: direct (paired with LABEL))")
	slice := fs.Duration("slice", 250*time.Millisecond, "length of each set's turn with -paired")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *size < 1 || *conc < 1 || *slice <= 0 {
		return fmt.Errorf("-size, -c and -slice must be positive")
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	sets := []*rrSet{newRRSet(*cf.label, cl, *conc, *size)}
	defer func() {
		for _, s := range sets {
			s.close()
		}
	}()
	if *paired != "" {
		pcl := *cl
		pcl.addr = *paired
		if *pairedLabel == "" {
			*pairedLabel = "direct (paired with " + *cf.label + ")"
		}
		sets = append(sets, newRRSet(*pairedLabel, &pcl, *conc, *size))
	} else {
		*slice = *dur
	}
	interleave(sets, *dur, *slice)
	var errs []error
	for _, s := range sets {
		fmt.Println(s.row(*conc, *size))
		errs = append(errs, s.errs.result(s.label))
	}
	return errors.Join(errs...)
}

const rrHeader = `| proxy | connections | bytes | round trips | round trips/s | p50 µs | p99 µs | p99.9 µs | errors |
|---|---:|---:|---:|---:|---:|---:|---:|---:|`

// rrSet is the connections of one rr row.
type rrSet struct {
	label   string
	pingers []*pinger
	errs    errorCount
	active  time.Duration // time its connections were doing round trips
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

// interleave gives each set turns of slice, in order, until the first has
// been active for dur; the last turn of each is shortened to dur.
func interleave(sets []*rrSet, dur, slice time.Duration) {
	for sets[0].active < dur {
		for _, s := range sets {
			s.turn(min(slice, dur-s.active))
		}
	}
}

// turn runs the set's round trips, all connections at once, for d.
func (s *rrSet) turn(d time.Duration) {
	if d <= 0 {
		return
	}
	start := time.Now()
	end := start.Add(d)
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
	return fmt.Sprintf("| %s | %d | %d | %d | %.0f | %s | %s | %s | %d |", s.label, conc, size,
		len(lat), rate, micros(percentile(lat, 50)), micros(percentile(lat, 99)), micros(percentile(lat, 99.9)), s.errs.total())
}

func (s *rrSet) close() {
	for _, p := range s.pingers {
		p.c.Close()
	}
}

// pinger is one rr connection: its requests' sequence, its buffers and the
// time of every round trip. A request carries its sequence number, so a
// stale or misrouted echo is a mismatch.
type pinger struct {
	c       conn
	seq     uint64
	out, in []byte
	samples []time.Duration
	failed  bool
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

// run writes requests and reads their echoes until end. It stops at the
// first failure, which it counts, and does nothing after one.
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
