package peer

import (
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Tuning of the reconnect loop that needs no configuration.
const (
	// reconnectFanout is how many remembered failed members one reconnect
	// round tries (at random, concurrently). One success is enough: the
	// push/pull of a join carries each side's whole view to the other.
	reconnectFanout = 3
	// maxReconnectMembers bounds the failed members remembered; the one
	// that failed first is forgotten to make room.
	maxReconnectMembers = 256
)

// failedMember is a member that failed (was declared dead without saying
// goodbye) and is retried by the reconnect loop.
type failedMember struct {
	addr  netip.AddrPort
	since time.Time // when it was declared dead
}

// reconnectSet remembers failed members and their gossip addresses for
// the reconnect loop. It is not safe for concurrent use (Node guards it
// with n.mu).
type reconnectSet struct {
	max     int
	members map[string]failedMember
}

func newReconnectSet(max int) *reconnectSet {
	return &reconnectSet{max: max, members: make(map[string]failedMember)}
}

// failed records that name, gossiping at addr, was declared dead at now.
// When the set is full, the member that failed first is forgotten.
func (s *reconnectSet) failed(name string, addr netip.AddrPort, now time.Time) {
	if !addr.IsValid() {
		return
	}
	if _, ok := s.members[name]; !ok && len(s.members) >= s.max {
		oldest := ""
		for n, m := range s.members {
			if oldest == "" || m.since.Before(s.members[oldest].since) ||
				(m.since.Equal(s.members[oldest].since) && n < oldest) {
				oldest = n
			}
		}
		delete(s.members, oldest)
	}
	s.members[name] = failedMember{addr: addr, since: now}
}

// alive records that name is alive at addr: it needs no reconnecting, and
// neither does a failed member whose address it now holds (a node that
// restarted under another name).
func (s *reconnectSet) alive(name string, addr netip.AddrPort) {
	delete(s.members, name)
	for n, m := range s.members {
		if m.addr == addr {
			delete(s.members, n)
		}
	}
}

// left forgets name: it left gracefully and will not be back by itself.
func (s *reconnectSet) left(name string) { delete(s.members, name) }

// expire forgets the members that failed more than timeout before now and
// returns their names, sorted.
func (s *reconnectSet) expire(now time.Time, timeout time.Duration) []string {
	var gone []string
	for n, m := range s.members {
		if now.Sub(m.since) > timeout {
			delete(s.members, n)
			gone = append(gone, n)
		}
	}
	slices.Sort(gone)
	return gone
}

// pick returns the addresses of up to k distinct failed members chosen
// with perm (rand.Perm's contract), in the permutation's order.
func (s *reconnectSet) pick(k int, perm func(n int) []int) []netip.AddrPort {
	all := make([]netip.AddrPort, 0, len(s.members))
	for _, m := range s.members {
		if !slices.Contains(all, m.addr) {
			all = append(all, m.addr)
		}
	}
	slices.SortFunc(all, func(a, b netip.AddrPort) int { return a.Compare(b) }) // perm alone decides
	out := make([]netip.AddrPort, 0, min(k, len(all)))
	for _, i := range perm(len(all)) {
		if len(out) == k {
			break
		}
		out = append(out, all[i])
	}
	return out
}

// len returns the number of failed members remembered.
func (s *reconnectSet) len() int { return len(s.members) }

// reconnectLoop periodically tries to rejoin failed members and, while
// this node is alone, its seeds, so that the two sides of a healed network
// partition find each other again: once memberlist has declared the other
// side dead it never contacts it again by itself. It stops on Leave and
// Shutdown.
func (n *Node) reconnectLoop() {
	defer n.wg.Done()
	defer close(n.reconnectDone)
	interval := n.cfg.ReconnectInterval
	for {
		// Up to 20% jitter keeps gateways from reconnecting in step.
		t := time.NewTimer(interval + rand.N(interval/5+1))
		select {
		case <-t.C:
		case <-n.stop:
			t.Stop()
			return
		}
		n.reconnect(time.Now())
	}
}

// reconnect runs one round: it forgets members failed for longer than
// Config.ReconnectTimeout, then joins a few of the others and, when no
// other member is live and the first join succeeded, the seeds other than
// this node. It waits for its joins.
func (n *Node) reconnect(now time.Time) {
	n.mu.Lock()
	for _, name := range n.reconnects.expire(now, n.cfg.ReconnectTimeout) {
		n.log.Info("gave up reconnecting to failed member", "member", name, "reconnect_timeout", n.cfg.ReconnectTimeout)
	}
	var targets []string
	for _, a := range n.reconnects.pick(reconnectFanout, rand.Perm) {
		targets = append(targets, a.String())
	}
	n.mu.Unlock()

	alone := n.live.Load() <= 1
	if alone && n.hasJoined() && len(n.cfg.Join) > 0 {
		ctx, cancel := n.stopContext(n.cfg.ReconnectInterval)
		seeds := resolveSeeds(ctx, n.cfg.Join, n.Addr(), net.DefaultResolver.LookupNetIP)
		cancel()
		for _, s := range seeds {
			if !slices.Contains(targets, s) {
				targets = append(targets, s)
			}
		}
	}

	sem := make(chan struct{}, reliableFanout)
	var wg sync.WaitGroup
send:
	for _, addr := range targets {
		select {
		case sem <- struct{}{}:
		case <-n.stop:
			break send
		}
		wg.Go(func() {
			defer func() { <-sem }()
			select {
			case <-n.stop:
				return
			default:
			}
			n.c.reconnectAttempts.Add(1)
			if _, err := n.ml.Join([]string{addr}); err != nil {
				n.log.Debug("gossip reconnect failed", "addr", addr, "alone", alone, "err", err)
				return
			}
			n.c.reconnects.Add(1)
			n.log.Info("gossip reconnected", "addr", addr, "alone", alone)
		})
	}
	wg.Wait()
}

// stopContext returns a context cancelled after timeout or when the node
// stops joining (Leave, Shutdown), whichever comes first.
func (n *Node) stopContext(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	go func() {
		select {
		case <-n.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// resolveSeeds resolves host:port seeds to distinct ip:port addresses,
// leaving out self: a seed that names every gateway (a headless Service)
// names this one too, and a lone node joining itself every round would
// count and log a reconnect that reached nobody. Seeds it cannot parse or
// resolve are returned as they are, for memberlist's Join to handle (it
// accepts more forms) or to fail and count.
func resolveSeeds(ctx context.Context, seeds []string, self netip.AddrPort,
	lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)) []string {
	var out []string
	add := func(s string) {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, seed := range seeds {
		host, portStr, err := net.SplitHostPort(seed)
		if err != nil {
			add(seed)
			continue
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil {
			add(seed)
			continue
		}
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{ip}
		} else if ips, err = lookup(ctx, "ip", host); err != nil {
			add(seed)
			continue
		}
		for _, ip := range ips {
			ap := netip.AddrPortFrom(ip.Unmap(), uint16(port))
			if ap != self {
				add(ap.String())
			}
		}
	}
	return out
}

// hasJoined reports whether a join to Config.Join succeeded (or none was
// configured).
func (n *Node) hasJoined() bool {
	select {
	case <-n.joined:
		return true
	default:
		return false
	}
}

// reconnectPending returns the names of the failed members remembered for
// reconnecting, sorted.
func (n *Node) reconnectPending() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	names := make([]string, 0, n.reconnects.len())
	for name := range n.reconnects.members {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}
