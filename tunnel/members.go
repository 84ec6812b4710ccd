package tunnel

import (
	"crypto/tls"
	"fmt"

	"github.com/ewgate/ewgate/identity"
)

// Member is a peer gateway as gossip announces it. A link bound to a
// member carries only that member's traffic, and its streams know the
// member's network.
type Member struct {
	// Name is the member's gossip name.
	Name string
	// Network is the member's network.
	Network string
	// ID is the SPIFFE ID the member announces for itself.
	ID string
}

// Members is the view of live gossip members that binds links to them
// (the gateway implements it over its gossip node). Its methods are
// called once per link setup and must be safe for concurrent use.
type Members interface {
	// Member returns the live member called name, if it is not this
	// gateway.
	Member(name string) (Member, bool)
	// MembersAt returns the live members, other than this gateway, that
	// announce addr as their tunnel address.
	MembersAt(addr string) []Member
}

// expectPeer checks, on the dialing side, that the peer at addr
// presented the ID that a live member announcing addr announces, and
// returns that member. Without Members it returns the peer's ID alone.
// The Authorizer has already allowed the ID.
func (e *Endpoint) expectPeer(addr string, state tls.ConnectionState) (Member, error) {
	id, err := identity.PeerID(state)
	if err != nil { // cannot happen after ClientTLSConfig's verification
		return Member{}, fmt.Errorf("peer without SPIFFE ID: %w", err)
	}
	got := id.String()
	if e.cfg.Members == nil {
		return Member{ID: got}, nil
	}
	ms := e.cfg.Members.MembersAt(addr)
	for _, m := range ms {
		if m.ID == got {
			return m, nil
		}
	}
	if len(ms) == 0 {
		return Member{}, fmt.Errorf("%w: no live member announces %s (the peer there is %s)", ErrWrongPeer, addr, got)
	}
	return Member{}, fmt.Errorf("%w: the peer at %s presents %s, but member %s there announces %s", ErrWrongPeer, addr, got, ms[0].Name, ms[0].ID)
}
