package peer

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/hashicorp/memberlist"
)

// Gossip profiles: memberlist's timing presets.
const (
	// ProfileLAN suits gateways in one region (memberlist.DefaultLANConfig):
	// 1 s probes, 30 s push/pull. It is the default.
	ProfileLAN = "lan"
	// ProfileWAN suits gateways across regions (memberlist.DefaultWANConfig):
	// 5 s probes, 60 s push/pull, more patient failure detection.
	ProfileWAN = "wan"
	// ProfileLocal suits one machine (memberlist.DefaultLocalConfig): fast
	// probes and timeouts, for tests and demos.
	ProfileLocal = "local"
)

// Defaults applied by [Start] to zero [Config] fields.
const (
	DefaultBindAddr            = "0.0.0.0"
	DefaultDeadNodeReclaimTime = 10 * time.Second
	DefaultJoinBackoff         = time.Second
	DefaultJoinBackoffMax      = 30 * time.Second
	// DefaultReconnectInterval is how often a node tries to rejoin failed
	// members (and its seeds while alone), plus up to 20% jitter.
	DefaultReconnectInterval = 10 * time.Second
	// DefaultReconnectTimeout is how long a failed member is retried before
	// it is forgotten: Serf's default, long enough to outlast a WAN outage
	// repaired the next day.
	DefaultReconnectTimeout = 24 * time.Hour
	// DefaultMaxStateBytes bounds a received push/pull state and a received
	// reliably sent entry or delta, after decompression: 8 networks of
	// 10,000 services (3 ports, 2 subsets, with definitions) take about
	// 30 MB. memberlist itself refuses push/pull user state over 20 MiB as
	// sent (compressed, about 2.3 MB for those).
	DefaultMaxStateBytes = 64 << 20
	// DefaultMaxEntryBytes bounds one received entry (after
	// decompression): 10,000 services of one network take about 4 MB.
	DefaultMaxEntryBytes = 16 << 20
)

// ErrNoKeys is returned by [Start] when no gossip key is configured and
// plaintext gossip was not allowed with Config.Insecure.
var ErrNoKeys = errors.New("peer: gossip keys required (set Insecure to gossip in plaintext)")

// Config configures one gateway's gossip node. The zero value of every
// field but Network and Keys is usable; [Start] applies the documented
// defaults and rejects an invalid Config with an error naming the field.
type Config struct {
	// Name is the node's unique name in the cluster. Default: the hostname.
	Name string
	// Network is the network this gateway serves. Required.
	Network string

	// BindAddr and BindPort are where gossip listens, UDP and TCP on one
	// port. Default 0.0.0.0; port 0 picks a free port.
	BindAddr string
	BindPort int
	// AdvertiseAddr and AdvertisePort are what other nodes dial. Default:
	// the bind address (a private IP of the host when bound to 0.0.0.0) and
	// the bound port.
	AdvertiseAddr string
	AdvertisePort int

	// Join lists host:port seeds. Joining runs in the background and is
	// retried with exponential backoff (JoinBackoff up to JoinBackoffMax,
	// with jitter) until one join succeeds, so a gateway that starts first
	// does not fail. See [Node.WaitJoined].
	Join           []string
	JoinBackoff    time.Duration // default DefaultJoinBackoff
	JoinBackoffMax time.Duration // default DefaultJoinBackoffMax

	// Keys are AES keys (16, 24 or 32 bytes) for gossip encryption and
	// authentication; the first is the primary used to send, all are tried
	// to receive. Required unless Insecure. See [LoadKeyring] and
	// [Node.SetKeys].
	Keys [][]byte
	// Insecure allows gossip in plaintext when Keys is empty. Anyone who
	// can reach the gossip port can then join and inject catalog entries:
	// demos only.
	Insecure bool
	// MeshID becomes memberlist's label: nodes with different MeshIDs
	// ignore each other's packets. It does not authenticate. At most 255
	// bytes.
	MeshID string
	// Profile selects memberlist's timings: ProfileLAN (default),
	// ProfileWAN or ProfileLocal.
	Profile string

	// PassthroughAddr (host:port) is where other networks dial this
	// gateway's AUTO_PASSTHROUGH listener. Advertised in the node meta.
	PassthroughAddr string
	// TunnelAddr (host:port) is this gateway's tunnel listener; empty if it
	// has none. Advertised in the node meta.
	TunnelAddr string
	// SPIFFEID is this gateway's identity, advertised in the node meta.
	// Default: the ID of Identity's SVID, which it must equal when both
	// are set.
	SPIFFEID string

	// Identity, if set, signs this node's entries with its SVID, and makes
	// the node accept another origin's entry only if it is signed by a
	// certificate chain that verifies against Identity's trust bundles,
	// whose SPIFFE ID AllowGateway allows, and which equals the SPIFFE ID
	// the origin member announces in its meta. Unsigned entries are then
	// refused (RejectUnsigned): the gateways of one mesh either all have
	// identities or none. Without Identity, any node holding the gossip
	// key can publish under any name (docs/security.md).
	Identity IdentitySource
	// AllowGateway reports whether a verified SPIFFE ID may publish a
	// gateway's entries (a nil error allows it), for example the peer
	// policy of the tunnels. It is called once per new certificate chain.
	// Default: only the SPIFFE ID of Identity's SVID, which suits
	// gateways that share one service account. Ignored without Identity.
	AllowGateway func(spiffeID string) error

	// ReconnectInterval is how often the node tries to rejoin members that
	// failed (were declared dead without leaving gracefully), so that the
	// two sides of a network partition find each other again once it heals:
	// memberlist itself stops contacting a dead node soon after declaring it
	// dead. Each round joins up to three failed members at random and, when
	// no other member is live and the first join to Join succeeded, the
	// seeds in Join, so that a node whose peers all restarted on the same
	// addresses finds them. Up to 20% jitter is added. Default
	// DefaultReconnectInterval; negative disables reconnecting. It stops on
	// Leave and Shutdown.
	ReconnectInterval time.Duration
	// ReconnectTimeout is how long a failed member is retried before it is
	// forgotten (at most 256 are remembered; the first failed goes first).
	// Default DefaultReconnectTimeout.
	ReconnectTimeout time.Duration

	// DeadNodeReclaimTime lets a node that restarts under the same name on
	// a new address rejoin once its old incarnation has been dead this long.
	// Default DefaultDeadNodeReclaimTime; negative disables reclaiming.
	DeadNodeReclaimTime time.Duration

	// MaxStateBytes bounds received push/pull state and reliably sent
	// messages (after decompression), and the entries this node holds
	// together: a remote entry that would make them exceed it is refused
	// alone (RejectStateBudget), so that the state this node sends in
	// push/pull stays within what its peers accept. Default
	// DefaultMaxStateBytes.
	MaxStateBytes int
	// MaxEntryBytes bounds one entry, received (refused alone,
	// RejectEntryTooLarge: the rest of a push/pull state still merges) or
	// published (Publish fails). Default DefaultMaxEntryBytes, at most
	// MaxStateBytes.
	MaxEntryBytes int

	// Logger receives the node's and memberlist's logs. Default: discard.
	Logger *slog.Logger

	// tuneMemberlist, if set, adjusts memberlist's configuration before it starts.
	// Tests only (they shorten GossipToTheDeadTime).
	tuneMemberlist func(*memberlist.Config)
}

// withDefaults returns a copy of c with defaults applied, or an error
// naming the first invalid field.
func (c Config) withDefaults() (Config, error) {
	if c.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return c, fmt.Errorf("peer: Config.Name empty and no hostname: %w", err)
		}
		c.Name = h
	}
	if c.Network == "" {
		return c, errors.New("peer: Config.Network is required")
	}
	if c.BindAddr == "" {
		c.BindAddr = DefaultBindAddr
	}
	if c.BindPort < 0 || c.BindPort > 65535 {
		return c, fmt.Errorf("peer: Config.BindPort %d out of range", c.BindPort)
	}
	if c.AdvertisePort < 0 || c.AdvertisePort > 65535 {
		return c, fmt.Errorf("peer: Config.AdvertisePort %d out of range", c.AdvertisePort)
	}
	if len(c.Keys) == 0 && !c.Insecure {
		return c, ErrNoKeys
	}
	for i, k := range c.Keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return c, fmt.Errorf("peer: Config.Keys[%d]: %w", i, err)
		}
	}
	if len(c.MeshID) > memberlist.LabelMaxSize {
		return c, fmt.Errorf("peer: Config.MeshID longer than %d bytes", memberlist.LabelMaxSize)
	}
	switch c.Profile {
	case "":
		c.Profile = ProfileLAN
	case ProfileLAN, ProfileWAN, ProfileLocal:
	default:
		return c, fmt.Errorf("peer: Config.Profile %q: want %q, %q or %q", c.Profile, ProfileLAN, ProfileWAN, ProfileLocal)
	}
	for _, f := range []struct{ name, addr string }{
		{"PassthroughAddr", c.PassthroughAddr},
		{"TunnelAddr", c.TunnelAddr},
	} {
		if f.addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(f.addr); err != nil {
			return c, fmt.Errorf("peer: Config.%s: %w", f.name, err)
		}
	}
	if c.DeadNodeReclaimTime == 0 {
		c.DeadNodeReclaimTime = DefaultDeadNodeReclaimTime
	}
	if c.JoinBackoff <= 0 {
		c.JoinBackoff = DefaultJoinBackoff
	}
	if c.JoinBackoffMax <= 0 {
		c.JoinBackoffMax = DefaultJoinBackoffMax
	}
	c.JoinBackoffMax = max(c.JoinBackoffMax, c.JoinBackoff)
	if c.ReconnectInterval == 0 {
		c.ReconnectInterval = DefaultReconnectInterval
	}
	if c.ReconnectTimeout < 0 {
		return c, fmt.Errorf("peer: Config.ReconnectTimeout %v is negative", c.ReconnectTimeout)
	}
	if c.ReconnectTimeout == 0 {
		c.ReconnectTimeout = DefaultReconnectTimeout
	}
	if c.MaxStateBytes <= 0 {
		c.MaxStateBytes = DefaultMaxStateBytes
	}
	if c.MaxEntryBytes <= 0 {
		c.MaxEntryBytes = DefaultMaxEntryBytes
	}
	c.MaxEntryBytes = min(c.MaxEntryBytes, c.MaxStateBytes)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// memberlistConfig returns memberlist's preset for the profile.
func memberlistConfig(profile string) *memberlist.Config {
	switch profile {
	case ProfileWAN:
		return memberlist.DefaultWANConfig()
	case ProfileLocal:
		return memberlist.DefaultLocalConfig()
	default:
		return memberlist.DefaultLANConfig()
	}
}
