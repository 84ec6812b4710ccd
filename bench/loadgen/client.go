package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/ewgate/ewgate/sni"
)

// defaultSNI is the Istio SNI every proxy under test routes to the sink.
var defaultSNI = sni.Key{Host: "echo.demo.svc.cluster.local", Port: 9080}.SNI()

// client opens connections to a proxy as a sidecar would: it sends a
// recorded ClientHello and waits for the sink's ack, which proves that the
// proxy routed the connection to the backend.
type client struct {
	addr    string
	hello   []byte
	timeout time.Duration // bound of dial, hello and ack
	dialer  net.Dialer
}

// clientFlags registers the flags every client mode shares; call init
// after parsing.
type clientFlags struct {
	addr, sni, alpn, label *string
}

func newClientFlags(fs *flag.FlagSet) clientFlags {
	return clientFlags{
		addr:  fs.String("addr", "", "proxy (or sink) `address` to connect to"),
		sni:   fs.String("sni", defaultSNI, "server `name` of the ClientHello"),
		alpn:  fs.String("alpn", "istio", "ALPN `protocol` of the ClientHello"),
		label: fs.String("label", "", "row `label` in the output table (default: addr)"),
	}
}

// client records the ClientHello and returns a client for the flags.
func (f clientFlags) client() (*client, error) {
	if *f.addr == "" {
		return nil, fmt.Errorf("-addr is required")
	}
	if *f.label == "" {
		*f.label = *f.addr
	}
	hello, err := recordHello(*f.sni, []string{*f.alpn})
	if err != nil {
		return nil, err
	}
	return &client{
		addr:    *f.addr,
		hello:   hello,
		timeout: 10 * time.Second,
		// No keepalive probes: they would wake idle connections.
		dialer: net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1},
	}, nil
}

// open dials, sends the ClientHello and reads the sink's ack.
func (cl *client) open() (*net.TCPConn, error) {
	c, err := cl.dialer.Dial("tcp", cl.addr)
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	tc.SetDeadline(time.Now().Add(cl.timeout))
	if _, err := tc.Write(cl.hello); err != nil {
		tc.Close()
		return nil, fmt.Errorf("writing ClientHello: %w", err)
	}
	var ack [1]byte
	if _, err := io.ReadFull(tc, ack[:]); err != nil {
		tc.Close()
		return nil, fmt.Errorf("waiting for the backend's ack (not routed?): %w", err)
	}
	if ack[0] != ackByte {
		tc.Close()
		return nil, fmt.Errorf("backend answered %q, want %q", ack[0], ackByte)
	}
	tc.SetDeadline(time.Time{})
	return tc, nil
}

// openMany opens n connections, at most conc at a time, and returns those
// that the backend acknowledged, how many failed and the first error.
func (cl *client) openMany(n, conc int) (conns []*net.TCPConn, failed int, firstErr error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, conc)
	for range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := cl.open()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	return conns, failed, firstErr
}

// closeAll closes every connection.
func closeAll(conns []*net.TCPConn) {
	for _, c := range conns {
		c.Close()
	}
}

// percentile returns the p-th percentile (0 < p < 100) of sorted samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

// latencies merges per-worker samples into one sorted slice.
func latencies(parts [][]time.Duration) []time.Duration {
	all := slices.Concat(parts...)
	slices.Sort(all)
	return all
}
