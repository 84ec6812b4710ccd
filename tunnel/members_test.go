package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"sync"
	"testing"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
)

// memberTable is a gossip view for tests: the members a gateway would
// know from gossip, which the test sets. (Gossip itself is exercised by
// the gateway's tests; here it only supplies the announced claims.)
type memberTable struct {
	mu      sync.Mutex
	members map[string]announced // by name
}

type announced struct {
	m    Member
	addr string // tunnel address
}

func newMemberTable() *memberTable { return &memberTable{members: make(map[string]announced)} }

// announce records member m with tunnel address addr.
func (t *memberTable) announce(m Member, addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.members[m.Name] = announced{m, addr}
}

func (t *memberTable) Member(name string) (Member, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a, ok := t.members[name]
	return a.m, ok
}

func (t *memberTable) MembersAt(addr string) []Member {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Member
	for _, a := range t.members {
		if a.addr == addr {
			out = append(out, a.m)
		}
	}
	return out
}

// boundPair is a server gateway "gw-b" of network "net-b" and a client
// gateway "gw-a" of "net-a" that both know each other from their member
// tables.
type boundPair struct {
	ca             *identity.DevCA
	server, client *Endpoint
	serverMembers  *memberTable // what the server knows
	clientMembers  *memberTable // what the client knows
	accepted       chan Member  // the Peer of each stream the server accepts
}

func newBoundPair(t *testing.T, tr Transport) *boundPair {
	t.Helper()
	p := &boundPair{ca: newCA(t, "a.test"), serverMembers: newMemberTable(), clientMembers: newMemberTable(), accepted: make(chan Member, 16)}
	p.server = newEndpoint(t, "127.0.0.1:0", Config{
		Source:  newSource(t, p.ca, "/gw/b"),
		Name:    "gw-b",
		Members: p.serverMembers,
		Handler: func(ctx context.Context, h Header, s *Stream) {
			p.accepted <- s.Peer()
			echo(ctx, h, s)
		},
	})
	p.client = newEndpoint(t, "127.0.0.1:0", Config{Source: newSource(t, p.ca, "/gw/a"), Name: "gw-a", Members: p.clientMembers, Transport: tr})
	p.serverMembers.announce(Member{Name: "gw-a", Network: "net-a", ID: "spiffe://a.test/gw/a"}, p.client.Addr().String())
	p.clientMembers.announce(Member{Name: "gw-b", Network: "net-b", ID: "spiffe://a.test/gw/b"}, p.server.Addr().String())
	return p
}

// TestMemberBinding: a link is bound to the member its dialer names and
// the member announcing the dialed address; a streams knows its member
// and network on both sides.
func TestMemberBinding(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		leakcheck.Check(t)
		ctx := testContext(t)
		p := newBoundPair(t, tr)
		s, err := p.client.Dial(ctx, p.server.Addr().String(), key("x.test"))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		checkEcho(t, s, 7)
		if got, want := <-p.accepted, (Member{Name: "gw-a", Network: "net-a", ID: "spiffe://a.test/gw/a"}); got != want {
			t.Errorf("server's stream Peer %+v, want %+v", got, want)
		}
		if got, want := s.Peer(), (Member{Name: "gw-b", Network: "net-b", ID: "spiffe://a.test/gw/b"}); got != want {
			t.Errorf("client's stream Peer %+v, want %+v", got, want)
		}
		if st := peerStats1(t, p.client.Stats(), Outbound); st.Member != "gw-b" || st.Network != "net-b" {
			t.Errorf("client stats %+v", st)
		}
	})
}

// TestMemberBindingRefusals: each way a link's peer can differ from what
// gossip says is refused, counted on both sides, and runs no handler.
func TestMemberBindingRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setUp changes what gossip says (or the client's name).
		setUp func(t *testing.T, p *boundPair) *Endpoint
		// wantErr is what the client's Dial wraps; clientReason and
		// serverReason (if any) are counted by the client and the server.
		wantErr      error
		clientReason string
		serverReason string
	}{{
		// The dialer names a member the server does not know as live.
		name: "unknown member",
		setUp: func(t *testing.T, p *boundPair) *Endpoint {
			p.serverMembers.announce(Member{Name: "gw-a", Network: "net-a", ID: "spiffe://a.test/gw/a"}, "")
			return p.clientNamed(t, "gw-z")
		},
		wantErr: ErrRejected, clientReason: ReasonNotMember, serverReason: ReasonNotMember,
	}, {
		// gw-a announces ID X, its link presents Y: the server refuses.
		name: "member announces another ID",
		setUp: func(t *testing.T, p *boundPair) *Endpoint {
			p.serverMembers.announce(Member{Name: "gw-a", Network: "net-a", ID: "spiffe://a.test/gw/other"}, "")
			return p.client
		},
		wantErr: ErrRejected, clientReason: ReasonIDMismatch, serverReason: ReasonIDMismatch,
	}, {
		// The member announcing the server's address announces another
		// ID than the server presents: the dialer refuses before it
		// sends its hello.
		name: "peer presents another member's ID",
		setUp: func(t *testing.T, p *boundPair) *Endpoint {
			p.clientMembers.announce(Member{Name: "gw-b", Network: "net-b", ID: "spiffe://a.test/gw/c"}, p.server.Addr().String())
			return p.client
		},
		wantErr: ErrWrongPeer, clientReason: ReasonWrongPeer,
	}, {
		// No live member announces the dialed address at all.
		name: "nobody announces the address",
		setUp: func(t *testing.T, p *boundPair) *Endpoint {
			p.clientMembers.announce(Member{Name: "gw-b", Network: "net-b", ID: "spiffe://a.test/gw/b"}, "127.0.0.1:1")
			return p.client
		},
		wantErr: ErrWrongPeer, clientReason: ReasonWrongPeer,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			forTransports(t, func(t *testing.T, tr Transport) {
				leakcheck.Check(t)
				ctx := testContext(t)
				p := newBoundPair(t, tr)
				client := tc.setUp(t, p)
				_, err := client.Dial(ctx, p.server.Addr().String(), key("x.test"))
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Dial error %v, want %v", err, tc.wantErr)
				}
				t.Logf("Dial error: %v", err)
				if st := peerStats1(t, client.Stats(), Outbound); st.HandshakeFailures[tc.clientReason] != 1 || st.Connected {
					t.Errorf("client stats %+v, want one %s", st, tc.clientReason)
				}
				if tc.serverReason != "" {
					awaitInboundRejection(t, p.server, tc.serverReason)
				}
				select {
				case m := <-p.accepted:
					t.Errorf("the server accepted a stream from %+v", m)
				default:
				}
			})
		})
	}
}

// clientNamed starts another client with the client's identity and
// gossip view under another member name.
func (p *boundPair) clientNamed(t *testing.T, name string) *Endpoint {
	cfg := p.client.cfg
	cfg.Name, cfg.Logger = name, nil
	return newEndpoint(t, "127.0.0.1:0", cfg)
}

// awaitInboundRejection waits until e has counted a refusal for reason.
func awaitInboundRejection(t *testing.T, e *Endpoint, reason string) {
	t.Helper()
	await.True(t, testTimeout, "inbound rejection "+reason, func() bool {
		return e.Stats().InboundRejections[reason] > 0
	})
	if rej := e.Stats().InboundRejections; rej[reason] != 1 {
		t.Errorf("InboundRejections %v, want one %s", rej, reason)
	}
}

// TestBadHello: a dialer that passes TLS but sends a malformed hello is
// refused with a reason it can read, counted as bad_hello.
func TestBadHello(t *testing.T) {
	leakcheck.Check(t)
	ctx := testContext(t)
	p := newBoundPair(t, TransportTCP)
	cfg := identity.ClientTLSConfig(newSource(t, p.ca, "/gw/a"), nil)
	cfg.NextProtos = []string{ALPN}
	var d tls.Dialer
	d.Config = cfg
	c, err := d.DialContext(ctx, "tcp", p.server.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{99, 0}); err != nil {
		t.Fatal(err)
	}
	_, err = readVerdict(c)
	var rej *rejectedError
	if !errors.As(err, &rej) || rej.reason != ReasonBadHello {
		t.Fatalf("verdict %v, want a %s refusal", err, ReasonBadHello)
	}
	t.Logf("verdict: %v", err)
	awaitInboundRejection(t, p.server, ReasonBadHello)
}
