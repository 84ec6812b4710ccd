package api

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/sni"
)

// service implements ewgatev1.GatewayServiceServer for one listener.
type service struct {
	ewgatev1.UnimplementedGatewayServiceServer

	srv      *Server
	stopping chan struct{} // closed when the listener stops: ends watches
}

// query is what ResolveRequest and WatchResolveRequest have in common.
type query interface {
	GetSni() string
	GetService() *ewgatev1.ServiceKey
	GetFromNetwork() string
}

// Resolve implements GatewayService.Resolve.
func (s *service) Resolve(_ context.Context, req *ewgatev1.ResolveRequest) (*ewgatev1.ResolveResponse, error) {
	r, err := s.resolver()
	if err != nil {
		return nil, err
	}
	key, from, err := s.parseQuery(req)
	if err != nil {
		return nil, err
	}
	res, err := r.Resolve(key, from)
	if err != nil {
		return nil, s.resolveError(key, err)
	}
	return &ewgatev1.ResolveResponse{Sni: res.SNI, Service: keyProto(res.Key), Targets: targetsProto(res.Targets)}, nil
}

// WatchResolve implements GatewayService.WatchResolve. Each watcher keeps
// only the latest answer: when Send blocks because the client reads
// slowly, changes meanwhile merely mark the broadcast, and the next answer
// sent is the state after all of them.
func (s *service) WatchResolve(req *ewgatev1.WatchResolveRequest, stream ewgatev1.GatewayService_WatchResolveServer) error {
	r, err := s.resolver()
	if err != nil {
		return err
	}
	key, from, err := s.parseQuery(req)
	if err != nil {
		return err
	}
	if n := s.srv.watchers.Add(1); n > int64(s.srv.cfg.MaxWatchers) {
		s.srv.watchers.Add(-1)
		return status.Errorf(codes.ResourceExhausted, "too many watchers (limit %d)", s.srv.cfg.MaxWatchers)
	}
	defer s.srv.watchers.Add(-1)

	ctx := stream.Context()
	var last *ewgatev1.WatchResolveResponse
	for {
		// Take the wake-up channel before reading the state, so that a
		// change made while resolving wakes the next round.
		changed := s.srv.changes.wait()
		resp := &ewgatev1.WatchResolveResponse{Sni: key.SNI(), Service: keyProto(key)}
		res, err := r.Resolve(key, from)
		var re *discovery.RouteError
		switch {
		case errors.As(err, &re):
			// Not offered (yet): found stays false.
		case err != nil:
			return s.resolveError(key, err)
		default:
			resp.Found, resp.Sni, resp.Service, resp.Targets = true, res.SNI, keyProto(res.Key), targetsProto(res.Targets)
		}
		if last == nil || !proto.Equal(resp, last) {
			if err := stream.Send(resp); err != nil {
				return err // the client went away
			}
			last = resp
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.stopping:
			return status.Error(codes.Unavailable, "server stopping")
		case <-changed:
		}
	}
}

// ListMembers implements GatewayService.ListMembers.
func (s *service) ListMembers(context.Context, *ewgatev1.ListMembersRequest) (*ewgatev1.ListMembersResponse, error) {
	m := s.srv.cfg.Membership
	if m == nil {
		return nil, status.Error(codes.Unimplemented, "this gateway has no gossip membership")
	}
	members := m.Members()
	slices.SortFunc(members, func(a, b Member) int { return cmp.Compare(a.Name, b.Name) })
	resp := &ewgatev1.ListMembersResponse{Members: make([]*ewgatev1.Member, len(members))}
	for i, mb := range members {
		resp.Members[i] = &ewgatev1.Member{
			Name:               mb.Name,
			Network:            mb.Network,
			PassthroughAddress: mb.PassthroughAddress,
			TunnelAddress:      mb.TunnelAddress,
			SpiffeId:           mb.SPIFFEID,
			State:              memberStates[mb.State], // unknown: UNSPECIFIED
		}
	}
	return resp, nil
}

var memberStates = map[MemberState]ewgatev1.MemberState{
	MemberAlive: ewgatev1.MemberState_MEMBER_STATE_ALIVE,
	MemberDead:  ewgatev1.MemberState_MEMBER_STATE_DEAD,
	MemberLeft:  ewgatev1.MemberState_MEMBER_STATE_LEFT,
}

// ListNetworks implements GatewayService.ListNetworks.
func (s *service) ListNetworks(context.Context, *ewgatev1.ListNetworksRequest) (*ewgatev1.ListNetworksResponse, error) {
	m := s.srv.cfg.Membership
	if m == nil {
		return nil, status.Error(codes.Unimplemented, "this gateway has no gossip membership")
	}
	nets := m.Networks()
	slices.SortFunc(nets, func(a, b Network) int { return cmp.Compare(a.Name, b.Name) })
	resp := &ewgatev1.ListNetworksResponse{Networks: make([]*ewgatev1.Network, len(nets))}
	for i, n := range nets {
		resp.Networks[i] = &ewgatev1.Network{Name: n.Name, Gateways: uint32(max(n.Gateways, 0)), Services: uint32(max(n.Services, 0))}
	}
	return resp, nil
}

// ListCatalog implements GatewayService.ListCatalog.
func (s *service) ListCatalog(context.Context, *ewgatev1.ListCatalogRequest) (*ewgatev1.ListCatalogResponse, error) {
	m := s.srv.cfg.Membership
	if m == nil {
		return nil, status.Error(codes.Unimplemented, "this gateway has no gossip membership")
	}
	entries := m.Catalog()
	slices.SortFunc(entries, func(a, b CatalogEntry) int {
		return cmp.Or(cmp.Compare(a.Network, b.Network), cmp.Compare(a.Host, b.Host), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Subset, b.Subset))
	})
	resp := &ewgatev1.ListCatalogResponse{Entries: make([]*ewgatev1.CatalogEntry, len(entries))}
	for i, e := range entries {
		pe := &ewgatev1.CatalogEntry{Network: e.Network, Host: e.Host, Port: uint32(e.Port), Subset: e.Subset, Gateways: e.Gateways}
		for _, lc := range e.Healthy {
			pe.Healthy = append(pe.Healthy, &ewgatev1.LocalityCount{Locality: lc.Locality, Count: lc.Count})
		}
		resp.Entries[i] = pe
	}
	return resp, nil
}

// RegisterEndpoints implements GatewayService.RegisterEndpoints.
func (s *service) RegisterEndpoints(ctx context.Context, req *ewgatev1.RegisterEndpointsRequest) (*ewgatev1.RegisterEndpointsResponse, error) {
	reg, err := s.registry()
	if err != nil {
		return nil, err
	}
	eps := make([]RegisteredEndpoint, len(req.GetEndpoints()))
	for i, e := range req.GetEndpoints() {
		eps[i] = RegisteredEndpoint{
			ServiceHost: e.GetServiceHost(),
			Endpoint: discovery.Endpoint{
				Address:        e.GetAddress(),
				Ports:          e.GetPorts(),
				Labels:         e.GetLabels(),
				Network:        e.GetNetwork(),
				Locality:       e.GetLocality(),
				Weight:         e.GetWeight(),
				ServiceAccount: e.GetServiceAccount(),
			},
		}
	}
	lease, err := reg.Register(callerIdentity(ctx), req.GetRegistrar(), time.Duration(req.GetLeaseSeconds())*time.Second, eps)
	var fe *FieldError
	switch {
	case errors.As(err, &fe):
		return nil, invalidArgument(fe)
	case errors.Is(err, ErrTooManyRegistrars):
		return nil, status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, ErrLeaseHeld):
		return nil, s.srv.deny(ewgatev1.GatewayService_RegisterEndpoints_FullMethodName, callerIdentity(ctx), err.Error())
	case err != nil:
		s.srv.log.Error("registration failed", "registrar", req.GetRegistrar(), "error", err)
		return nil, status.Errorf(codes.Internal, "register: %v", err)
	}
	return &ewgatev1.RegisterEndpointsResponse{LeaseSeconds: uint32(max(lease/time.Second, 1))}, nil
}

// DeregisterEndpoints implements GatewayService.DeregisterEndpoints.
func (s *service) DeregisterEndpoints(ctx context.Context, req *ewgatev1.DeregisterEndpointsRequest) (*ewgatev1.DeregisterEndpointsResponse, error) {
	reg, err := s.registry()
	if err != nil {
		return nil, err
	}
	if err := checkRegistrar(req.GetRegistrar()); err != nil {
		var fe *FieldError
		errors.As(err, &fe)
		return nil, invalidArgument(fe)
	}
	if err := reg.Deregister(callerIdentity(ctx), req.GetRegistrar()); err != nil {
		return nil, s.srv.deny(ewgatev1.GatewayService_DeregisterEndpoints_FullMethodName, callerIdentity(ctx), err.Error())
	}
	return &ewgatev1.DeregisterEndpointsResponse{}, nil
}

func (s *service) resolver() (Resolver, error) {
	if r := s.srv.cfg.Resolver; r != nil {
		return r, nil
	}
	return nil, status.Error(codes.Unimplemented, "this gateway does not resolve")
}

func (s *service) registry() (Registry, error) {
	if r := s.srv.cfg.Registry; r != nil {
		return r, nil
	}
	return nil, status.Error(codes.Unimplemented, "this gateway takes no registrations")
}

// parseQuery returns the key and client network of a query, or an
// INVALID_ARGUMENT status naming the field at fault.
func (s *service) parseQuery(q query) (sni.Key, string, error) {
	var key sni.Key
	switch sk := q.GetService(); {
	case sk != nil:
		// The rules of sni.ParseName, as if the key came as an SNI name.
		host, err := sni.ParseHost(sk.GetHost())
		if err != nil {
			return key, "", invalidArgument(&FieldError{Field: "service.host", Reason: err.Error()})
		}
		if p := sk.GetPort(); p < 1 || p > 65535 {
			return key, "", invalidArgument(fieldErrorf("service.port", "%d is not in 1..65535", p))
		}
		if sub := sk.GetSubset(); sub != "" {
			if err := sni.CheckSubset(sub); err != nil {
				return key, "", invalidArgument(&FieldError{Field: "service.subset", Reason: err.Error()})
			}
		}
		key = sni.Key{Host: host, Port: uint16(sk.GetPort()), Subset: sk.GetSubset()}
	case q.GetSni() != "":
		var err error
		if key, err = sni.ParseName(q.GetSni()); err != nil {
			return key, "", invalidArgument(&FieldError{Field: "sni", Reason: err.Error()})
		}
	default:
		return key, "", invalidArgument(fieldErrorf("sni", "sni or service is required"))
	}
	from := cmp.Or(q.GetFromNetwork(), s.srv.cfg.Network)
	switch {
	case from == "":
		return key, "", invalidArgument(fieldErrorf("from_network", "is required: this gateway has no network of its own configured"))
	case len(from) > maxNameLen || !isToken(from):
		return key, "", invalidArgument(fieldErrorf("from_network", "%s must be at most %d printable bytes without spaces", quote(from), maxNameLen))
	}
	return key, from, nil
}

// resolveError turns an error of Resolver.Resolve into a status.
func (s *service) resolveError(key sni.Key, err error) error {
	var re *discovery.RouteError
	switch {
	case errors.As(err, &re):
		return status.Errorf(codes.NotFound, "%s: %s", key, re.Reason)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	s.srv.log.Error("resolve failed", "key", key.String(), "error", err)
	return status.Errorf(codes.Internal, "resolve %s: %v", key, err)
}

// invalidArgument returns an INVALID_ARGUMENT status for fe, with a
// google.rpc.BadRequest detail naming the field.
func invalidArgument(fe *FieldError) error {
	st := status.New(codes.InvalidArgument, fe.Error())
	detailed, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
		{Field: fe.Field, Description: fe.Reason},
	}})
	if err != nil {
		return st.Err()
	}
	return detailed.Err()
}

func keyProto(k sni.Key) *ewgatev1.ServiceKey {
	return &ewgatev1.ServiceKey{Host: k.Host, Port: uint32(k.Port), Subset: k.Subset}
}

func targetsProto(ts []discovery.ResolvedTarget) []*ewgatev1.Target {
	out := make([]*ewgatev1.Target, len(ts))
	for i, t := range ts {
		via := ewgatev1.Via_VIA_UNSPECIFIED
		switch t.Via {
		case discovery.ViaDirect:
			via = ewgatev1.Via_VIA_DIRECT
		case discovery.ViaGateway:
			via = ewgatev1.Via_VIA_GATEWAY
		}
		out[i] = &ewgatev1.Target{Address: t.Address, Weight: max(t.Weight, 1), Network: t.Network,
			Locality: t.Locality, Via: via, Gateway: t.Gateway}
	}
	return out
}
