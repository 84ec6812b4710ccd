package gateway

import (
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/discovery"
)

func TestResultEjectsOnlyForEndpointErrors(t *testing.T) {
	dialErr := func(errno syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}
	}
	tests := []struct {
		name  string
		err   error
		eject bool
	}{
		{"refused", dialErr(syscall.ECONNREFUSED), true},
		{"unreachable", dialErr(syscall.EHOSTUNREACH), true},
		{"timeout", fmt.Errorf("dial: %w", os.ErrDeadlineExceeded), true},
		{"out of fds", &net.OpError{Op: "dial", Err: os.NewSyscallError("socket", syscall.EMFILE)}, false},
		{"out of ephemeral ports", dialErr(syscall.EADDRNOTAVAIL), false},
		{"out of buffers", dialErr(syscall.ENOBUFS), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := New(Config{EjectAfter: 2, EjectFor: time.Minute})
			u := &upstream{addr: "192.0.2.1:80"}
			for range 3 {
				g.result(&cluster{}, u, tt.err)
			}
			if got := u.ejected(time.Now().UnixNano()); got != tt.eject {
				t.Fatalf("ejected = %v after 3 %v errors, want %v", got, tt.err, tt.eject)
			}
			g.result(&cluster{}, u, nil)
			if u.failures.Load() != 0 {
				t.Fatal("a success must clear the failure streak")
			}
		})
	}
}

func TestPickSpreadsByWeightAndSkipsEjected(t *testing.T) {
	cl := &cluster{}
	a, b, c := &upstream{addr: "a"}, &upstream{addr: "b"}, &upstream{addr: "c"}
	cl.add(a, 1)
	cl.add(b, 3)
	cl.add(c, 1)
	now := time.Now().UnixNano()
	c.ejectedUntil.Store(now + int64(time.Minute))
	counts := map[string]int{}
	for range 4000 {
		i := cl.pick(nil, now, 0)
		u := cl.members[i]
		counts[u.addr]++
		u.active.Add(1) // connections stay open: load must follow weight
	}
	if counts["c"] != 0 {
		t.Errorf("ejected endpoint picked %d times", counts["c"])
	}
	// With every connection left open, least-loaded-per-weight keeps
	// active counts proportional to weights: b gets about 3x a.
	if r := float64(counts["b"]) / float64(counts["a"]); r < 2.5 || r > 3.5 {
		t.Errorf("b/a = %.2f (%v), want about 3", r, counts)
	}
	// Excluding tried members, and falling back to ejected ones last.
	if i := cl.pick([]int{0, 1}, now, 0); i != 2 {
		t.Errorf("with a and b tried, picked %d, want the ejected c as a last resort", i)
	}
	if i := cl.pick([]int{0, 1, 2}, now, 0); i != -1 {
		t.Errorf("with all tried, picked %d, want -1", i)
	}
}

// Picking allocates nothing, whatever the route's load balancer: it runs
// once or more per connection.
func TestPickAllocatesNothing(t *testing.T) {
	outlier := &discovery.Outlier{ConsecutiveErrors: 1, MinHealthPercent: 50, MaxEjectionPercent: 100}
	policies := map[string]*discovery.Policy{
		"built-in":       nil,
		"ROUND_ROBIN":    {LoadBalancer: discovery.LoadBalancer{Simple: "ROUND_ROBIN"}},
		"RANDOM":         {LoadBalancer: discovery.LoadBalancer{Simple: "RANDOM"}},
		"useSourceIp":    {LoadBalancer: discovery.LoadBalancer{HashSourceIP: true}},
		"outlier":        {Outlier: outlier},
		"locality ranks": {Outlier: outlier},
	}
	for name, p := range policies {
		t.Run(name, func(t *testing.T) {
			cl := &cluster{}
			for i := range 4 {
				cl.add(&upstream{addr: "10.0.0." + strconv.Itoa(i) + ":80"}, 1)
			}
			if p != nil {
				New(Config{}).applyPolicy(cl, p, new(routeState))
			}
			if name == "locality ranks" {
				cl.prio, cl.levels = []uint8{0, 0, 1, 2}, 3
			}
			cl.members[0].ejectedUntil.Store(math.MaxInt64)
			tried := make([]int, 0, 4)
			if n := testing.AllocsPerRun(100, func() {
				tried = append(tried[:0], cl.pick(tried[:0], 1, 12345))
				cl.pick(tried, 1, 12345)
			}); n != 0 {
				t.Fatalf("%v allocations per pick", n)
			}
		})
	}
}
