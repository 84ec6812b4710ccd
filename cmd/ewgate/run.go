package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ewgate/ewgate/admin"
	"github.com/ewgate/ewgate/api"
	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/discovery/kube"
	"github.com/ewgate/ewgate/gateway"
	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/metrics"
	"github.com/ewgate/ewgate/sni"
)

// runGateway implements "ewgate run".
func runGateway(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s, err := parseSettings(args, stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, s.LogLevel, s.LogFormat)
	if err != nil {
		return err
	}
	n, err := startNode(ctx, s, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return n.stop()
}

// node is a running gateway with its config watcher and admin server.
type node struct {
	s       settings
	log     *slog.Logger
	gw      *gateway.Gateway
	reg     *metrics.Registry
	admin   *http.Server
	adminLn net.Listener
	status  *http.Server // the status port; nil when off
	// stopping turns readiness off at the start of stop, before anything
	// closes.
	stopping atomic.Bool
	// started is set once startNode has bound everything (the API
	// listener is bound after the admin server starts answering), so that
	// readiness never precedes a listener a client may be told to use.
	started atomic.Bool
	id      identitySource // nil without an identity
	gossip  *gossip        // nil without gossip
	tunnels *tunnels       // nil without tunnels
	cancel  context.CancelFunc
	serving func() bool    // the data plane serves its config (and the Kubernetes source synced)
	wg      sync.WaitGroup // background goroutines, stopped by cancel
}

// bg runs f in a goroutine that stop waits for.
func (n *node) bg(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// startNode loads the config, binds the listeners and the admin server, and
// starts watching the config files. A config that does not load is an
// error: a gateway never starts with nothing to serve.
func startNode(ctx context.Context, s settings, log *slog.Logger) (*node, error) {
	reg := new(metrics.Registry)
	addrs, err := s.addressPolicy()
	if err != nil {
		return nil, err
	}
	gw := gateway.New(gateway.Config{
		DialControl:    addrs.Control,
		BindAddress:    s.BindAddress,
		ALPN:           s.ALPN,
		AnyALPN:        s.AnyALPN,
		Peek:           sni.Peeker{MaxBytes: s.HelloMaxBytes, Timeout: time.Duration(s.HelloTimeout)},
		HelloMemory:    cmp.Or(s.HelloMemory, -1),
		DialTimeout:    time.Duration(s.DialTimeout),
		ProbeInterval:  time.Duration(s.ProbeInterval),
		IdleTimeout:    idleTimeout(s.IdleTimeout),
		MaxConnections: s.MaxConns,
		LoopAccept:     s.LoopAccept,
		EventLoops:     s.EventLoops,
		SpreadLoops:    s.SpreadLoops,
		Locality:       cmp.Or(s.Locality, discovery.LocalityFromLabels(s.NodeLabels, s.NodeLabels)),
		Logger:         log,
		Metrics:        gateway.NewMetrics(reg),
	})
	reg.GaugeFunc("ewgate_hello_memory_bytes", "Bytes ClientHello reads in progress hold beyond their pooled buffers (bounded by --hello-memory).",
		func() float64 { return float64(gw.HelloMemory()) })
	reloads := reg.CounterVec("ewgate_config_reloads_total", "Config loads, by result.", "result")
	reloadOK, reloadFailed := reloads.With("ok"), reloads.With("failed")
	spec := discovery.Node{Network: s.Network, Labels: s.NodeLabels, AnyTLSMode: s.AnyTLSMode,
		ExportDefault: discovery.ExportDefault(s.ExportDefault), TrustDomain: s.TrustDomain}
	serveAPI := s.APISocket != "" || s.APIAddress != ""
	var leases *api.Leases
	if serveAPI {
		leases = api.NewLeases(api.LeaseConfig{Logger: log, Addresses: addrs, MaxWeight: s.APIMaxWeight})
	}
	cs := newCatalogState(spec, gw, leases, log)
	cs.addrs = addrs
	cs.register(reg)
	cs.withFiles = len(s.Files) > 0
	ks, err := kubeSource(s, kube.Config{Network: s.Network, NodeLabels: s.NodeLabels, Apply: cs.applyKube, Logger: log})
	if err != nil {
		return nil, err
	}
	cs.withKube = ks != nil
	w := &discovery.Watcher{
		Paths:  s.Files,
		Node:   &spec,
		Logger: log,
		Apply:  cs.applyFiles,
		Result: func(err error) {
			if err != nil {
				reloadFailed.Inc()
			} else {
				reloadOK.Inc()
			}
		},
	}
	if cs.withFiles {
		if err := w.Load(); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	n := &node{s: s, log: log, gw: gw, reg: reg, cancel: cancel}
	// abort undoes a start that failed half way.
	abort := func(err error) (*node, error) {
		cancel()
		gw.Shutdown(ctx)
		if n.admin != nil {
			n.admin.Close()
		} else if n.adminLn != nil {
			n.adminLn.Close()
		}
		if n.status != nil {
			n.status.Close()
		}
		n.wg.Wait()
		if n.tunnels != nil {
			n.tunnels.close()
		}
		if n.gossip != nil {
			n.gossip.node.Shutdown()
		}
		if n.id != nil {
			n.id.Close()
		}
		return nil, err
	}
	// Bound before gossip starts, so that a taken port fails the start
	// before this gateway has joined anyone.
	if s.AdminAddress != "" {
		ln, err := net.Listen("tcp", s.AdminAddress)
		if err != nil {
			return abort(fmt.Errorf("admin listener (--admin-address %s; several gateways on one host need one each, empty turns it off): %w", s.AdminAddress, err))
		}
		n.adminLn = ln
	}
	id, err := loadIdentity(ctx, s, log)
	if err != nil {
		return abort(err)
	}
	if id != nil {
		n.id = id
		watchIdentity(ctx, id, reg, s, log)
		if svid, err := id.GetX509SVID(); err == nil {
			cs.setTrustDomain(workloadTrustDomain(s.TrustDomain, svid.ID.TrustDomain().Name(), log))
		}
	}
	g, err := startGossip(ctx, s, n.id, cs, log)
	if err != nil {
		return abort(err)
	}
	var membership api.Membership
	debug := map[string]func() any{"config": func() any { return debugConfig(gw, ks) }}
	// ready backs both /readyz and the status port: config applied,
	// listeners bound, sources synced, and not stopping.
	ready := func() bool { return !n.stopping.Load() && gw.Ready() }
	var detail func() []string
	if ks != nil {
		ready = func() bool { return !n.stopping.Load() && gw.Ready() && ks.FirstSync() }
		detail = func() []string { return []string{kubeDetail(ks.Status())} }
		reg.GaugeVec("ewgate_source_synced", "1 when the source's watches are connected and its first sync is applied, else 0 (the last known state is served).", "source").
			Func(kube.SourceName, func() float64 { return b2f(ks.InSync()) })
		reg.CounterVec("ewgate_source_watch_errors_total", "Failed lists and watches of the source's API server.", "source").
			Func(kube.SourceName, func() float64 { return float64(ks.WatchErrors()) })
	}
	n.serving = ready
	if g != nil {
		n.gossip = g
		cs.gateways = g.liveGateways
		membership = g
		g.register(reg)
		debug["members"] = func() any { return g.Members() }
		debug["networks"] = func() any { return g.Networks() }
	}
	pub, err := newPublisher(s, g, log)
	if err != nil {
		return abort(err)
	}
	if pub != nil {
		registerPublisher(reg, pub)
		debug["istio"] = func() any { return pub.Status() }
		n.bg(func() {
			if err := pub.Run(ctx); err != nil {
				log.Error("istio publisher stopped", "err", err)
			}
		})
	}
	if s.TunnelAddress != "" {
		tn, err := startTunnels(s, n.id, gw, g, log)
		if err != nil {
			return abort(err)
		}
		n.tunnels = tn
		gw.SetTunnelDialer(tn.ep, g.node)
		tn.register(reg)
		debug["tunnels"] = func() any { return tn.ep.Stats() }
		g.retireLink = tn.memberDown
	}
	if g != nil {
		// Started after the tunnels, so that it sees retireLink.
		n.bg(func() { g.run(ctx, s.GossipKeyFile) })
	}
	if n.adminLn != nil {
		var ln net.Listener
		n.admin, ln = admin.NewServer(admin.Handler(admin.Config{
			Metrics: reg,
			Ready:   n.ready,
			Detail:  detail,
			Debug:   debug,
			Pprof:   s.AdminPprof,
		}), n.adminLn)
		n.adminLn = ln
		go n.admin.Serve(ln)
		log.Info("admin listening", "address", ln.Addr().String())
	}
	if a := s.statusAddress(); a != "" {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return abort(fmt.Errorf("--status-address %s: %w (each gateway on a host needs its own status address; empty turns it off)", a, err))
		}
		var srv *http.Server
		srv, ln = admin.NewServer(admin.StatusHandler(func() bool { return n.ready() == nil }), ln)
		n.status = srv
		go srv.Serve(ln)
		log.Info("status listening", "address", ln.Addr().String(), "path", admin.StatusPath)
	}
	if serveAPI {
		if err := n.serveAPI(ctx, cs, membership, leases); err != nil {
			return abort(err)
		}
	}
	if cs.withFiles {
		n.bg(func() {
			if err := w.Run(ctx); err != nil {
				log.Error("config watcher stopped", "err", err)
			}
		})
	}
	if ks != nil {
		n.bg(func() {
			if err := ks.Run(ctx); err != nil {
				log.Error("kubernetes source stopped", "err", err)
			}
		})
		n.started.Store(true)
		log.Info("gateway started; not ready until the Kubernetes source's first sync", "network", s.Network)
		return n, nil
	}
	n.started.Store(true)
	log.Info("gateway ready", "network", s.Network, "listeners", listenerList(gw))
	return n, nil
}

// ready backs /readyz and the status port: the gateway serves its config
// (n.serving), and gossip (if on) has no name conflict.
func (n *node) ready() error {
	if !n.started.Load() {
		return errors.New("starting: not every listener is bound yet")
	}
	if !n.serving() {
		return errors.New("config not applied, a listener not bound, the Kubernetes source not yet synced, or draining")
	}
	if n.gossip != nil {
		return n.gossip.readiness()
	}
	return nil
}

// serveAPI serves the gRPC API on the unix socket and, with SPIFFE mTLS,
// on the TCP address the settings name.
func (n *node) serveAPI(ctx context.Context, cs *catalogState, membership api.Membership, leases *api.Leases) error {
	srv := api.NewServer(api.ServerConfig{Resolver: cs, Membership: membership, Registry: leases, Network: n.s.Network,
		Access: n.s.apiAccess(), Logger: n.log})
	n.reg.CounterFunc("ewgate_api_denied_total", "API calls refused by the access policy or a lease held by another caller.",
		func() float64 { return float64(srv.Denied()) })
	n.reg.GaugeFunc("ewgate_api_watchers", "WatchResolve streams open, over all API listeners.",
		func() float64 { return float64(srv.Watchers()) })
	var tlsLn net.Listener
	if n.s.APIAddress != "" {
		if n.id == nil {
			return errors.New("--api-address needs this node's SPIFFE identity (--spiffe-socket or --svid-cert, --svid-key, --trust-bundle): remote callers are authenticated by mTLS")
		}
		var err error
		if tlsLn, err = net.Listen("tcp", n.s.APIAddress); err != nil {
			return fmt.Errorf("API listener: %w", err)
		}
	}
	n.bg(func() { leases.Run(ctx) })
	n.bg(func() { cs.watchLeases(ctx) })
	if n.s.APISocket != "" {
		n.bg(func() {
			if err := srv.ServeUnix(ctx, n.s.APISocket); err != nil {
				n.log.Error("API server stopped", "socket", n.s.APISocket, "err", err)
			}
		})
		n.log.Info("API listening", "socket", n.s.APISocket)
	}
	if tlsLn != nil {
		svid, err := n.id.GetX509SVID()
		if err != nil {
			return fmt.Errorf("API: own SVID: %w", err)
		}
		az, err := identity.NewAuthorizer(n.s.apiHandshakePolicy(svid.ID.TrustDomain().Name()), n.log)
		if err != nil {
			return err
		}
		// Callers the handshake refuses never reach the access policy:
		// without this they would be logged but not counted.
		rejected := n.reg.CounterVec("ewgate_api_handshakes_rejected_total", "API TLS handshakes refused by the handshake's certificate checks or ID policy, by reason.", "reason")
		for _, r := range identity.Reasons() {
			rejected.Func(string(r), func() float64 { return float64(az.Stats().Rejected[r]) })
		}
		n.bg(func() {
			if err := srv.ServeTLS(ctx, tlsLn, identity.ServerTLSConfig(n.id, az)); err != nil {
				n.log.Error("API server stopped", "address", tlsLn.Addr().String(), "err", err)
			}
		})
		n.log.Info("API listening with SPIFFE mTLS", "address", tlsLn.Addr().String())
	}
	return nil
}

// stop drains the gateway within the drain timeout and stops the rest.
// Readiness turns off first, and the listeners keep accepting for the
// drain delay, so that load balancers probing the status port stop
// sending new connections before they would be refused.
func (n *node) stop() error {
	n.stopping.Store(true)
	if n.gossip != nil {
		// Leave first, so that other networks stop sending new
		// connections here while the open ones drain.
		n.gossip.stop()
	}
	if d := time.Duration(n.s.DrainDelay); d > 0 {
		n.log.Info("not ready; listeners close after the drain delay", "delay", d)
		time.Sleep(d)
	}
	n.log.Info("draining", "active", n.gw.Active(), "timeout", time.Duration(n.s.DrainTimeout))
	n.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(n.s.DrainTimeout))
	defer cancel()
	err := n.gw.Shutdown(ctx)
	if n.tunnels != nil {
		n.tunnels.close()
	}
	if n.admin != nil {
		n.admin.Close()
	}
	if n.status != nil {
		n.status.Close()
	}
	n.wg.Wait()
	if n.id != nil {
		n.id.Close()
	}
	if err != nil {
		n.log.Warn("drain timeout: open connections were closed", "err", err)
	} else {
		n.log.Info("drained")
	}
	return nil
}

func listenerList(gw *gateway.Gateway) string {
	var parts []string
	for _, a := range gw.Addrs() {
		parts = append(parts, a.String())
	}
	return strings.Join(parts, ",")
}

// idleTimeout maps the flag's 0 ("never") to the gateway's "disabled".
func idleTimeout(d duration) time.Duration {
	if d == 0 {
		return -1
	}
	return time.Duration(d)
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, errors.New("--log-format: want text or json")
}

// debugConfig is /debug/config: the gateway's routing table and the state
// of the sources that fill it.
func debugConfig(gw *gateway.Gateway, ks *kube.Source) any {
	type withSources struct {
		*gateway.DebugConfig
		Sources []kube.Status `json:"sources,omitempty"`
	}
	out := withSources{DebugConfig: gw.Debug()}
	if ks != nil {
		out.Sources = append(out.Sources, ks.Status())
	}
	return out
}

// kubeDetail is the /readyz line of the Kubernetes source.
func kubeDetail(st kube.Status) string {
	switch {
	case !st.FirstSync && st.LastError != "":
		return "kubernetes: first catalog rejected: " + st.LastError
	case !st.FirstSync:
		return "kubernetes: waiting for the first sync"
	case !st.Synced:
		return fmt.Sprintf("kubernetes: not synced, serving the last known state (%d watches failing)", len(st.Errors))
	}
	return "kubernetes: synced"
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
