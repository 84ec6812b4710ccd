package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/sni"
	"github.com/ewgate/ewgate/workload"
)

// ejection reports whether g's /debug/config lists the endpoint addr as
// ejected, in any route, and until when.
func ejection(g *gateway, addr string) (bool, time.Time, error) {
	code, body, err := g.get("/debug/config")
	if err != nil || code != 200 {
		return false, time.Time{}, fmt.Errorf("%s /debug/config: %d %v", g.name, code, err)
	}
	var cfg struct {
		Routes []struct {
			Endpoints []struct {
				Address      string     `json:"address"`
				Ejected      bool       `json:"ejected"`
				EjectedUntil *time.Time `json:"ejectedUntil"`
			} `json:"endpoints"`
		} `json:"routes"`
	}
	if err := json.Unmarshal([]byte(body), &cfg); err != nil {
		return false, time.Time{}, fmt.Errorf("%s /debug/config: %w", g.name, err)
	}
	var ejected bool
	var until time.Time
	for _, r := range cfg.Routes {
		for _, e := range r.Endpoints {
			if e.Address == addr && e.Ejected {
				ejected = true
				if e.EjectedUntil != nil && e.EjectedUntil.After(until) {
					until = *e.EjectedUntil
				}
			}
		}
	}
	return ejected, until, nil
}

// restartEcho starts a new echo server called name on addr in network n's
// workload namespace, with a fresh SVID of the same SPIFFE ID, and puts it
// in the topology in place of the server of that name (which must be
// closed), so that echoByName and the cleanup find the new one.
func (tp *topology) restartEcho(n, name, addr string) (*workload.EchoServer, error) {
	src, err := tp.ca.NewSource(spiffeid.RequireFromPath(tp.ca.TrustDomain(), "/ns/demo/sa/"+name), identity.IssueOptions{})
	if err != nil {
		return nil, err
	}
	var e *workload.EchoServer
	err = tp.wl[n].do(func() (err error) {
		e, err = workload.NewEchoServer(name, addr, src, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	for i, old := range tp.echoes {
		if old.Name() == name {
			tp.echoes[i] = e
			return e, nil
		}
	}
	tp.echoes = append(tp.echoes, e)
	return e, nil
}

// healthWatch samples, until stopped, whether B's gateways eject an
// endpoint and whether A's view (its gateway's Resolve, what its tunnels
// and remote-mode clients follow) still offers B for a key.
type healthWatch struct {
	stop chan struct{}
	done chan struct{}

	mu        sync.Mutex
	ejectedAt time.Duration // first sample with the endpoint ejected on any of B's gateways; 0: none yet
	goneAt    time.Duration // first sample without B in A's view; 0: none yet
	backAt    []time.Duration
	samples   int
	err       error
}

// watchHealth starts sampling (about every 20 ms) from since on.
func watchHealth(ctx context.Context, tp *topology, since time.Time, key sni.Key, addr string, bgws []*gateway) (*healthWatch, error) {
	api, closer, err := tp.apiClient(tp.rc, tp.gw["a"])
	if err != nil {
		return nil, err
	}
	w := &healthWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer closer.Close()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			ejected := false
			for _, g := range bgws {
				ej, _, err := ejection(g, addr)
				if err != nil {
					w.fail(err)
					return
				}
				ejected = ejected || ej
			}
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			resp, err := api.Resolve(rctx, &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: key.SNI()}})
			cancel()
			inView := false
			if err == nil {
				for _, tg := range resp.GetTargets() {
					inView = inView || tg.GetNetwork() == "network-b"
				}
			} else if status.Code(err) != codes.NotFound {
				w.fail(fmt.Errorf("A's Resolve(%s): %w", key.SNI(), err))
				return
			}
			at := time.Since(since)
			w.mu.Lock()
			w.samples++
			if ejected && w.ejectedAt == 0 {
				w.ejectedAt = at
			}
			switch {
			case !inView && w.goneAt == 0:
				w.goneAt = at
			case inView && w.goneAt != 0:
				w.backAt = append(w.backAt, at)
			}
			w.mu.Unlock()
		}
	}()
	return w, nil
}

func (w *healthWatch) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.err = err
}

// gone reports whether A's view has dropped B for the key.
func (w *healthWatch) gone() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.goneAt != 0
}

// finish stops the sampling and returns what it saw.
func (w *healthWatch) finish() (ejectedAt, goneAt time.Duration, backAt []time.Duration, samples int, err error) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ejectedAt, w.goneAt, w.backAt, w.samples, w.err
}

// An endpoint dies: b-echo-v1, one of the two endpoints of B's echo
// service, is stopped while clients of A call the service in local mode.
// Connections without a subset keep succeeding (B's gateway tries the
// other endpoint), B's gateways eject the dead one, connections for
// subset v1 (only that endpoint) fail, and, once the server is back on
// the same address, subset v1 works again after the ejection ends. The
// server is restarted for good: the topology holds the new one.
//
// The health rule (docs/gossip.md): a network's endpoint is healthy for
// other networks only while no gateway of that network ejects it. So A's
// view of B's subset v1 must drop once either of B's gateways ejects the
// endpoint, and must not come back while the endpoint stays down (it
// used to, when resolution took the larger of B's gateways' counts).
func testEndpointDies(t *testing.T, tp *topology) {
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	const victim = "b-echo-v1"
	addr := net.JoinHostPort(lanIP("b", 10), strconv.Itoa(echoPort))
	via := tp.gw["a"].lanPassthrough()
	bgws := []*gateway{tp.gw["b1"], tp.gw["b2"]}
	call := func(subset string) (string, time.Duration, error) {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		began := time.Now()
		got, err := tp.call(cctx, tp.wl["a"], via, keyB(subset), newMarker("endpoint-"+subset), 4<<10)
		return got, time.Since(began), err
	}
	counters := func() (conn, ej [2]float64) {
		for i, g := range bgws {
			var err error
			if conn[i], err = g.metric("ewgate_upstream_connect_errors_total"); err != nil {
				t.Fatal(err)
			}
			if ej[i], err = g.metric("ewgate_upstream_ejections_total"); err != nil {
				t.Fatal(err)
			}
		}
		return conn, ej
	}

	// Before: both subsets answer from their own server.
	for _, sub := range []string{"v1", "v2"} {
		var lastErr error
		await.True(t, 30*time.Second, "subset "+sub+" to answer before the endpoint is stopped", func() bool {
			var got string
			got, _, lastErr = call(sub)
			return lastErr == nil && got == "b-echo-"+sub
		})
	}
	for _, g := range bgws {
		if ej, _, err := ejection(g, addr); err != nil || ej {
			t.Fatalf("%s: %s ejected before it was stopped (%v)", g.name, addr, err)
		}
	}
	conn0, ej0 := counters()

	stopped := time.Now()
	watch, err := watchHealth(ctx, tp, stopped, keyB("v1"), addr, bgws)
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.echoByName(victim).Close(); err != nil {
		t.Fatalf("stopping %s: %v", victim, err)
	}
	t.Logf("%s (%s) stopped", victim, addr)

	// New connections, alternately without a subset and for v1, until
	// both of B's gateways have ejected the endpoint and A's gateway
	// refuses v1 itself with a TLS alert (at least 20 of each).
	type attempt struct {
		at time.Duration // since the stop, when the connection began
		ok bool
	}
	var plain []attempt
	var v1Took []time.Duration
	var v1Alert, bothEjected time.Duration
	var firstV1Err, lastV1Err error
	var v1NoAlert int // v1 failures without a TLS alert (B refused the tunnel stream)
	ejectedOn := map[string]bool{}
	for i := 0; i < 20 || v1Alert == 0 || bothEjected == 0; i++ {
		if time.Since(stopped) > 30*time.Second {
			t.Fatalf("30 s after the stop: ejected on %v of B's gateways; A's gateway refused v1 with a TLS alert: %v; the last v1 error: %v",
				ejectedOn, v1Alert > 0, lastV1Err)
		}
		began := time.Since(stopped)
		got, _, err := call("")
		plain = append(plain, attempt{began, err == nil})
		switch {
		case err != nil:
			t.Logf("without a subset, connection begun %v after the stop failed: %v", began.Round(time.Millisecond), err)
		case got != "b-echo-v2":
			t.Fatalf("without a subset, a connection reached %s with %s stopped, want b-echo-v2", got, victim)
		}

		began = time.Since(stopped)
		got, took, err := call("v1")
		if err == nil {
			t.Fatalf("subset v1 connection begun %v after the stop reached %s, though %s is stopped", began.Round(time.Millisecond), got, victim)
		}
		v1Took = append(v1Took, took)
		if firstV1Err == nil {
			firstV1Err = err
			t.Logf("subset v1, first connection after the stop: failed after %v: %v", took.Round(time.Millisecond), err)
		}
		lastV1Err = err
		_, aerr := tlsAlert(err)
		if aerr != nil {
			v1NoAlert++
		}
		if aerr == nil && v1Alert == 0 {
			v1Alert = began
			t.Logf("subset v1, connection begun %v after the stop: TLS alert after %v: %v", began.Round(time.Millisecond), took.Round(time.Millisecond), err)
		}

		for _, g := range bgws {
			if !ejectedOn[g.name] {
				ej, _, err := ejection(g, addr)
				if err != nil {
					t.Fatal(err)
				}
				ejectedOn[g.name] = ej
			}
		}
		if bothEjected == 0 && ejectedOn[bgws[0].name] && ejectedOn[bgws[1].name] {
			bothEjected = time.Since(stopped)
		}
	}

	// From here every connection without a subset must succeed.
	for i := 0; i < 10; i++ {
		began := time.Since(stopped)
		got, _, err := call("")
		if err != nil {
			t.Fatalf("without a subset, connection %d after the ejection: %v", i, err)
		}
		if got != "b-echo-v2" {
			t.Fatalf("without a subset, connection %d after the ejection reached %s, want b-echo-v2", i, got)
		}
		plain = append(plain, attempt{began, true})
	}
	var failed int
	okFrom := plain[0].at
	for i, a := range plain {
		if !a.ok {
			failed++
			okFrom = plain[i+1].at
		}
	}
	t.Logf("after the stop: %d of %d new connections without a subset failed", failed, len(plain))
	if failed > 0 {
		t.Errorf("%d of %d connections without a subset failed with one of two endpoints stopped: B's gateways should have tried the other endpoint", failed, len(plain))
	}
	figure(t, "endpoint stopped -> new connections to the service (no subset) succeed from then on", okFrom)
	figure(t, "endpoint stopped -> ejected on both of the network's gateways (/debug/config)", bothEjected)
	figure(t, "endpoint stopped -> its only subset refused with a TLS alert by the client's own gateway", v1Alert)
	lo, hi := v1Took[0], v1Took[0]
	for _, d := range v1Took {
		lo, hi = min(lo, d), max(hi, d)
	}
	t.Logf("subset v1 with its endpoint stopped: %d connections, every one failed, in %v to %v; %d without a TLS alert (first: %v); the last: %v",
		len(v1Took), lo.Round(time.Millisecond), hi.Round(time.Millisecond), v1NoAlert, firstV1Err, lastV1Err)
	t.Logf("e2e-figure: subset with its only endpoint stopped -> the client's error, slowest of the attempts: %v (gossip profile %s)", hi.Round(time.Millisecond), gossipProfile())
	// Once A's view has dropped B's v1, A's own gateway refuses v1 with a
	// TLS alert, every time: the view does not flap back.
	await.True(t, 30*time.Second, "A's view of B to drop subset v1", watch.gone)
	for i := 0; i < 5; i++ {
		_, _, err := call("v1")
		if err == nil {
			t.Fatalf("subset v1 connection %d after A's view dropped it succeeded", i)
		}
		if _, aerr := tlsAlert(err); aerr != nil {
			t.Errorf("subset v1 connection %d after A's view dropped it: %v, want A's TLS alert", i, err)
		}
	}

	conn1, ej1 := counters()
	var connDelta, ejDelta float64
	for i, g := range bgws {
		t.Logf("%s: +%v ewgate_upstream_connect_errors_total, +%v ewgate_upstream_ejections_total", g.name, conn1[i]-conn0[i], ej1[i]-ej0[i])
		connDelta += conn1[i] - conn0[i]
		ejDelta += ej1[i] - ej0[i]
	}
	if connDelta == 0 {
		t.Errorf("B's gateways counted no connect error with %s stopped", victim)
	}
	if ejDelta == 0 {
		t.Errorf("ewgate_upstream_ejections_total did not increase on B's gateways, though /debug/config showed %s ejected", addr)
	}
	t.Logf("e2e-figure: endpoint stopped -> ewgate_upstream_ejections_total on the network's gateways: +%v, connect errors +%v (gossip profile %s)", ejDelta, connDelta, gossipProfile())

	// More v1 connections for 10 s while the watch goes on: the
	// ejections last 30 s from the first, and B's gateways republish
	// their summaries every second meanwhile, so a flap would show.
	for watchUntil := time.Now().Add(10 * time.Second); time.Now().Before(watchUntil); {
		if _, _, err := call("v1"); err == nil {
			t.Fatalf("subset v1 succeeded with %s stopped", victim)
		}
	}
	ejectedAt, goneAt, backAt, samples, werr := watch.finish()
	if werr != nil {
		t.Fatalf("watching A's view: %v", werr)
	}
	t.Logf("A's view of B's subset v1 sampled %d times while %s was down: first ejection on B seen %v after the stop, B dropped from A's view %v after",
		samples, victim, ejectedAt.Round(time.Millisecond), goneAt.Round(time.Millisecond))
	if len(backAt) > 0 {
		t.Errorf("A's view of B's subset v1 came back %d times while %s was down and ejected (first %v after the stop): the health rule says it stays out", len(backAt), victim, backAt[0].Round(time.Millisecond))
	}
	if ejectedAt == 0 || goneAt < ejectedAt {
		t.Logf("B dropped from A's view at %v, before an ejection was sampled at %v (the sampling interval is 20 ms)", goneAt, ejectedAt)
	} else {
		figure(t, "first ejection on one of the network's gateways -> the client network's view drops the subset (Resolve)", goneAt-ejectedAt)
	}
	figure(t, "endpoint stopped -> the client network's view drops its only subset (Resolve)", goneAt)

	// Restart on the same address: v1 answers again once the ejection
	// has ended on every gateway of B and A has learned it.
	var until time.Time
	for _, g := range bgws {
		if _, u, err := ejection(g, addr); err == nil && u.After(until) {
			until = u
		}
	}
	restarted := time.Now()
	if _, err := tp.restartEcho("b", victim, addr); err != nil {
		t.Fatalf("restarting %s on %s: %v", victim, addr, err)
	}
	if !until.IsZero() {
		t.Logf("%s restarted; the last ejection on B's gateways ends %v later", victim, until.Sub(restarted).Round(time.Millisecond))
	}
	var fails int
	var lastErr error
	await.True(t, 60*time.Second, "a subset v1 connection after the restart", func() bool {
		got, _, err := call("v1")
		if err == nil && got != victim {
			t.Fatalf("subset v1 reached %s after the restart", got)
		}
		if err != nil {
			fails++
			lastErr = err
		}
		return err == nil
	})
	figure(t, "endpoint restarted on the same address -> its only subset's connections succeed again", time.Since(restarted))
	if fails > 0 {
		t.Logf("after the restart, %d subset v1 connections failed first; the last: %v", fails, lastErr)
	}
	await.True(t, 60*time.Second, "a connection without a subset to reach "+victim+" again", func() bool {
		got, _, err := call("")
		if err != nil {
			t.Fatalf("without a subset, after the restart: %v", err)
		}
		return got == victim
	})
	figure(t, "endpoint restarted on the same address -> connections without a subset reach it again", time.Since(restarted))
	// Leave no ejection behind.
	for _, g := range bgws {
		await.True(t, 60*time.Second, g.name+" to stop ejecting "+addr, func() bool {
			ej, _, err := ejection(g, addr)
			return err == nil && !ej
		})
	}
}
