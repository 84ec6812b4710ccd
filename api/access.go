package api

import (
	"context"
	"fmt"
	"net"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
	"github.com/ewgate/ewgate/identity"
)

// AccessPolicy says which SPIFFE IDs may make which calls over ServeTLS.
// The TLS handshake has already authenticated the caller (and applied the
// handshake's own policy); AccessPolicy then authorizes each call.
//
// Callers on the unix socket of ServeUnix have no SPIFFE ID: the socket's
// file permissions (ServerConfig.SocketMode) govern them, and they may make
// every call. Plaintext callers on loopback TCP (Serve) may read but never
// register: any local user can reach a loopback port.
type AccessPolicy struct {
	// Read allows Resolve, WatchResolve, ListMembers, ListNetworks,
	// ListCatalog and reflection. The zero Policy allows every caller the
	// handshake admitted. gRPC health is open to every such caller, so
	// that a registrar can check the server it registers with.
	Read identity.Policy
	// Register allows RegisterEndpoints and DeregisterEndpoints. The zero
	// Policy allows no caller over TLS: registering an endpoint steers
	// traffic, so each registrar must be named.
	Register identity.Policy
}

// access is an AccessPolicy compiled.
type access struct {
	read, register *identity.Matcher
}

func newAccess(p AccessPolicy) (access, error) {
	read, err := identity.NewMatcher(p.Read)
	if err != nil {
		return access{}, fmt.Errorf("api: read policy: %w", err)
	}
	register, err := identity.NewMatcher(p.Register)
	if err != nil {
		return access{}, fmt.Errorf("api: register policy: %w", err)
	}
	return access{read: read, register: register}, nil
}

// Caller identities that are not SPIFFE IDs, as Registry.Register sees
// them.
const (
	// CallerLocal is a caller on the unix socket.
	CallerLocal = "local"
)

// registerMethods are the calls the Register policy governs.
var registerMethods = map[string]bool{
	ewgatev1.GatewayService_RegisterEndpoints_FullMethodName:   true,
	ewgatev1.GatewayService_DeregisterEndpoints_FullMethodName: true,
}

// callerKey is the context key of the authorized caller's identity.
type callerKey struct{}

// callerIdentity returns the identity authorize put in ctx.
func callerIdentity(ctx context.Context) string {
	id, _ := ctx.Value(callerKey{}).(string)
	return id
}

// authorize decides whether the caller of ctx may call method and returns
// ctx carrying the caller's identity, or a PERMISSION_DENIED status.
func (s *Server) authorize(ctx context.Context, method string) (context.Context, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ctx, status.Error(codes.Internal, "no peer for the call")
	}
	register := registerMethods[method]
	health := strings.HasPrefix(method, "/grpc.health.v1.Health/")
	var who string
	switch ai := p.AuthInfo.(type) {
	case credentials.TLSInfo:
		id, err := identity.PeerID(ai.State)
		if err != nil {
			return ctx, s.deny(method, p.Addr.String(), "the caller has no SPIFFE ID")
		}
		who = id.String()
		m, what := s.access.read, "read"
		if register {
			m, what = s.access.register, "register"
		}
		if !health && (register || !m.Empty()) && !m.Allows(id) {
			return ctx, s.deny(method, who, fmt.Sprintf("the %s policy (%s) does not allow %s; set --api-%s-ids or --api-%s-id-prefixes", what, m, who, what, what))
		}
	default:
		if _, unix := p.Addr.(*net.UnixAddr); unix {
			who = CallerLocal
			break
		}
		if register {
			return ctx, s.deny(method, p.Addr.String(), "registration needs the unix socket or SPIFFE mTLS: plaintext TCP callers are anyone on this host")
		}
		who = p.Addr.String()
	}
	return context.WithValue(ctx, callerKey{}, who), nil
}

// deny counts and logs a refused call and returns its status.
func (s *Server) deny(method, who, why string) error {
	s.denied.Add(1)
	short := method[strings.LastIndexByte(method, '/')+1:]
	s.log.Warn("API call denied", "method", short, "caller", who, "reason", why)
	return status.Errorf(codes.PermissionDenied, "%s denied to %s: %s", short, who, why)
}

// authorizeUnary applies authorize to every unary call.
func (s *Server) authorizeUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := s.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// authorizeStream applies authorize to every streaming call.
func (s *Server) authorizeStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := s.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, &callerStream{ServerStream: ss, ctx: ctx})
}

// callerStream is a ServerStream whose context carries the caller.
type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *callerStream) Context() context.Context { return c.ctx }

// Denied returns the number of calls refused by the access policy, for
// metrics.
func (s *Server) Denied() uint64 { return s.denied.Load() }
