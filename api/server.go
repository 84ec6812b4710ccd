package api

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/sni"
)

// Resolver answers network-aware resolution: in ewgate, the discovery view
// combined with the live gateways that gossip reports.
type Resolver interface {
	// Resolve says what a client in network fromNetwork should dial to
	// reach key. It returns a *discovery.RouteError when no network offers
	// the key.
	Resolve(key sni.Key, fromNetwork string) (*discovery.Resolution, error)
	// Changed returns a channel that receives a value after anything
	// Resolve depends on changed (catalog or membership). Notifications
	// may coalesce. The Server is its only receiver while it serves, on
	// however many listeners.
	Changed() <-chan struct{}
}

// Membership lists what gossip knows of the mesh.
type Membership interface {
	// Members returns the gateways known, this one included.
	Members() []Member
	// Networks returns the networks known.
	Networks() []Network
	// Catalog returns what each network offers, in any order.
	Catalog() []CatalogEntry
}

// Registry keeps endpoints that agents register through the API. [Leases]
// implements it.
type Registry interface {
	// Register replaces registrar's endpoints with eps and renews its lease
	// for lease (0: the registry's default), returning the lease granted.
	// caller is the identity that calls (a SPIFFE ID, or [CallerLocal]): a
	// live lease belongs to the caller that took it, and another caller's
	// attempt is an error wrapping [ErrLeaseHeld]. Invalid input is
	// reported as a *FieldError.
	Register(caller, registrar string, lease time.Duration, eps []RegisteredEndpoint) (time.Duration, error)
	// Deregister withdraws registrar's endpoints, if it has any and caller
	// holds its lease; else the error wraps [ErrLeaseHeld].
	Deregister(caller, registrar string) error
}

// MemberState is a gateway's state as gossip reports it.
type MemberState string

// Member states; their values are those the peer package prints. There
// is no suspect state: memberlist does not expose suspicion, so a gateway
// that stops answering is alive until the failure detector declares it
// dead.
const (
	MemberAlive MemberState = "alive" // joined, not declared dead
	MemberDead  MemberState = "dead"  // declared dead by the failure detector
	MemberLeft  MemberState = "left"  // left gracefully
)

// Member is one gateway of the mesh.
type Member struct {
	Name               string // node name
	Network            string // the network it serves
	PassthroughAddress string // host:port other networks dial
	TunnelAddress      string // host:port of its tunnel listener, or ""
	SPIFFEID           string // its SPIFFE ID
	State              MemberState
}

// Network is one network of the mesh.
type Network struct {
	Name     string
	Gateways int // live gateways
	Services int // service hosts offered
}

// CatalogEntry is one service port and subset a network offers, as its
// gateways report it.
type CatalogEntry struct {
	Network  string
	Host     string
	Port     uint16
	Subset   string // "" for all endpoints of the port
	Healthy  []discovery.LocalityCount
	Gateways []string // reporting gateways' node names
}

// Defaults of [ServerConfig].
const (
	DefaultDrainTimeout = 5 * time.Second
	DefaultMaxWatchers  = 1024
	DefaultSocketMode   = fs.FileMode(0o600)
	// DefaultMaxConnections caps the connections of one listener.
	DefaultMaxConnections = 256
	// DefaultIdleTimeout closes a connection without calls for this long.
	DefaultIdleTimeout = 5 * time.Minute
	// DefaultHandshakeTimeout bounds a connection's TLS and HTTP/2 setup.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultKeepalive is how long a connection may be silent before the
	// server pings it; a ping unanswered for as long closes it. That is
	// also the write timeout: a client that stops reading stops acking.
	DefaultKeepalive = time.Minute
)

// ServerConfig configures a [Server]. A nil Resolver, Membership or
// Registry leaves the RPCs that need it answering UNIMPLEMENTED.
type ServerConfig struct {
	// Resolver answers Resolve and WatchResolve.
	Resolver Resolver
	// Membership answers ListMembers, ListNetworks and ListCatalog.
	Membership Membership
	// Registry takes RegisterEndpoints and DeregisterEndpoints.
	Registry Registry
	// Network is this gateway's network: the from_network of queries that
	// give none. If empty, queries must give one.
	Network string
	// DrainTimeout bounds how long a stopping server waits for calls in
	// progress before it cuts them; default [DefaultDrainTimeout] (5 s).
	// WatchResolve streams are ended at once with UNAVAILABLE; gRPC health
	// Watch streams see NOT_SERVING and are cut at the timeout.
	DrainTimeout time.Duration
	// MaxWatchers caps concurrent WatchResolve streams over all listeners;
	// default [DefaultMaxWatchers]. Beyond it, RESOURCE_EXHAUSTED.
	MaxWatchers int
	// SocketMode is the permission of unix sockets ServeUnix creates;
	// default [DefaultSocketMode] (0600: the gateway's user only).
	SocketMode fs.FileMode
	// MaxConnections caps the connections each listener holds at once;
	// more wait in the listen backlog. Default [DefaultMaxConnections].
	MaxConnections int
	// IdleTimeout closes a connection that has had no call open for this
	// long; default [DefaultIdleTimeout]. Watches are calls: a watching
	// connection is never idle.
	IdleTimeout time.Duration
	// Access authorizes each call of a ServeTLS caller; its zero value
	// lets every authenticated caller read and none register. Unix socket
	// callers may make every call. See [AccessPolicy].
	Access AccessPolicy
	// Logger receives serving events and failed calls; every call is
	// logged at debug level. Nil discards.
	Logger *slog.Logger
}

// Server serves ewgate's gRPC API, with gRPC health and reflection, on any
// number of listeners. It is safe for concurrent use.
type Server struct {
	cfg       ServerConfig
	log       *slog.Logger
	access    access
	accessErr error // an invalid cfg.Access: every serve method fails with it
	watchers  atomic.Int64
	denied    atomic.Uint64
	// changes wakes the watchers of every listener after a change the
	// Resolver reports; relay feeds it while any listener serves.
	changes *broadcast
	relay   relay
}

// NewServer returns a Server for cfg, with defaults filled in. If
// cfg.Access names an invalid SPIFFE ID or trust domain, every serve
// method returns that error without serving.
func NewServer(cfg ServerConfig) *Server {
	cfg.DrainTimeout = cmp.Or(cfg.DrainTimeout, DefaultDrainTimeout)
	cfg.MaxWatchers = cmp.Or(cfg.MaxWatchers, DefaultMaxWatchers)
	cfg.SocketMode = cmp.Or(cfg.SocketMode, DefaultSocketMode)
	cfg.MaxConnections = cmp.Or(cfg.MaxConnections, DefaultMaxConnections)
	cfg.IdleTimeout = cmp.Or(cfg.IdleTimeout, DefaultIdleTimeout)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	acc, err := newAccess(cfg.Access)
	s := &Server{cfg: cfg, log: log, access: acc, accessErr: err, changes: newBroadcast()}
	s.relay.out = s.changes
	if cfg.Resolver != nil {
		s.relay.changed = cfg.Resolver.Changed()
	}
	return s
}

// Watchers returns the number of WatchResolve streams open, for metrics.
func (s *Server) Watchers() int { return int(s.watchers.Load()) }

// Serve serves plaintext on lis until ctx is done, then stops gracefully
// and returns nil; it closes lis. It refuses, before serving, a listener
// that is neither a unix socket nor on a loopback address: remote callers
// need ServeTLS.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	if err := checkLocal(lis.Addr()); err != nil {
		lis.Close()
		return err
	}
	return s.serve(ctx, lis, insecure.NewCredentials())
}

// ServeUnix serves plaintext on a unix socket at path, with permissions
// ServerConfig.SocketMode, until ctx is done, then stops gracefully,
// removes the socket and returns nil. A socket file left by a process
// that no longer answers is replaced; one in use is an error.
func (s *Server) ServeUnix(ctx context.Context, path string) error {
	lis, err := listenUnix(path, s.cfg.SocketMode)
	if err != nil {
		return err
	}
	return s.serve(ctx, lis, insecure.NewCredentials())
}

// ServeTLS serves on lis with TLS configuration tlsCfg, meant to come from
// identity.ServerTLSConfig (SPIFFE mTLS: only authorized callers get in),
// until ctx is done, then stops gracefully and returns nil; it closes lis.
// The "h2" protocol is added to tlsCfg's NextProtos on a copy.
func (s *Server) ServeTLS(ctx context.Context, lis net.Listener, tlsCfg *tls.Config) error {
	if tlsCfg == nil {
		lis.Close()
		return errors.New("api: ServeTLS needs a TLS configuration")
	}
	return s.serve(ctx, lis, credentials.NewTLS(tlsCfg))
}

// serve runs one gRPC server on lis until ctx is done.
func (s *Server) serve(ctx context.Context, lis net.Listener, creds credentials.TransportCredentials) error {
	if s.accessErr != nil {
		lis.Close()
		return s.accessErr
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	svc := &service{srv: s, stopping: make(chan struct{})}
	lis = netutil.LimitListener(lis, s.cfg.MaxConnections)
	gs := grpc.NewServer(grpc.Creds(creds),
		grpc.ConnectionTimeout(DefaultHandshakeTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: s.cfg.IdleTimeout, Time: DefaultKeepalive, Timeout: DefaultKeepalive,
		}),
		grpc.ChainUnaryInterceptor(s.logUnary, s.authorizeUnary), grpc.ChainStreamInterceptor(s.logStream, s.authorizeStream))
	ewgatev1.RegisterGatewayServiceServer(gs, svc)
	hs := health.NewServer()
	hs.SetServingStatus("", healthgrpc.HealthCheckResponse_SERVING)
	hs.SetServingStatus(ewgatev1.GatewayService_ServiceDesc.ServiceName, healthgrpc.HealthCheckResponse_SERVING)
	healthgrpc.RegisterHealthServer(gs, hs)
	reflection.Register(gs)

	var wg sync.WaitGroup
	defer wg.Wait()
	defer s.relay.acquire()()
	served := make(chan error, 1)
	wg.Go(func() { served <- gs.Serve(lis) })
	addr := lis.Addr()
	s.log.Info("serving gRPC API", "address", addr.String(), "network", addr.Network(), "security", creds.Info().SecurityProtocol)

	select {
	case err := <-served:
		// Serve fails only on a listener error; stop what it started.
		cancel()
		gs.Stop()
		return fmt.Errorf("api: serve on %s: %w", addr, err)
	case <-ctx.Done():
	}
	hs.Shutdown() // NOT_SERVING, for callers that check while draining
	close(svc.stopping)
	drained := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(drained)
	}()
	timer := time.NewTimer(s.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-drained:
	case <-timer.C:
		s.log.Warn("gRPC API drain timed out; closing calls in progress", "address", addr.String(), "timeout", s.cfg.DrainTimeout)
		gs.Stop()
		<-drained
	}
	<-served
	s.log.Info("gRPC API stopped", "address", addr.String())
	return nil
}

// checkLocal refuses addresses other than unix sockets and loopback TCP.
func checkLocal(addr net.Addr) error {
	switch a := addr.(type) {
	case *net.UnixAddr:
		return nil
	case *net.TCPAddr:
		if a.IP.IsLoopback() {
			return nil
		}
	}
	return fmt.Errorf("api: plaintext is served only on unix sockets and loopback, not on %s %s: use ServeTLS", addr.Network(), addr)
}

// listenUnix listens on a unix socket at path with permissions mode,
// replacing a stale socket file.
func listenUnix(path string, mode fs.FileMode) (net.Listener, error) {
	lis, err := net.Listen("unix", path)
	if errors.Is(err, syscall.EADDRINUSE) {
		if c, derr := net.DialTimeout("unix", path, time.Second); derr == nil {
			c.Close()
			return nil, fmt.Errorf("api: unix socket %s is in use by a running server: %w", path, err)
		}
		// Left by a process that died: only a socket file is replaced.
		if fi, serr := os.Lstat(path); serr == nil && fi.Mode().Type() == fs.ModeSocket {
			if rerr := os.Remove(path); rerr != nil {
				return nil, fmt.Errorf("api: remove stale unix socket: %w", rerr)
			}
			lis, err = net.Listen("unix", path)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("api: listen on unix socket: %w", err)
	}
	if err := os.Chmod(path, mode); err != nil {
		lis.Close()
		return nil, fmt.Errorf("api: unix socket permissions: %w", err)
	}
	return lis, nil
}
