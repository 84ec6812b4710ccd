package gateway

import (
	"context"
	"sync"
	"time"
)

// prober readmits ejected endpoints that are back: every Config.ProbeInterval
// it opens a TCP connection to each ejected endpoint and closes it at once.
// A probe that connects ends the ejection, so that the endpoint takes new
// connections again without waiting out EjectFor; one that fails extends
// the ejection by EjectFor, so that no client is sent to an endpoint the
// probe knows is down. Only ejected endpoints are probed: healthy ones are
// judged by the connections clients make.
type prober struct {
	start sync.Once
	stop  chan struct{}
	done  chan struct{}
}

// startProbing starts the probe loop once, if Config.ProbeInterval is set.
// Called with g.mu held.
func (g *Gateway) startProbing() {
	if g.cfg.ProbeInterval <= 0 {
		return
	}
	g.probe.start.Do(func() {
		g.probe.stop, g.probe.done = make(chan struct{}), make(chan struct{})
		go g.probeLoop()
	})
}

// stopProbing stops the probe loop, if it runs, and waits for it.
func (g *Gateway) stopProbing() {
	g.probe.start.Do(func() {}) // a later startProbing must not start it
	if g.probe.stop == nil {
		return
	}
	select {
	case <-g.probe.stop:
	default:
		close(g.probe.stop)
	}
	<-g.probe.done
}

func (g *Gateway) probeLoop() {
	defer close(g.probe.done)
	// Shutdown must not wait a whole dial timeout for a probe.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-g.probe.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	tick := time.NewTicker(g.cfg.ProbeInterval)
	defer tick.Stop()
	for {
		select {
		case <-g.probe.stop:
			return
		case <-tick.C:
		}
		t := g.table.Load()
		if t == nil {
			continue
		}
		now := g.now()
		for _, u := range t.upstreams {
			if u.ejected(now) {
				g.probeOne(ctx, u)
			}
		}
	}
}

// probeOne connects to an ejected endpoint, within ctx, and readmits it or
// extends its ejection. The dial goes through the gateway's dialer, so the address
// policy applies to probes as to clients' connections.
func (g *Gateway) probeOne(ctx context.Context, u *upstream) {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.DialTimeout)
	defer cancel()
	c, err := g.dialer.DialContext(ctx, "tcp", u.addr)
	if err != nil {
		if !localDialError(err) {
			// Extended by the length of the ejection it is in: EjectFor
			// under the built-in rule, the route's under an outlier
			// policy.
			d := u.ejectFor.Load()
			if d <= 0 {
				d = int64(g.cfg.EjectFor)
			}
			u.ejectedUntil.Store(g.now() + d)
		}
		g.m.ProbeFailures.Inc()
		g.rlog.Warn(g.log, "probe", "ejected endpoint still down", "endpoint", u.addr, "err", err)
		return
	}
	c.Close()
	u.failures.Store(0)
	// Readmitted now: the outlier policy's interval forgives repeat
	// ejections from here.
	u.ejectedUntil.Store(g.now())
	g.m.Readmitted.Inc()
	g.log.Info("ejected endpoint readmitted: probe connected", "endpoint", u.addr)
}
