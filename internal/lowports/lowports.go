// Package lowports picks loopback ports for a process to bind later, below
// the kernel's ephemeral range (net.ipv4.ip_local_port_range). The kernel
// never gives a port there to a client socket nor to a bind to port 0, so
// no connection any process makes, and no listener on port 0, can take it
// between the pick and the bind, as they can a port that net.Listen on
// port 0 reported free a moment ago. What can still take it is a process
// binding that very number on purpose: users of the package split the
// range (see Range) so that they do not pick each other's ports.
package lowports

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// ErrNoRange is returned by Range when too few ports lie between 10000
// and the ephemeral range (a custom ip_local_port_range that starts low).
var ErrNoRange = errors.New("lowports: fewer than 2,000 ports below the ephemeral range")

// Range returns the ports [lo, hi) from 10000 up to the ephemeral range,
// cut into two halves: half 0 is the lower, half 1 the upper (the
// in-repository users: internal/kubetest takes half 0, ewgate's demo and
// the tests of cmd/ewgate and gateway half 1).
func Range(half int) (lo, hi int, err error) {
	lo, hi = 10000, ephemeralLow()
	if hi-lo < 2000 {
		return 0, 0, ErrNoRange
	}
	mid := lo + (hi-lo)/2
	if half == 0 {
		return lo, mid, nil
	}
	return mid, hi, nil
}

// Pick returns a random port of [lo, hi) that is free now on 127.0.0.1
// for TCP and UDP and that skip does not report (nil: none skipped).
func Pick(lo, hi int, skip func(int) bool) (int, error) {
	for range 100 {
		p := lo + rand.IntN(hi-lo)
		if skip != nil && skip(p) {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return p, nil
	}
	return 0, fmt.Errorf("lowports: no free loopback port in %d-%d after 100 tries", lo, hi-1)
}

// ephemeralLow is the low end of net.ipv4.ip_local_port_range (32768 when
// it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
}
