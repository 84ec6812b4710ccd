package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"
)

// runIdle implements "loadgen idle": the memory and file descriptors a
// proxy spends on each idle proxied connection.
func runIdle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	cf := newClientFlags(fs)
	pid := fs.Int("pid", 0, "`PID` of the proxy (its descendants are counted too)")
	n := fs.Int("n", 1000, "idle connections to hold")
	warmup := fs.Int("warmup", 100, "connections opened and closed before the baseline")
	conc := fs.Int("concurrency", 64, "connections being opened at once")
	settle := fs.Duration("settle", 2*time.Second, "wait before each sample")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *pid <= 0 {
		return fmt.Errorf("-pid is required")
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	start, err := sampleUsage(*pid)
	if err != nil {
		return err
	}

	// Warm up, so that allocator and runtime growth that any first
	// connections cause stays out of the per-connection memory figures.
	// File descriptors are counted from the fresh process instead: a Go
	// proxy keeps the splice pipes of closed connections in a pool, which
	// new connections reuse, so a baseline after warm-up would hide them.
	var warmErrs errorCount
	closeAll(cl.openMany(*warmup, *conc, &warmErrs))
	if warmErrs.total() > 0 {
		return fmt.Errorf("warm-up: %d of %d connections failed: %v", warmErrs.total(), *warmup, &warmErrs)
	}
	waitFds(*pid, start.fds, 3*time.Second)
	time.Sleep(*settle)
	base, err := sampleUsage(*pid)
	if err != nil {
		return err
	}

	var errs errorCount
	began := time.Now()
	conns := cl.openMany(*n, *conc, &errs)
	opened := time.Since(began)
	defer func() {
		closeAll(conns)
		waitFds(*pid, start.fds, 3*time.Second)
	}()
	time.Sleep(*settle)
	with, err := sampleUsage(*pid)
	if err != nil {
		return err
	}
	// Every connection must still be open after the sample: a proxy that
	// shed some would look cheaper than it is.
	checkOpen(conns, 100*time.Millisecond, &errs)
	ok := len(conns)
	per := func(d int64) string {
		if ok == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f", float64(d)/float64(ok))
	}
	fmt.Printf("| %s | %d | %d | %s | %s | %s | %s | %s | %.1f | %.1f | %d |\n",
		*cf.label, *n, ok,
		per(with.rssKiB-base.rssKiB), per(with.pssKiB-base.pssKiB), per(with.privKiB-base.privKiB),
		per(int64(with.fds-start.fds)), per(with.slabKiB-base.slabKiB),
		float64(with.rssKiB)/1024, opened.Seconds(), errs.total())
	return errs.result(*cf.label)
}

// idleHeader is the table header of runIdle's rows.
const idleHeader = `| proxy | N | routed | RSS KiB/conn | Pss KiB/conn | Private KiB/conn | fds/conn | kernel Slab KiB/conn (system-wide) | proxy RSS MiB at N | open time s | errors |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|`

// checkOpen reads from every connection for wait, all at once, and counts
// as errClosed each one that ended or delivered bytes instead of timing
// out: an idle connection's backend sends nothing.
func checkOpen(conns []conn, wait time.Duration, errs *errorCount) {
	var wg sync.WaitGroup
	deadline := time.Now().Add(wait)
	for _, c := range conns {
		wg.Go(func() {
			c.SetReadDeadline(deadline)
			var b [1]byte
			n, err := c.Read(b[:])
			switch {
			case n > 0:
				errs.add(errClosed, fmt.Errorf("idle connection received %q", b[0]))
			case !errors.Is(err, os.ErrDeadlineExceeded):
				errs.add(errClosed, fmt.Errorf("idle connection ended: %w", err))
			}
			c.SetReadDeadline(time.Time{})
		})
	}
	wg.Wait()
}

// waitFds waits, at most max, until the proxy holds at most fds descriptors.
func waitFds(pid, fds int, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		u, err := sampleUsage(pid)
		if err != nil || u.fds <= fds {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
