package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"sync"
	"time"
)

// runThroughput implements "loadgen throughput": -c connections at once
// stream -mib MiB up (client to backend) in all, then -c others stream it
// down.
func runThroughput(args []string) error {
	fs := flag.NewFlagSet("throughput", flag.ContinueOnError)
	cf := newClientFlags(fs)
	mib := fs.Int("mib", 1024, "MiB to stream each way, in all")
	conc := fs.Int("c", 1, "connections streaming at once, each -mib/-c MiB")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *conc < 1 || *mib < *conc {
		return fmt.Errorf("need 1 <= -c <= -mib")
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	per := (int64(*mib) << 20) / int64(*conc)
	var errs errorCount
	up := parallel(*conc, func() { streamUp(cl, per, &errs) })
	failedUp := errs.total()
	down := parallel(*conc, func() { streamDown(cl, per, &errs) })
	gbps := func(d time.Duration, failed bool) string {
		if failed {
			return "failed"
		}
		return fmt.Sprintf("%.2f", float64(per)*float64(*conc)*8/d.Seconds()/1e9)
	}
	// The columns paths.sh prints under its own header come first.
	fmt.Printf("| %s | %d | %s | %s | %d | %d |\n", *cf.label, *mib,
		gbps(up, failedUp > 0), gbps(down, errs.total() > failedUp), *conc, errs.total())
	return errs.result(*cf.label)
}

const throughputHeader = `| proxy | MiB each way | up Gbit/s | down Gbit/s | connections | errors |
|---|---:|---:|---:|---:|---:|`

// parallel runs f n times at once and returns the time until all ended.
func parallel(n int, f func()) time.Duration {
	var wg sync.WaitGroup
	start := time.Now()
	for range n {
		wg.Go(func() {
			f()
		})
	}
	wg.Wait()
	return time.Since(start)
}

// streamUp sends size bytes and checks that the sink received all of them.
func streamUp(cl *client, size int64, errs *errorCount) {
	c, err := cl.open()
	if err != nil {
		errs.add(errConnect, err)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if kind, err := sendUp(c, c.CloseWrite, size); err != nil {
		errs.add(kind, err)
	}
}

// streamDown asks the sink for size bytes and checks that all arrived.
func streamDown(cl *client, size int64, errs *errorCount) {
	c, err := cl.open()
	if err != nil {
		errs.add(errConnect, err)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	// The write side stays open: a proxy need not see a half-close
	// before the download.
	if kind, err := receiveDown(c, nil, size); err != nil {
		errs.add(kind, err)
	}
}

// sendUp is the client's side of cmdDiscard on s: it streams size bytes,
// closes s's write side with closeWrite and checks the sink's count. A
// failure comes with its kind.
func sendUp(s io.ReadWriter, closeWrite func() error, size int64) (errKind, error) {
	if _, err := s.Write([]byte{cmdDiscard}); err != nil {
		return errWrite, err
	}
	if err := source(s, size); err != nil {
		return errWrite, fmt.Errorf("streaming up: %w", err)
	}
	if err := closeWrite(); err != nil {
		return errWrite, err
	}
	var got uint64
	if err := binary.Read(s, binary.BigEndian, &got); err != nil {
		return errRead, fmt.Errorf("reading the sink's count: %w", err)
	}
	if int64(got) != size {
		return errMismatch, fmt.Errorf("sink received %d bytes, want %d", got, size)
	}
	return 0, nil
}

// receiveDown is the client's side of cmdSource on s: it asks for size
// bytes, closes s's write side with closeWrite unless that is nil, and
// reads them to EOF. A failure comes with its kind.
func receiveDown(s io.ReadWriter, closeWrite func() error, size int64) (errKind, error) {
	var req [9]byte
	req[0] = cmdSource
	binary.BigEndian.PutUint64(req[1:], uint64(size))
	if _, err := s.Write(req[:]); err != nil {
		return errWrite, err
	}
	if closeWrite != nil {
		if err := closeWrite(); err != nil {
			return errWrite, err
		}
	}
	got, err := discard(s)
	switch {
	case err != nil:
		return errRead, fmt.Errorf("streaming down: %w", err)
	case got != size:
		return errMismatch, fmt.Errorf("received %d bytes, want %d", got, size)
	}
	return 0, nil
}

// runConnect implements "loadgen connect": -c workers each open a
// connection (ClientHello and the backend's byte, or with -tls-svid a full
// TLS handshake and the byte), and close it, over and over for -d.
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
	var errs errorCount
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(*dur)
	for i := range *conc {
		wg.Go(func() {
			for time.Now().Before(end) {
				t := time.Now()
				c, err := cl.open()
				if err != nil {
					errs.add(errConnect, err)
					time.Sleep(10 * time.Millisecond) // no busy loop on a refusing proxy
					continue
				}
				c.Close()
				parts[i] = append(parts[i], time.Since(t))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	lat := latencies(parts)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/1e6) }
	fmt.Printf("| %s | %d | %d | %.0f | %s | %s | %s | %d |\n", *cf.label, *conc,
		len(lat), float64(len(lat))/elapsed.Seconds(),
		ms(percentile(lat, 50)), ms(percentile(lat, 99)), ms(percentile(lat, 99.9)), errs.total())
	return errs.result(*cf.label)
}

const connectHeader = `| proxy | workers | connections | connections/s | p50 ms | p99 ms | p99.9 ms | errors |
|---|---:|---:|---:|---:|---:|---:|---:|`
