package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/workload"
)

// policyYAML is echoYAML with policy (YAML at the indentation of a
// trafficPolicy's fields, one per line) as the DestinationRule's
// trafficPolicy.
func policyYAML(port int, policy string, backends ...*workload.EchoServer) string {
	var tp strings.Builder
	tp.WriteString("  trafficPolicy:\n")
	for _, l := range strings.Split(strings.TrimSpace(policy), "\n") {
		tp.WriteString("    " + l + "\n")
	}
	return strings.Replace(echoYAML(port, backends...), "  subsets:\n", tp.String()+"  subsets:\n", 1)
}

// fakeClock is a gateway's ejection clock that moves only when told, so
// that ejection lengths are asserted exactly and never waited for.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := new(fakeClock)
	c.ns.Store(time.Now().UnixNano())
	return c
}

func (c *fakeClock) now() int64          { return c.ns.Load() }
func (c *fakeClock) add(d time.Duration) { c.ns.Add(int64(d)) }

// upstreamOf returns the gateway's state of the endpoint at addr.
func upstreamOf(t *testing.T, g *Gateway, addr string) *upstream {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	u := g.upstreams[addr]
	if u == nil {
		t.Fatalf("no endpoint %s", addr)
	}
	return u
}

// refusedWith dials through m and fails the test unless the gateway g
// refuses the connection with reason, answering with the TLS alert.
func refusedWith(t *testing.T, m *mesh, g *Gateway, reason, alert string) {
	t.Helper()
	before := g.m.Rejected(reason)
	c, err := m.dial(echoSNI, "istio")
	if err == nil {
		c.Close()
		t.Fatalf("connection forwarded; want refusal %s", reason)
	}
	if !strings.Contains(err.Error(), alert) {
		t.Fatalf("client error %q, want TLS alert %q", err, alert)
	}
	await.True(t, 5*time.Second, "reject counter "+reason, func() bool { return g.m.Rejected(reason) == before+1 })
}

func TestRouteMaxConnections(t *testing.T) {
	forPaths(t, func(t *testing.T, m *mesh) {
		b := m.backend("v1")
		yaml := policyYAML(freePort(t), "connectionPool: {tcp: {maxConnections: 2}}", b)
		m.start(yaml)
		var open []*workload.Conn
		defer func() {
			for _, c := range open {
				c.Close()
			}
		}()
		for range 2 {
			c := m.mustDial(t, echoSNI, "istio")
			open = append(open, c)
		}
		// A reload keeps the count, as it keeps endpoints' state: the
		// open connections still hold the route's two slots.
		m.apply(yaml)
		refusedWith(t, m, m.last(), RejectRouteOverLimit, "internal error")
		if n := b.Accepted(); n != 2 {
			t.Fatalf("backend accepted %d connections, want 2: a refusal over the cap must not dial", n)
		}
		for _, r := range m.last().Debug().Routes {
			if r.SNI == echoSNI && (r.Active != 2 || r.MaxConnections != 2) {
				t.Fatalf("/debug/config route: active %d of %d, want 2 of 2", r.Active, r.MaxConnections)
			}
		}
		// Closing one frees its slot.
		open[0].Close()
		await.True(t, 10*time.Second, "a connection after one closed", func() bool {
			c, err := m.dial(echoSNI, "istio")
			if err != nil {
				return false
			}
			open[0] = c
			return true
		})
		refusedWith(t, m, m.last(), RejectRouteOverLimit, "internal error")
		// The open connections still work.
		for _, c := range open {
			if err := c.Exchange(4 << 10); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// blackHole returns the address of a listener whose accept queue is full:
// the kernel drops further SYNs, so a connect to it hangs until its
// timeout.
func blackHole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	// Backlog 0 queues one connection; it fills the queue.
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return addr
}

// withAddress is yaml with backend b's endpoint port replaced by addr's.
func withAddress(yaml string, b *workload.EchoServer, addr string) string {
	_, from, _ := net.SplitHostPort(b.Addr())
	_, to, _ := net.SplitHostPort(addr)
	return strings.Replace(yaml, "tcp-echo: "+from+"}", "tcp-echo: "+to+"}", 1)
}

// A route's connectTimeout bounds its connects where the gateway's own
// timeout (an hour here) would keep the client waiting past its own
// deadline.
func TestRouteConnectTimeout(t *testing.T) {
	m := newMesh(t)
	b := m.backend("v1")
	m.cfg.DialTimeout = time.Hour
	m.cfg.DialAttempts = 1
	m.start(withAddress(policyYAML(freePort(t), "connectionPool: {tcp: {connectTimeout: 0.05s}}", b), b, blackHole(t)))
	refusedWith(t, m, m.gw, RejectUnavailable, "internal error")
	if n := m.gw.m.ConnectErrors.Value(); n != 1 {
		t.Fatalf("%d connect errors, want 1", n)
	}
}

// upstreamSocket returns the gateway's socket to the endpoint of its one
// open flow.
func upstreamSocket(t *testing.T, g *Gateway) *net.TCPConn {
	t.Helper()
	var up *net.TCPConn
	await.True(t, 5*time.Second, "a forwarded flow", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		for f := range g.flows {
			if f.up.tcp != nil {
				up = f.up.tcp
			}
		}
		return up != nil
	})
	return up
}

func TestRouteKeepalive(t *testing.T) {
	sysIdle, err := os.ReadFile("/proc/sys/net/ipv4/tcp_keepalive_time")
	if err != nil {
		t.Skip(err)
	}
	tests := []struct {
		name             string
		policy           string
		on               int    // SO_KEEPALIVE
		idle, intvl, cnt string // "" is the system's
	}{
		{"all set", "connectionPool: {tcp: {tcpKeepalive: {time: 7s, interval: 3s, probes: 4}}}", 1, "7", "3", "4"},
		{"none set keeps the system's", "connectionPool: {tcp: {tcpKeepalive: {}}}", 1, strings.TrimSpace(string(sysIdle)), "", ""},
		// Without tcpKeepalive none, as Envoy: not Go's default of 15 s.
		{"no tcpKeepalive: none", "connectionPool: {tcp: {maxConnections: 10}}", 0, strings.TrimSpace(string(sysIdle)), "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMesh(t)
			b := m.backend("v1")
			m.start(policyYAML(freePort(t), tt.policy, b))
			m.mustDial(t, echoSNI, "istio")
			got := sockopts(t, upstreamSocket(t, m.gw),
				[2]int{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE}, [2]int{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE},
				[2]int{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL}, [2]int{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT})
			on, idle, intvl, cnt := got[0], got[1], got[2], got[3]
			if on != tt.on || strconv.Itoa(idle) != tt.idle || (tt.intvl != "" && strconv.Itoa(intvl) != tt.intvl) || (tt.cnt != "" && strconv.Itoa(cnt) != tt.cnt) {
				t.Fatalf("upstream socket SO_KEEPALIVE %d, TCP_KEEPIDLE %d, TCP_KEEPINTVL %d, TCP_KEEPCNT %d; want %d, %s, %s, %s", on, idle, intvl, cnt, tt.on, tt.idle, tt.intvl, tt.cnt)
			}
		})
	}
}

// awaitClosed reads c until the gateway closes it, failing on a timeout.
func awaitClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [512]byte
	for {
		_, err := c.Read(b[:])
		if err == nil {
			continue
		}
		if isTimeout(err) {
			t.Fatal("connection still open")
		}
		return
	}
}

func TestRouteIdleTimeoutAndMaxDuration(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		talk   bool // keep bytes moving, so that only the age can close it
		want   func(*Metrics) uint64
		other  func(*Metrics) uint64
	}{
		{"idleTimeout", "connectionPool: {tcp: {idleTimeout: 0.1s}}", false,
			func(m *Metrics) uint64 { return m.IdleClosed.Value() }, func(m *Metrics) uint64 { return m.DurationClosed.Value() }},
		{"maxConnectionDuration", "connectionPool: {tcp: {maxConnectionDuration: 0.3s}}", true,
			func(m *Metrics) uint64 { return m.DurationClosed.Value() }, func(m *Metrics) uint64 { return m.IdleClosed.Value() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forPaths(t, func(t *testing.T, m *mesh) {
				b := m.backend("v1")
				m.cfg.IdleTimeout = time.Hour
				m.start(policyYAML(freePort(t), tt.policy, b))
				c := m.mustDial(t, echoSNI, "istio")
				if tt.talk {
					go func() {
						for {
							if _, err := c.Write([]byte("x\n")); err != nil {
								return
							}
							time.Sleep(10 * time.Millisecond) // traffic, not synchronisation
						}
					}()
				}
				awaitClosed(t, c)
				g := m.last()
				await.True(t, 5*time.Second, "closed counted", func() bool { return tt.want(g.m) == 1 })
				if n := tt.other(g.m); n != 0 {
					t.Fatalf("counted under the other cause too (%d)", n)
				}
			})
		})
	}
}

// outlierCluster is a cluster of n endpoints under outlier policy o, of a
// gateway with clock c.
func outlierCluster(t *testing.T, n int, o discovery.Outlier, c *fakeClock) (*Gateway, *cluster) {
	g := New(Config{})
	g.now = c.now
	r := &discovery.Route{Policy: discovery.Policy{Outlier: &o}}
	cl := &cluster{route: r}
	for i := range n {
		cl.add(&upstream{addr: "192.0.2.1:" + strconv.Itoa(80+i)}, 1)
	}
	g.applyPolicy(cl, &r.Policy, new(routeState))
	return g, cl
}

var errRefused = &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}

func TestOutlierEjectionGrowsAndIsForgiven(t *testing.T) {
	clock := newFakeClock()
	g, cl := outlierCluster(t, 2, discovery.Outlier{ConsecutiveErrors: 2, Interval: 10 * time.Second,
		BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 100}, clock)
	u := cl.members[0]
	fail := func(times int) {
		for range times {
			g.result(cl, u, errRefused)
		}
	}
	fail(1)
	if u.ejected(clock.now()) {
		t.Fatal("ejected after 1 failure of 2")
	}
	steps := []struct {
		name     string
		wait     time.Duration // admitted this long before the failures
		ejection time.Duration
	}{
		{"first", 0, 30 * time.Second},
		{"second in a row", 0, 60 * time.Second},
		{"third in a row", 9 * time.Second, 90 * time.Second},
		{"after one interval admitted", 10 * time.Second, 90 * time.Second},
		{"after two intervals admitted", 25 * time.Second, 60 * time.Second},
		{"after many", time.Hour, 30 * time.Second},
	}
	for i, s := range steps {
		clock.add(s.wait)
		n := 2
		if i == 0 {
			n = 1 // one failure already counted
		}
		fail(n)
		if got := time.Duration(u.ejectedUntil.Load() - clock.now()); got != s.ejection {
			t.Fatalf("%s ejection lasts %v, want %v", s.name, got, s.ejection)
		}
		if got := g.m.Ejections.Value(); got != uint64(i+1) {
			t.Fatalf("after %s ejection %d counted, want %d", s.name, got, i+1)
		}
		// Failures while ejected do not extend it; the ejection ends on
		// time, and the endpoint is picked again.
		fail(4)
		clock.add(s.ejection - 1)
		if !u.ejected(clock.now()) {
			t.Fatalf("%s ejection ended early", s.name)
		}
		clock.add(1)
		if u.ejected(clock.now()) {
			t.Fatalf("%s ejection did not end", s.name)
		}
		seen := false
		for range 50 {
			seen = seen || cl.pick(nil, clock.now(), 0) == 0
		}
		if !seen {
			t.Fatalf("after the %s ejection ended, the endpoint is never picked", s.name)
		}
	}
}

func TestOutlierMaxEjectionPercent(t *testing.T) {
	tests := []struct {
		members, percent, want int
	}{
		{4, 10, 1}, // Envoy ejects one regardless
		{4, 50, 2},
		{4, 100, 4},
		{10, 30, 3},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.percent)+"% of "+strconv.Itoa(tt.members), func(t *testing.T) {
			clock := newFakeClock()
			g, cl := outlierCluster(t, tt.members, discovery.Outlier{ConsecutiveErrors: 1, Interval: time.Second,
				BaseEjectionTime: time.Minute, MaxEjectionPercent: int32(tt.percent)}, clock)
			for _, u := range cl.members {
				g.result(cl, u, errRefused)
			}
			ejected := 0
			for _, u := range cl.members {
				if u.ejected(clock.now()) {
					ejected++
				}
			}
			if ejected != tt.want {
				t.Fatalf("%d ejected, want %d", ejected, tt.want)
			}
			if got := g.m.EjectionsOverMax.Value(); got != uint64(tt.members-tt.want) {
				t.Fatalf("%d ejections over the cap counted, want %d", got, tt.members-tt.want)
			}
		})
	}
}

func TestOutlierPanicThreshold(t *testing.T) {
	tests := []struct {
		name       string
		minHealth  int32
		wantPicked bool
	}{
		{"minHealthPercent 0: ejections always hold", 0, false},
		{"below minHealthPercent: ejections ignored", 60, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			g, cl := outlierCluster(t, 2, discovery.Outlier{ConsecutiveErrors: 1, Interval: time.Second,
				BaseEjectionTime: time.Minute, MaxEjectionPercent: 100, MinHealthPercent: tt.minHealth}, clock)
			g.result(cl, cl.members[0], errRefused)
			// One of two admitted: 50%.
			picked := false
			for range 50 {
				picked = picked || cl.pick(nil, clock.now(), 0) == 0
			}
			if picked != tt.wantPicked {
				t.Fatalf("ejected endpoint picked: %v, want %v", picked, tt.wantPicked)
			}
			g.result(cl, cl.members[1], errRefused)
			i := cl.pick(nil, clock.now(), 0)
			if (i >= 0) != tt.wantPicked {
				t.Fatalf("with every endpoint ejected, pick = %d", i)
			}
		})
	}
	// The built-in rule, without outlierDetection, tries ejected
	// endpoints when all are ejected.
	cl := &cluster{}
	cl.add(&upstream{addr: "a"}, 1)
	cl.members[0].ejectedUntil.Store(time.Now().Add(time.Hour).UnixNano())
	if cl.pick(nil, time.Now().UnixNano(), 0) != 0 {
		t.Fatal("built-in rule: the only endpoint, ejected, not tried")
	}
}

// A failed probe extends an outlier ejection by its own length, not the
// built-in EjectFor; one that connects readmits it.
func TestProbeFollowsOutlierEjection(t *testing.T) {
	clock := newFakeClock()
	g, cl := outlierCluster(t, 2, discovery.Outlier{ConsecutiveErrors: 1, Interval: time.Second,
		BaseEjectionTime: 7 * time.Minute, MaxEjectionPercent: 100}, clock)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := cl.members[0]
	u.addr = ln.Addr().String()
	ln.Close() // refuses now
	g.result(cl, u, errRefused)
	clock.add(time.Minute)
	g.probeOne(context.Background(), u)
	if got := time.Duration(u.ejectedUntil.Load() - clock.now()); got != 7*time.Minute {
		t.Fatalf("failed probe extended the ejection to %v from now, want the ejection's 7m", got)
	}
	back, err := net.Listen("tcp", u.addr)
	if err != nil {
		t.Skipf("port taken meanwhile: %v", err)
	}
	defer back.Close()
	g.probeOne(context.Background(), u)
	if u.ejected(clock.now()) {
		t.Fatal("a probe that connected did not readmit the endpoint")
	}
}

// End to end: a route's outlier policy ejects an endpoint that refuses
// (the built-in rule would not, at EjectAfter 100), for baseEjectionTime;
// back up, it stays ejected until that ends, then takes connections.
func TestOutlierEjectsAndReadmits(t *testing.T) {
	m := newMesh(t)
	live, flaky := m.backend("v1"), m.backend("v2")
	addr := flaky.Addr()
	flaky.Close()
	clock := newFakeClock()
	m.setup = func(g *Gateway) { g.now = clock.now }
	m.cfg.EjectAfter = 100
	m.start(policyYAML(freePort(t), "outlierDetection: {consecutiveGatewayErrors: 1, baseEjectionTime: 3600s, maxEjectionPercent: 100}", live, flaky))
	await.True(t, 10*time.Second, "endpoint ejected", func() bool {
		c, err := m.dial(echoSNI, "istio")
		if err != nil {
			t.Fatalf("a connection failed although a live endpoint exists: %v", err)
		}
		c.Close()
		return !m.gw.Healthy(addr)
	})
	if got := time.Duration(upstreamOf(t, m.gw, addr).ejectedUntil.Load() - clock.now()); got != time.Hour {
		t.Fatalf("ejected for %v, want baseEjectionTime 1h", got)
	}
	back, err := workload.NewEchoServer("v2", addr, m.source("spiffe://cluster.local/ns/demo/sa/v2"), nil)
	if err != nil {
		t.Skipf("the endpoint's port was taken meanwhile: %v", err)
	}
	defer back.Close()
	for range 10 {
		c := m.mustDial(t, echoSNI, "istio")
		c.Close()
		if c.Server != "v1" {
			t.Fatalf("ejected endpoint got a connection")
		}
	}
	clock.add(time.Hour)
	await.True(t, 10*time.Second, "readmitted endpoint takes connections", func() bool {
		c := m.mustDial(t, echoSNI, "istio")
		c.Close()
		return c.Server == "v2"
	})
}

func TestRoundRobin(t *testing.T) {
	t.Run("weighted", func(t *testing.T) {
		cl := &cluster{}
		for i, w := range []uint64{1 << 20, 3 << 20, 2 << 20} {
			cl.add(&upstream{addr: strconv.Itoa(i)}, w)
		}
		p := &discovery.Policy{LoadBalancer: discovery.LoadBalancer{Simple: "ROUND_ROBIN"}}
		New(Config{}).applyPolicy(cl, p, new(routeState))
		var got []string
		for range 12 {
			got = append(got, cl.members[cl.pick(nil, 0, 0)].addr)
		}
		// Weights 1:3:2, interleaved: not a million turns of one in a
		// row.
		if s := strings.Join(got, ""); s != "012121012121" {
			t.Fatalf("order %s, want 012121012121", s)
		}
		// A member tried is skipped, to the next in turn.
		if i := cl.pick([]int{0}, 0, 0); i != 1 {
			t.Fatalf("with 0 tried, picked %d, want 1", i)
		}
	})
	t.Run("through the gateway", func(t *testing.T) {
		m := newMesh(t)
		bs := []*workload.EchoServer{m.backend("v1"), m.backend("v2"), m.backend("v3")}
		m.start(policyYAML(freePort(t), "loadBalancer: {simple: ROUND_ROBIN}", bs...))
		var got []string
		for range 6 {
			c := m.mustDial(t, echoSNI, "istio")
			c.Close()
			got = append(got, c.Server)
		}
		if got[0] == got[1] || got[1] == got[2] || got[0] == got[2] || got[0] != got[3] || got[1] != got[4] || got[2] != got[5] {
			t.Fatalf("connections went to %v, want each endpoint in turn", got)
		}
	})
}

// dialFrom connects a client from the loopback address src through m's
// gateway and returns the backend's name.
func dialFrom(t *testing.T, m *mesh, src string) string {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := d.DialContext(ctx, "tcp", m.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	cfg := identity.ClientTLSConfig(m.source("spiffe://cluster.local/ns/demo/sa/client"), nil)
	cfg.ServerName, cfg.NextProtos = echoSNI, []string{"istio"}
	c := tls.Client(raw, cfg)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("from %s: %v", src, err)
	}
	name, _, _ := strings.Cut(line, " ")
	return name
}

func TestHashSourceIP(t *testing.T) {
	t.Run("retries take the next choice", func(t *testing.T) {
		cl := &cluster{policy: &discovery.Policy{LoadBalancer: discovery.LoadBalancer{HashSourceIP: true}}, state: new(routeState)}
		for i := range 5 {
			cl.add(&upstream{addr: "10.0.0." + strconv.Itoa(i) + ":80"}, 1)
		}
		New(Config{}).applyPolicy(cl, cl.policy, cl.state)
		src := sourceHash(netip.MustParseAddr("10.1.2.3"))
		first := cl.pick(nil, 0, src)
		if other := cl.pick(nil, 0, sourceHash(addrIP(&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 2}))); other != first {
			t.Fatalf("the client's port changed the choice: %d, %d", first, other)
		}
		second := cl.pick([]int{first}, 0, src)
		if second < 0 || second == first {
			t.Fatalf("retry picked %d after %d", second, first)
		}
		// The first choice ejected: new connections go to the second.
		cl.members[first].ejectedUntil.Store(1)
		if i := cl.pick(nil, 0, src); i != second {
			t.Fatalf("with the first choice ejected, picked %d, want the second, %d", i, second)
		}
	})
	forPaths(t, func(t *testing.T, m *mesh) {
		bs := []*workload.EchoServer{m.backend("v1"), m.backend("v2"), m.backend("v3"), m.backend("v4")}
		m.start(policyYAML(freePort(t), "loadBalancer: {consistentHash: {useSourceIp: true}}", bs...))
		used := map[string]bool{}
		for i := 2; i < 10; i++ {
			src := "127.0.0." + strconv.Itoa(i)
			want := dialFrom(t, m, src)
			used[want] = true
			for range 4 {
				if got := dialFrom(t, m, src); got != want {
					t.Fatalf("source %s went to %s, then %s", src, want, got)
				}
			}
		}
		// Eight sources over four endpoints: all on one would mean the
		// source is not hashed (odds 4^-7).
		if len(used) < 2 {
			t.Fatalf("every source went to %v", used)
		}
	})
}

func TestRoundRobinCycle(t *testing.T) {
	tests := []struct {
		weights []uint64
		want    int // cycle length
	}{
		{[]uint64{1, 1, 1}, 3},
		{[]uint64{100, 200}, 3},
		{[]uint64{1 << 30, 1}, maxCycle}, // scaled, the light one keeps a turn
		{[]uint64{1 << 52, 1 << 52, 1}, maxCycle + 1},
	}
	for _, tt := range tests {
		c := roundRobinCycle(tt.weights)
		if len(c) != tt.want {
			t.Errorf("%v: cycle of %d, want %d", tt.weights, len(c), tt.want)
		}
		for i := range tt.weights {
			if !slices.Contains(c, uint32(i)) {
				t.Errorf("%v: member %d has no turn", tt.weights, i)
			}
		}
	}
}
