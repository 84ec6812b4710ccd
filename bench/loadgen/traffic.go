package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// runThroughput implements "loadgen throughput": one connection streams
// -mib MiB up (client to backend), then another streams it down.
func runThroughput(args []string) error {
	fs := flag.NewFlagSet("throughput", flag.ContinueOnError)
	cf := newClientFlags(fs)
	mib := fs.Int("mib", 1024, "MiB to stream each way")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	size := int64(*mib) << 20
	up, uerr := streamUp(cl, size)
	down, derr := streamDown(cl, size)
	gbps := func(d time.Duration, err error) string {
		if err != nil {
			return "failed"
		}
		return fmt.Sprintf("%.2f", float64(size)*8/d.Seconds()/1e9)
	}
	fmt.Printf("| %s | %d | %s | %s |\n", *cf.label, *mib, gbps(up, uerr), gbps(down, derr))
	return errors.Join(uerr, derr)
}

const throughputHeader = `| proxy | MiB each way | up Gbit/s | down Gbit/s |
|---|---:|---:|---:|`

// streamUp sends size bytes and returns the time until the sink confirmed
// receiving all of them.
func streamUp(cl *client, size int64) (time.Duration, error) {
	c, err := cl.open()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	start := time.Now()
	if _, err := c.Write([]byte{cmdDiscard}); err != nil {
		return 0, err
	}
	if err := source(c, size); err != nil {
		return 0, fmt.Errorf("streaming up: %w", err)
	}
	if err := c.CloseWrite(); err != nil {
		return 0, err
	}
	var got uint64
	if err := binary.Read(c, binary.BigEndian, &got); err != nil {
		return 0, fmt.Errorf("reading the sink's count: %w", err)
	}
	if int64(got) != size {
		return 0, fmt.Errorf("sink received %d bytes, want %d", got, size)
	}
	return time.Since(start), nil
}

// streamDown asks the sink for size bytes and returns the time to read them.
func streamDown(cl *client, size int64) (time.Duration, error) {
	c, err := cl.open()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	start := time.Now()
	var req [9]byte
	req[0] = cmdSource
	binary.BigEndian.PutUint64(req[1:], uint64(size))
	if _, err := c.Write(req[:]); err != nil {
		return 0, err
	}
	got, err := discard(c)
	if err != nil {
		return 0, fmt.Errorf("streaming down: %w", err)
	}
	if got != size {
		return 0, fmt.Errorf("received %d bytes, want %d", got, size)
	}
	return time.Since(start), nil
}

// runRR implements "loadgen rr": -c connections each doing -size byte
// ping-pongs with the echoing sink for -d.
func runRR(args []string) error {
	fs := flag.NewFlagSet("rr", flag.ContinueOnError)
	cf := newClientFlags(fs)
	conc := fs.Int("c", 50, "concurrent connections")
	dur := fs.Duration("d", 5*time.Second, "duration")
	size := fs.Int("size", 1024, "message size in bytes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	conns, failed, err := cl.openMany(*conc, *conc)
	defer closeAll(conns)
	if failed > 0 {
		return fmt.Errorf("%d of %d connections failed: %v", failed, *conc, err)
	}
	parts := make([][]time.Duration, len(conns))
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(*dur)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetDeadline(end.Add(10 * time.Second))
			if _, err := c.Write([]byte{cmdEcho}); err != nil {
				errs[i] = err
				return
			}
			out, in := make([]byte, *size), make([]byte, *size)
			for time.Now().Before(end) {
				t := time.Now()
				if _, err := c.Write(out); err != nil {
					errs[i] = err
					return
				}
				if _, err := io.ReadFull(c, in); err != nil {
					errs[i] = err
					return
				}
				parts[i] = append(parts[i], time.Since(t))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	lat := latencies(parts)
	fmt.Printf("| %s | %d | %d | %.0f | %d | %d | %d |\n", *cf.label, *conc, *size,
		float64(len(lat))/elapsed.Seconds(),
		percentile(lat, 50).Microseconds(), percentile(lat, 99).Microseconds(), percentile(lat, 99.9).Microseconds())
	return errors.Join(errs...)
}

const rrHeader = `| proxy | connections | bytes | round trips/s | p50 µs | p99 µs | p99.9 µs |
|---|---:|---:|---:|---:|---:|---:|`

// runConnect implements "loadgen connect": -c workers each open a
// connection, send the ClientHello, wait for the backend's byte and close,
// over and over for -d.
func runConnect(args []string) error {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	cf := newClientFlags(fs)
	conc := fs.Int("c", 16, "concurrent workers")
	dur := fs.Duration("d", 5*time.Second, "duration")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	cl.timeout = 5 * time.Second
	parts := make([][]time.Duration, *conc)
	fails := make([]int, *conc)
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(*dur)
	for i := range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				t := time.Now()
				c, err := cl.open()
				if err != nil {
					fails[i]++
					once.Do(func() { firstErr = err })
					time.Sleep(10 * time.Millisecond)
					continue
				}
				c.Close()
				parts[i] = append(parts[i], time.Since(t))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	lat := latencies(parts)
	failed := 0
	for _, f := range fails {
		failed += f
	}
	fmt.Printf("| %s | %d | %.0f | %.2f | %.2f | %.2f | %d |\n", *cf.label, *conc,
		float64(len(lat))/elapsed.Seconds(),
		float64(percentile(lat, 50).Microseconds())/1000, float64(percentile(lat, 99).Microseconds())/1000,
		float64(percentile(lat, 99.9).Microseconds())/1000, failed)
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "connect %s: %d failed, first: %v\n", *cf.label, failed, firstErr)
	}
	return nil
}

const connectHeader = `| proxy | workers | connections/s | p50 ms | p99 ms | p99.9 ms | failed |
|---|---:|---:|---:|---:|---:|---:|`
