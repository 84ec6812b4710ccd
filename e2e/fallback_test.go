package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/sni"
)

// tunnelPeer is one peer link of a gateway's /debug/tunnels (the JSON of
// tunnel.PeerStats; only the fields the tests read).
type tunnelPeer struct {
	Direction   string
	Addr        string
	PeerID      string
	Connected   bool
	StreamsOpen int64
	Dials       uint64
	Transport   string
	Fallbacks   uint64
}

// String formats a link for messages.
func (p tunnelPeer) String() string {
	return fmt.Sprintf("%s %s connected=%v transport=%q dials=%d fallbacks=%d streams=%d",
		p.Direction, p.Addr, p.Connected, p.Transport, p.Dials, p.Fallbacks, p.StreamsOpen)
}

// tunnelPeers returns g's tunnel links from /debug/tunnels.
func (g *gateway) tunnelPeers() ([]tunnelPeer, error) {
	code, body, err := g.get("/debug/tunnels")
	if err != nil || code != http.StatusOK {
		return nil, fmt.Errorf("%s /debug/tunnels: %d %v", g.name, code, err)
	}
	var s struct{ Peers []tunnelPeer }
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		return nil, fmt.Errorf("%s /debug/tunnels: %w\n%s", g.name, err, body)
	}
	return s.Peers, nil
}

// tunnelAddr returns the gateway's tunnel address on the WAN.
func (g *gateway) tunnelAddr() string {
	return net.JoinHostPort(g.wanIP, strconv.Itoa(tunnelPort))
}

// outboundLinks returns from's outbound links to the gateways keys, by
// gateway key (absent: never dialed).
func (tp *topology) outboundLinks(from *gateway, keys ...string) (map[string]tunnelPeer, error) {
	peers, err := from.tunnelPeers()
	if err != nil {
		return nil, err
	}
	links := map[string]tunnelPeer{}
	for _, p := range peers {
		for _, k := range keys {
			if p.Direction == "outbound" && p.Addr == tp.gw[k].tunnelAddr() {
				links[k] = p
			}
		}
	}
	return links, nil
}

// onlyOn reports whether at least one of links is up and every link that
// is up is on transport tr.
func onlyOn(links map[string]tunnelPeer, tr string) bool {
	up := 0
	for _, l := range links {
		if l.Connected {
			up++
			if l.Transport != tr {
				return false
			}
		}
	}
	return up > 0
}

// describe formats links for messages.
func describe(links map[string]tunnelPeer) string {
	var b strings.Builder
	for _, k := range []string{"b1", "b2", "c"} {
		if l, ok := links[k]; ok {
			fmt.Fprintf(&b, "\n  gw-%s: %v", k, l)
		}
	}
	return b.String()
}

// UDP is blocked on the WAN links of both of B's gateways, every UDP
// packet (gossip's too), as a firewall that lets only TCP through would:
// gossip keeps B's gateways alive over memberlist's TCP fallback, new
// local-mode connections from A to B succeed over the tunnels' TCP + TLS
// fallback once A's QUIC links to B are given up, and A's QUIC link to C,
// not behind the block, carries a long-lived connection without losing a
// byte. When UDP is let through again, A's links to B move back to QUIC
// while connections keep succeeding.
func testUDPBlocked(t *testing.T, tp *topology) {
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	defer cancel()
	a := tp.gw["a"]
	callB := func(marker string, n int) error {
		cctx, ccancel := context.WithTimeout(ctx, 4*time.Second)
		defer ccancel()
		got, err := tp.call(cctx, tp.wl["a"], a.lanPassthrough(), keyB("v1"), newMarker(marker), n)
		if err == nil && got != "b-echo-v1" {
			err = fmt.Errorf("reached %s, want b-echo-v1", got)
		}
		return err
	}

	// Before: A's links to B's gateways and to C are up on QUIC. A few
	// connections to B let A dial both of B's gateways (picked by weight).
	for i := 0; i < 8; i++ {
		if err := callB("udp-before", 4<<10); err != nil {
			t.Fatalf("local-mode connection to B before blocking UDP: %v", err)
		}
	}
	keyC := sni.Key{Host: hostC, Port: echoPort}
	connC, err := tp.dial(ctx, tp.wl["a"], a.lanPassthrough(), keyC)
	if err != nil {
		t.Fatalf("long-lived connection to C: %v", err)
	}
	defer connC.Close()
	if connC.SeenAs != clientID {
		t.Fatalf("%s saw the client as %q, want %q", connC.Server, connC.SeenAs, clientID)
	}
	before, err := tp.outboundLinks(a, "b1", "b2", "c")
	if err != nil {
		t.Fatal(err)
	}
	if !onlyOn(map[string]tunnelPeer{"b1": before["b1"], "b2": before["b2"]}, "quic") || !before["c"].Connected || before["c"].Transport != "quic" {
		t.Fatalf("before blocking UDP, gw-a's links to B and C are not all up on QUIC:%s", describe(before))
	}
	// A connection to B already open on a QUIC link when UDP goes: its
	// fate is logged, not asserted (it is not expected to survive).
	var inflight *streamer
	if c, err := tp.dial(ctx, tp.wl["a"], a.lanPassthrough(), keyB("v1")); err != nil {
		t.Fatalf("connection to B before blocking UDP: %v", err)
	} else {
		defer c.Close()
		inflight = startStream(c, newMarker("udp-inflight"), 100*time.Millisecond)
	}
	// Paced: a stream at full speed for a minute would load the machine
	// enough to disturb the local gossip profile's 200 ms probes.
	streamC := startStream(connC, newMarker("udp-long-c"), 50*time.Millisecond)
	for what, s := range map[string]*streamer{"to B": inflight, "to C": streamC} {
		select {
		case <-s.echoed:
		case <-s.done:
			t.Fatalf("the long-lived connection %s, before blocking UDP: %v", what, s.err)
		case <-ctx.Done():
			t.Fatalf("the long-lived connection %s echoed nothing before blocking UDP", what)
		}
	}
	fallbacksBefore, err := a.metric("ewgate_tunnel_fallbacks_total")
	if err != nil {
		t.Fatal(err)
	}

	var restores []func() error
	for _, k := range []string{"b1", "b2"} {
		restore, err := blockUDP(tp.gw[k])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := restore(); err != nil {
				t.Errorf("restoring UDP: %v", err)
			}
		})
		restores = append(restores, restore)
	}
	blocked := time.Now()
	t.Logf("UDP blocked on the WAN links of gw-b1 and gw-b2; links of gw-a before:%s", describe(before))

	// New connections, one after another, until A has no QUIC link to B
	// left up and a connection has succeeded; failures meanwhile are
	// logged. Gossip's view of B is watched throughout.
	type attempt struct {
		at time.Duration // since the block, when the connection began
		ok bool
	}
	var attempts []attempt
	notAlive := map[string]int{}
	deadline := blocked.Add(90 * time.Second)
	for {
		began := time.Since(blocked)
		err := callB("udp-blocked", 16<<10)
		attempts = append(attempts, attempt{began, err == nil})
		if err != nil {
			t.Logf("UDP blocked: connection begun %v after the block: %v", began.Round(time.Millisecond), err)
		}
		for _, k := range []string{"b1", "b2"} {
			if alive, err := tp.alive(tp.gw[k].name); err == nil && !alive {
				notAlive[k]++
			}
		}
		links, lerr := tp.outboundLinks(a, "b1", "b2")
		if err == nil && lerr == nil && onlyOn(links, "tcp") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("UDP blocked for 90s: no successful connection to B over TCP-only links (last connection: %v; gossip: B's gateways seen not alive %v times; links of gw-a:%s)",
				err, notAlive, describe(links))
		}
	}
	// From here every new connection must succeed.
	for i := 0; i < 10; i++ {
		began := time.Since(blocked)
		if err := callB("udp-blocked-after", 64<<10); err != nil {
			t.Fatalf("UDP blocked: connection %d after A's links to B moved to TCP: %v", i, err)
		}
		attempts = append(attempts, attempt{began, true})
	}
	var failed int
	okFrom := attempts[0].at
	for i, at := range attempts {
		if !at.ok {
			failed++
			okFrom = attempts[i+1].at
		}
	}
	t.Logf("UDP blocked: %d of %d new local-mode connections to B failed, all before A's links to B were on TCP", failed, len(attempts))
	figure(t, "UDP blocked on a network's gateways -> new local-mode connections to it succeed from then on (tunnel TCP fallback)", okFrom)

	during, err := tp.outboundLinks(a, "b1", "b2", "c")
	if err != nil {
		t.Fatal(err)
	}
	var fallbacks uint64
	for _, k := range []string{"b1", "b2"} {
		fallbacks += during[k].Fallbacks - before[k].Fallbacks
	}
	if fallbacks == 0 {
		t.Errorf("gw-a counts no new fallback to TCP in /debug/tunnels, though its links to B are on TCP:%s", describe(during))
	}
	if v, err := a.metric("ewgate_tunnel_fallbacks_total"); err != nil || v <= fallbacksBefore {
		t.Errorf("gw-a's ewgate_tunnel_fallbacks_total is %v (%v), was %v before the block", v, err, fallbacksBefore)
	}
	if v, err := a.metric("ewgate_tunnel_links_tcp"); err != nil || v == 0 {
		t.Errorf("gw-a's ewgate_tunnel_links_tcp is %v (%v) with its links to B on TCP", v, err)
	}
	if c := during["c"]; !c.Connected || c.Transport != "quic" || c.Dials != before["c"].Dials {
		t.Errorf("gw-a's link to C, not behind the block, changed: before %v, now %v", before["c"], c)
	}
	// B's gateways saw the same: A's links arrive over TCP.
	for _, k := range []string{"b1", "b2"} {
		if !during[k].Connected {
			continue
		}
		peers, err := tp.gw[k].tunnelPeers()
		if err != nil {
			t.Fatal(err)
		}
		var in []tunnelPeer
		for _, p := range peers {
			if p.Direction == "inbound" && p.Connected && strings.HasPrefix(p.Addr, a.wanIP+":") {
				in = append(in, p)
			}
		}
		tcp := false
		for _, p := range in {
			tcp = tcp || p.Transport == "tcp"
		}
		if !tcp {
			t.Errorf("gw-%s has no inbound link from gw-a over TCP, though gw-a's link to it is on TCP: %v", k, in)
		}
	}
	for _, k := range []string{"b1", "b2"} {
		if notAlive[k] > 0 {
			t.Errorf("with UDP blocked, gw-a saw gw-%s not alive %d times: gossip's TCP fallback did not keep it a member", k, notAlive[k])
		}
	}
	t.Logf("UDP blocked: gossip kept gw-b1 and gw-b2 alive in gw-a's view throughout; gw-a's links:%s", describe(during))
	if err := inflightResult(inflight); err != nil {
		t.Logf("the connection to B open on QUIC when UDP was blocked: %v (not expected to survive)", err)
	}

	// Restore: links move back to QUIC once their QUIC probe is due (30 s
	// after they fell back); connections keep succeeding meanwhile.
	back := time.Now()
	for _, restore := range restores {
		if err := restore(); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	var links map[string]tunnelPeer
	deadline = back.Add(75 * time.Second)
	pace := time.NewTicker(100 * time.Millisecond) // paces connections, not a synchronisation
	defer pace.Stop()
	for {
		if err := callB("udp-back", 4<<10); err != nil {
			t.Fatalf("UDP restored: connection %d, %v after the restore: %v", n, time.Since(back).Round(time.Millisecond), err)
		}
		n++
		links, err = tp.outboundLinks(a, "b1", "b2")
		if err != nil {
			t.Fatal(err)
		}
		if onlyOn(links, "quic") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("UDP restored 75s ago: gw-a's links to B are not back on QUIC:%s", describe(links))
		}
		<-pace.C
	}
	figure(t, "UDP restored -> tunnel links back on QUIC (QUIC retried 30 s after the fallback)", time.Since(back))
	t.Logf("UDP restored: %d connections succeeded while moving back; gw-a's links:%s", n, describe(links))

	sent, err := streamC.finish()
	if err != nil {
		t.Fatalf("the long-lived connection to C (QUIC link not behind the block): %v", err)
	}
	t.Logf("long-lived connection to C: %d bytes echoed byte-exact across the UDP block and restore", sent)
	await.True(t, 30*time.Second, "gw-b1 and gw-b2 alive in gw-a's view", func() bool {
		b1, err1 := tp.alive(tp.gw["b1"].name)
		b2, err2 := tp.alive(tp.gw["b2"].name)
		return err1 == nil && err2 == nil && b1 && b2
	})
}

// inflightResult stops s and returns how it ended: nil if it echoed
// everything byte-exact.
func inflightResult(s *streamer) error {
	_, err := s.finish()
	return err
}
