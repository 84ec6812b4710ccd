package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/ewgate/ewgate/api"
	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/discovery/kube"
	"github.com/ewgate/ewgate/gateway"
	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/peer"
	"github.com/ewgate/ewgate/sni"
	"github.com/ewgate/ewgate/tunnel"
)

// settings are a node's settings, from --config and flags; flags win.
// JSON names are the keys of the --config YAML file.
type settings struct {
	Files        []string          `json:"files"`
	Network      string            `json:"network"`
	NodeLabels   map[string]string `json:"nodeLabels"`
	Locality     string            `json:"locality"` // gateway.Config.Locality; "": from NodeLabels
	BindAddress  string            `json:"bindAddress"`
	AdminAddress string            `json:"adminAddress"`
	// StatusAddress serves admin.StatusPath, Istio's gateway readiness
	// on its status port, beyond the node; nil: BindAddress:15021
	// (statusAddress()), "": off.
	StatusAddress *string  `json:"statusAddress"`
	DrainTimeout  duration `json:"drainTimeout"`
	// DrainDelay is how long a stopping node reports not ready, still
	// accepting connections, before its listeners close: time for load
	// balancers probing the status port to stop sending new ones.
	DrainDelay  duration `json:"drainDelay"`
	LogLevel    string   `json:"logLevel"`
	LogFormat   string   `json:"logFormat"`
	ALPN        []string `json:"alpn"`
	AnyALPN     bool     `json:"anyALPN"`
	AnyTLSMode  bool     `json:"anyTLSMode"`
	MaxConns    int      `json:"maxConnections"`
	LoopAccept  bool     `json:"loopAccept"`
	EventLoops  int      `json:"eventLoops"`
	SpreadLoops bool     `json:"spreadLoops"`
	IdleTimeout duration `json:"idleTimeout"`
	DialTimeout duration `json:"dialTimeout"`
	// ProbeInterval is gateway.Config.ProbeInterval: 0, no probes.
	ProbeInterval duration `json:"endpointProbeInterval"`
	HelloTimeout  duration `json:"helloTimeout"`
	HelloMaxBytes int      `json:"helloMaxBytes"`
	// HelloMemory is gateway.Config.HelloMemory; 0 is no bound.
	HelloMemory int64 `json:"helloMemory"`
	// ExportDefault is discovery.Node.ExportDefault: all or none.
	ExportDefault string `json:"exportDefault"`
	// TrustDomain is discovery.Node.TrustDomain, of the SPIFFE IDs that
	// summaries give this network's endpoints.
	TrustDomain string `json:"trustDomain"`

	// Kubernetes is when the Kubernetes source is on: auto, on or off
	// (see kubeMode).
	Kubernetes      string `json:"kubernetes"`
	Kubeconfig      string `json:"kubeconfig"`
	ClusterDomain   string `json:"clusterDomain"`
	SystemNamespace string `json:"systemNamespace"`

	SPIFFESocket      string   `json:"spiffeSocket"`
	SPIFFETimeout     duration `json:"spiffeTimeout"`
	SVIDCert          string   `json:"svidCert"`
	SVIDKey           string   `json:"svidKey"`
	TrustBundles      []string `json:"trustBundles"`
	SVIDExpiryWarning duration `json:"svidExpiryWarning"`

	APISocket  string `json:"apiSocket"`
	APIAddress string `json:"apiAddress"`
	// API access over --api-address (api.AccessPolicy): who may read, who
	// may register. The unix socket is governed by its file permissions.
	APIReadIDs            []string `json:"apiReadIDs"`
	APIReadIDPrefixes     []string `json:"apiReadIDPrefixes"`
	APIRegisterIDs        []string `json:"apiRegisterIDs"`
	APIRegisterIDPrefixes []string `json:"apiRegisterIDPrefixes"`
	APIMaxWeight          uint32   `json:"apiMaxWeight"`
	EndpointCIDRs         []string `json:"endpointCIDRs"`
	EndpointAllowLoopback bool     `json:"endpointAllowLoopback"`
	EndpointAllowNames    bool     `json:"endpointAllowNames"`
	// AdminAllowRemote lets AdminAddress be other than loopback.
	AdminAllowRemote bool `json:"adminAllowRemote"`
	// AdminPprof serves net/http/pprof on the admin server.
	AdminPprof bool `json:"adminPprof"`

	NodeName             string   `json:"nodeName"`
	GossipAddress        string   `json:"gossipAddress"`
	GossipAdvertise      string   `json:"gossipAdvertise"`
	Join                 []string `json:"join"`
	GossipKeyFile        string   `json:"gossipKeyFile"`
	InsecureGossip       bool     `json:"insecureGossip"`
	MeshID               string   `json:"meshID"`
	GossipProfile        string   `json:"gossipProfile"`
	PassthroughAdvertise string   `json:"passthroughAdvertise"`
	TunnelAddress        string   `json:"tunnelAddress"`
	TunnelAdvertise      string   `json:"tunnelAdvertise"`
	// TunnelTransport is how this gateway dials tunnel links: auto, quic
	// or tcp (tunnel.ParseTransport). It accepts both whatever it says.
	TunnelTransport string `json:"tunnelTransport"`
	// TunnelIdleTimeout is tunnel.Config.MaxIdleTimeout: how long a link
	// may hear nothing from its peer before it is closed.
	TunnelIdleTimeout duration `json:"tunnelIdleTimeout"`
	// PeerIDs and PeerIDPrefixes are the SPIFFE IDs tunnel peers may
	// present (tunnelPolicy); both empty: this gateway's own ID.
	PeerIDs        []string `json:"peerIDs"`
	PeerIDPrefixes []string `json:"peerIDPrefixes"`
	// Tunnel limits: tunnel.Config's MaxIncomingStreams, MaxLinksPerPeer,
	// MaxHandshakes and MaxTCPLinkMemory.
	TunnelMaxStreams      int64 `json:"tunnelMaxStreams"`
	TunnelMaxLinksPerPeer int   `json:"tunnelMaxLinksPerPeer"`
	TunnelMaxHandshakes   int   `json:"tunnelMaxHandshakes"`
	TunnelTCPLinkMemory   int64 `json:"tunnelTCPLinkMemory"`
	// GossipReconnectInterval is peer.Config.ReconnectInterval, except
	// that 0 turns reconnecting off (peer takes 0 as its default).
	GossipReconnectInterval duration `json:"gossipReconnectInterval"`
	GossipReconnectTimeout  duration `json:"gossipReconnectTimeout"`

	publishSettings // the Istio publisher's (istio.go)
}

func defaultSettings() settings {
	return settings{
		LoopAccept:    true,
		BindAddress:   "0.0.0.0",
		AdminAddress:  "127.0.0.1:15446",
		DrainTimeout:  duration(30 * time.Second),
		LogLevel:      "info",
		LogFormat:     "text",
		MaxConns:      10000,
		IdleTimeout:   duration(time.Hour),
		DialTimeout:   duration(5 * time.Second),
		HelloTimeout:  duration(sni.DefaultTimeout),
		HelloMaxBytes: sni.DefaultMaxBytes,
		HelloMemory:   gateway.DefaultHelloMemory,
		SPIFFETimeout: duration(identity.DefaultStartTimeout),
		GossipProfile: "lan",
		ExportDefault: string(discovery.ExportAll),

		APIMaxWeight:       api.DefaultMaxWeight,
		EndpointAllowNames: true,

		Kubernetes:      "auto",
		ClusterDomain:   discovery.DefaultClusterDomain,
		SystemNamespace: kube.DefaultSystemNamespace,

		TunnelTransport:         string(tunnel.TransportAuto),
		TunnelIdleTimeout:       duration(tunnel.DefaultMaxIdleTimeout),
		TunnelMaxStreams:        tunnel.DefaultMaxIncomingStreams,
		TunnelMaxLinksPerPeer:   tunnel.DefaultMaxLinksPerPeer,
		TunnelMaxHandshakes:     tunnel.DefaultMaxHandshakes,
		TunnelTCPLinkMemory:     tunnel.DefaultMaxTCPLinkMemory,
		GossipReconnectInterval: duration(peer.DefaultReconnectInterval),
		GossipReconnectTimeout:  duration(peer.DefaultReconnectTimeout),

		publishSettings: defaultPublishSettings(),
	}
}

const runUsage = `Usage: ewgate run [-f PATH ...] [--kubeconfig PATH] --network NAME [flags]

Runs a gateway: it listens on bind-address:<port> for each AUTO_PASSTHROUGH
and PASSTHROUGH server of each Istio Gateway whose selector matches the node
labels (PASSTHROUGH ones route by VirtualService tls routes), and
forwards each mTLS connection, by its Istio SNI, to an eligible endpoint of
its own network. Config files are watched and reloaded on change; with a
Kubernetes source (--kubeconfig, or in a pod without -f) the cluster's
Services, EndpointSlices, pods and Istio resources are watched too.

Flags:
`

// flags binds s to a new flag set. Parsing twice, once before and once
// after loading --config, lets flags override the file.
func (s *settings) flags(stderr io.Writer, config *string) *flag.FlagSet {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, runUsage); fs.PrintDefaults() }
	fs.Var(&listFlag{list: &s.Files}, "f", "Istio resource `file or directory` (repeatable; directories: *.yaml, *.yml, *.json)")
	fs.StringVar(config, "config", "", "node settings YAML `file` (keys as in docs/configuration.md); flags win")
	fs.StringVar(&s.Kubeconfig, "kubeconfig", s.Kubeconfig, "read this cluster's API server with this kubeconfig `file` (turns the Kubernetes source on)")
	fs.StringVar(&s.Kubernetes, "kubernetes", s.Kubernetes, "Kubernetes source: auto (on with --kubeconfig, or in a pod without -f), on, or off")
	fs.StringVar(&s.ClusterDomain, "cluster-domain", s.ClusterDomain, "the cluster's DNS `domain`: Services are <name>.<namespace>.svc.<domain>")
	fs.StringVar(&s.SystemNamespace, "system-namespace", s.SystemNamespace, "Istio's `namespace`: its topology.istio.io/network label is the default network of pods")
	fs.StringVar(&s.Network, "network", s.Network, "this node's network `name` (required)")
	fs.Var(labelsFlag{&s.NodeLabels}, "node-labels", "node labels `k=v,...` matched by Gateway selectors")
	fs.StringVar(&s.Locality, "locality", s.Locality, "the gateway's `region/zone/subzone`, for DestinationRule locality load balancing (default: from --node-labels' istio-locality or topology labels)")
	fs.StringVar(&s.BindAddress, "bind-address", s.BindAddress, "`IP` the gateway listeners bind")
	fs.StringVar(&s.AdminAddress, "admin-address", s.AdminAddress, "admin HTTP `address` (empty: off); loopback only unless --admin-allow-remote")
	fs.BoolVar(&s.AdminAllowRemote, "admin-allow-remote", s.AdminAllowRemote, "allow a non-loopback --admin-address: metrics and debug views without authentication")
	fs.BoolVar(&s.AdminPprof, "admin-pprof", s.AdminPprof, "serve Go profiles at /debug/pprof/ on the admin server")
	fs.Var(&s.DrainTimeout, "drain-timeout", "on SIGTERM, how long open connections may finish")
	fs.Var(&s.DrainDelay, "drain-delay", "on SIGTERM, report not ready on the status port and keep accepting this long before the listeners close (0: close at once)")
	fs.Func("status-address", "serve /healthz/ready (Istio's gateway status port) on this `ip:port`, reachable from outside the node (default <bind-address>:15021; empty: off)", func(v string) error {
		s.StatusAddress = &v
		return nil
	})
	fs.StringVar(&s.LogLevel, "log-level", s.LogLevel, "debug, info, warn or error")
	fs.StringVar(&s.LogFormat, "log-format", s.LogFormat, "text or json")
	fs.Var(&listFlag{list: &s.ALPN, comma: true}, "alpn", "ALPN `protocols` a client must offer one of (default Istio's five)")
	fs.BoolVar(&s.AnyALPN, "any-alpn", s.AnyALPN, "do not check the client's ALPN (Istio always does)")
	fs.BoolVar(&s.AnyTLSMode, "any-tls-mode", s.AnyTLSMode, "route to endpoints without the security.istio.io/tlsMode=istio label")
	fs.IntVar(&s.MaxConns, "max-connections", s.MaxConns, "concurrent client connections; more are refused")
	fs.BoolVar(&s.LoopAccept, "loop-accept", s.LoopAccept, "accept, route and dial connections in the event loops with raw sockets (false: Go's net and handler goroutines)")
	fs.IntVar(&s.EventLoops, "event-loops", s.EventLoops, "event loops that pump the connections (0: one per GOMAXPROCS; fewer cost less CPU where the gateway shares few cores with busy processes)")
	fs.BoolVar(&s.SpreadLoops, "spread-loops", s.SpreadLoops, "keep every event loop on a thread of its own at any load (default: under 0.85 of a core the first loop's goroutine runs them all, which costs less CPU)")
	fs.Var(&s.IdleTimeout, "idle-timeout", "close connections idle this long both ways (0: never)")
	fs.Var(&s.ProbeInterval, "endpoint-probe-interval", "probe each ejected endpoint with a TCP connect this often: readmitted when it connects, kept ejected while it does not (0: off, an ejection lasts 30s)")
	fs.Var(&s.DialTimeout, "dial-timeout", "timeout of each endpoint connect")
	fs.Var(&s.HelloTimeout, "hello-timeout", "deadline for a client's whole ClientHello")
	fs.IntVar(&s.HelloMaxBytes, "hello-max-bytes", s.HelloMaxBytes, "largest ClientHello read, record headers included")
	fs.Int64Var(&s.HelloMemory, "hello-memory", s.HelloMemory, "`bytes` all ClientHello reads in progress may hold beyond 4 KiB each; more is refused (0: no bound)")
	fs.StringVar(&s.ExportDefault, "export-default", s.ExportDefault, "which services other networks may reach: all (as Istio), or none but those labelled ewgate.io/export=true")
	fs.StringVar(&s.TrustDomain, "trust-domain", s.TrustDomain, "SPIFFE trust `domain` of this network's workloads, for the identities other networks learn (default: the gateway SVID's, else cluster.local)")
	fs.StringVar(&s.SPIFFESocket, "spiffe-socket", s.SPIFFESocket, "SPIFFE Workload API `address` (unix:///path); default $SPIFFE_ENDPOINT_SOCKET")
	fs.Var(&s.SPIFFETimeout, "spiffe-timeout", "how long to wait for the first SVID from the Workload API")
	fs.StringVar(&s.SVIDCert, "svid-cert", s.SVIDCert, "SVID certificate chain PEM `file` (reloaded on change)")
	fs.StringVar(&s.SVIDKey, "svid-key", s.SVIDKey, "SVID private key PEM `file`")
	fs.Var(&listFlag{list: &s.TrustBundles}, "trust-bundle", "trust bundle PEM, `[TRUST_DOMAIN=]PATH` (repeatable; no domain: the SVID's own)")
	fs.StringVar(&s.APISocket, "api-socket", s.APISocket, "serve the gRPC API (resolve, endpoint registration) on this unix socket `path`; empty: off")
	fs.StringVar(&s.APIAddress, "api-address", s.APIAddress, "also serve the gRPC API on this `ip:port` to remote callers, with SPIFFE mTLS (needs an identity)")
	fs.Var(&listFlag{list: &s.APIReadIDs, comma: true}, "api-read-ids", "SPIFFE `IDs` that may resolve, watch and list over --api-address (default: the whole trust domain)")
	fs.Var(&listFlag{list: &s.APIReadIDPrefixes, comma: true}, "api-read-id-prefixes", "SPIFFE ID `prefixes` (path-segment boundary) that may resolve, watch and list over --api-address")
	fs.Var(&listFlag{list: &s.APIRegisterIDs, comma: true}, "api-register-ids", "SPIFFE `IDs` that may register endpoints over --api-address (default: none)")
	fs.Var(&listFlag{list: &s.APIRegisterIDPrefixes, comma: true}, "api-register-id-prefixes", "SPIFFE ID `prefixes` that may register endpoints over --api-address (default: none)")
	uintVar(fs, &s.APIMaxWeight, "api-max-weight", "largest weight a registered endpoint may carry; heavier ones are refused")
	fs.Var(&listFlag{list: &s.EndpointCIDRs, comma: true}, "endpoint-cidrs", "`CIDRs` endpoint addresses of every source must be in (default: any address not refused otherwise)")
	fs.BoolVar(&s.EndpointAllowLoopback, "endpoint-allow-loopback", s.EndpointAllowLoopback, "allow loopback endpoint addresses (tests and demos on one host only)")
	fs.BoolVar(&s.EndpointAllowNames, "endpoint-allow-names", s.EndpointAllowNames, "allow DNS names as endpoint addresses in config files (their resolved addresses are checked when dialed; registrations never carry names)")
	fs.StringVar(&s.NodeName, "node-name", s.NodeName, "this gateway's unique `name` in gossip (default: HOSTNAME-NETWORK-GOSSIPPORT)")
	fs.StringVar(&s.GossipAddress, "gossip-address", s.GossipAddress, "gossip with other gateways on this `ip:port` (UDP and TCP); empty: no gossip")
	fs.StringVar(&s.GossipAdvertise, "gossip-advertise", s.GossipAdvertise, "gossip `ip:port` other gateways reach this one at (default: the bound one)")
	fs.Var(&listFlag{list: &s.Join, comma: true}, "join", "gossip seeds `host:port,...`, retried in the background")
	fs.StringVar(&s.GossipKeyFile, "gossip-key-file", s.GossipKeyFile, "keyring `file`: one base64 AES key per line, the first is primary; edits rotate keys")
	fs.BoolVar(&s.InsecureGossip, "insecure-gossip", s.InsecureGossip, "allow gossip without encryption or authentication (demos only)")
	fs.StringVar(&s.MeshID, "mesh-id", s.MeshID, "mesh `name`: gateways of other meshes on the same network are ignored")
	fs.StringVar(&s.GossipProfile, "gossip-profile", s.GossipProfile, "failure detector timing: lan, wan or local")
	fs.StringVar(&s.PassthroughAdvertise, "passthrough-advertise", s.PassthroughAdvertise, "`ip:port` other networks dial to reach this gateway's AUTO_PASSTHROUGH listener (default: --bind-address and the one AUTO_PASSTHROUGH port, when the address is specific and the port is one; set it for NAT or a load balancer)")
	fs.Var(&s.GossipReconnectInterval, "gossip-reconnect-interval", "how often to rejoin gateways that failed (0: never), so that a healed partition rejoins")
	fs.Var(&s.GossipReconnectTimeout, "gossip-reconnect-timeout", "how long a failed gateway is retried before it is forgotten")
	fs.StringVar(&s.TunnelAddress, "tunnel-address", s.TunnelAddress, "accept and open tunnels to other networks' gateways on this `ip:port`: UDP for QUIC and TCP for the fallback (needs an identity and gossip)")
	fs.StringVar(&s.TunnelAdvertise, "tunnel-advertise", s.TunnelAdvertise, "tunnel `ip:port` other gateways dial (default: --tunnel-address)")
	fs.StringVar(&s.TunnelTransport, "tunnel-transport", s.TunnelTransport, "how tunnel links are dialed: auto (QUIC, TCP when UDP is blocked), quic or tcp")
	fs.Var(&listFlag{list: &s.PeerIDs, comma: true}, "peer-ids", "SPIFFE `IDs` tunnel peers (other gateways) may present, both ways (default: this gateway's own ID, the gateways' service account)")
	fs.Var(&listFlag{list: &s.PeerIDPrefixes, comma: true}, "peer-id-prefixes", "SPIFFE ID `prefixes` (path-segment boundary) tunnel peers may present, as --peer-ids")
	fs.Int64Var(&s.TunnelMaxStreams, "tunnel-max-streams", s.TunnelMaxStreams, "concurrent streams (tunneled connections) a peer may open on one tunnel link")
	fs.IntVar(&s.TunnelMaxLinksPerPeer, "tunnel-max-links-per-peer", s.TunnelMaxLinksPerPeer, "inbound tunnel links one peer gateway may hold at once")
	fs.IntVar(&s.TunnelMaxHandshakes, "tunnel-max-handshakes", s.TunnelMaxHandshakes, "inbound tunnel links that may be in their handshake at once; more are refused before any TLS work")
	fs.Int64Var(&s.TunnelTCPLinkMemory, "tunnel-tcp-link-memory", s.TunnelTCPLinkMemory, "`bytes` one tunnel link over the TCP fallback may buffer; it carries at most this / 256 KiB concurrent streams")
	fs.Var(&s.TunnelIdleTimeout, "tunnel-idle-timeout", "close a tunnel link that hears nothing from its peer for this long (keep-alives every fifth of it); its streams fail and new ones get a new link")
	fs.Var(&s.SVIDExpiryWarning, "svid-expiry-warning", "warn when the SVID has less validity left (0: a third of its lifetime)")
	s.publishSettings.flags(fs)
	return fs
}

// parseSettings reads flags and --config into settings.
func parseSettings(args []string, stderr io.Writer) (settings, error) {
	s := defaultSettings()
	var config string
	if err := s.flags(io.Discard, &config).Parse(args); err != nil {
		// Report with usage from the real parse below.
		return s, s.flags(stderr, &config).Parse(args)
	}
	if config != "" {
		data, err := os.ReadFile(config)
		if err != nil {
			return s, fmt.Errorf("--config: %w", err)
		}
		if err := yaml.UnmarshalStrict(data, &s); err != nil {
			return s, fmt.Errorf("--config %s: %w", config, err)
		}
	}
	fs := s.flags(stderr, &config)
	if err := fs.Parse(args); err != nil {
		return s, err
	}
	if fs.NArg() > 0 {
		return s, fmt.Errorf("run: unexpected arguments %q", fs.Args())
	}
	if s.Network == "" {
		return s, errors.New("run: --network is required")
	}
	if err := s.check(); err != nil {
		return s, err
	}
	if len(s.Files) == 0 {
		if on, _ := kubeMode(s, processKubeEnv()); !on {
			return s, errors.New("run: at least one -f PATH is required without a Kubernetes source (--kubeconfig)")
		}
	}
	return s, nil
}

// StatusPort is the port of Istio's gateway status server, which
// StatusAddress defaults to.
const StatusPort = "15021"

// statusAddress is the status server's address: StatusAddress, or
// BindAddress:StatusPort if unset; "" is off.
func (s *settings) statusAddress() string {
	if s.StatusAddress != nil {
		return *s.StatusAddress
	}
	return net.JoinHostPort(s.BindAddress, StatusPort)
}

// check rejects values that parse but mean nothing, naming the flag and
// the --config key, so that a typo fails at start rather than being read
// as a default.
func (s *settings) check() error {
	if _, err := discovery.ParseExportDefault(s.ExportDefault); err != nil {
		return fmt.Errorf("--export-default (exportDefault) %w", err)
	}
	if _, err := spiffeid.TrustDomainFromString(s.TrustDomain); s.TrustDomain != "" && err != nil {
		return fmt.Errorf("--trust-domain (trustDomain) %q: %w", s.TrustDomain, err)
	}
	if _, err := kubeMode(*s, processKubeEnv()); err != nil {
		return err
	}
	if err := s.publishSettings.check(); err != nil {
		return err
	}
	if _, err := tunnel.ParseTransport(s.TunnelTransport); err != nil {
		return fmt.Errorf("--tunnel-transport (tunnelTransport): %w", err)
	}
	if strings.Count(s.Locality, "/") > 2 || strings.HasPrefix(s.Locality, "/") {
		return fmt.Errorf("--locality (locality) %q: want region[/zone[/subzone]]", s.Locality)
	}
	if s.EventLoops < 0 {
		return fmt.Errorf("--event-loops (eventLoops) %d: want 0 (one per GOMAXPROCS) or more", s.EventLoops)
	}
	if s.TunnelIdleTimeout <= 0 {
		return fmt.Errorf("--tunnel-idle-timeout (tunnelIdleTimeout) %v: want more than 0", time.Duration(s.TunnelIdleTimeout))
	}
	for _, l := range []struct {
		flag, key string
		v, min    int64
	}{
		{"--tunnel-max-streams", "tunnelMaxStreams", s.TunnelMaxStreams, 1},
		{"--tunnel-max-links-per-peer", "tunnelMaxLinksPerPeer", int64(s.TunnelMaxLinksPerPeer), 1},
		{"--tunnel-max-handshakes", "tunnelMaxHandshakes", int64(s.TunnelMaxHandshakes), 1},
		{"--tunnel-tcp-link-memory", "tunnelTCPLinkMemory", s.TunnelTCPLinkMemory, 256 << 10},
	} {
		if l.v < l.min {
			return fmt.Errorf("%s (%s) %d: want %d or more", l.flag, l.key, l.v, l.min)
		}
	}
	if _, err := identity.NewMatcher(identity.Policy{IDs: s.PeerIDs, IDPrefixes: s.PeerIDPrefixes}); err != nil {
		return fmt.Errorf("--peer-ids, --peer-id-prefixes (peerIDs, peerIDPrefixes): %w", err)
	}
	if s.GossipReconnectInterval < 0 {
		return fmt.Errorf("--gossip-reconnect-interval (gossipReconnectInterval) %v: want 0 (off) or more", time.Duration(s.GossipReconnectInterval))
	}
	if s.GossipReconnectTimeout <= 0 {
		return fmt.Errorf("--gossip-reconnect-timeout (gossipReconnectTimeout) %v: want more than 0", time.Duration(s.GossipReconnectTimeout))
	}
	if _, err := s.endpointCIDRs(); err != nil {
		return err
	}
	if err := s.checkAdminAddress(); err != nil {
		return err
	}
	if a := s.statusAddress(); a != "" {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("--status-address (statusAddress) %q: %w", a, err)
		}
	}
	if s.DrainDelay < 0 {
		return fmt.Errorf("--drain-delay (drainDelay) %v: want 0 or more", time.Duration(s.DrainDelay))
	}
	if s.HelloMemory < 0 {
		return fmt.Errorf("--hello-memory (helloMemory) %d: want 0 (no bound) or more", s.HelloMemory)
	}
	if s.APIMaxWeight == 0 {
		return errors.New("--api-max-weight (apiMaxWeight) 0: want at least 1")
	}
	for _, id := range append(append(append(slices.Clone(s.APIReadIDs), s.APIReadIDPrefixes...), s.APIRegisterIDs...), s.APIRegisterIDPrefixes...) {
		if _, err := spiffeid.FromString(strings.TrimSuffix(id, "/")); err != nil {
			return fmt.Errorf("--api-*-ids/--api-*-id-prefixes: %q: %w", id, err)
		}
	}
	return nil
}

// endpointCIDRs parses --endpoint-cidrs.
func (s *settings) endpointCIDRs() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range s.EndpointCIDRs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return nil, fmt.Errorf("--endpoint-cidrs (endpointCIDRs) %q: %w", c, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// uintVar binds a uint32 flag.
func uintVar(fs *flag.FlagSet, p *uint32, name, usage string) {
	fs.Func(name, fmt.Sprintf("%s (default %d)", usage, *p), func(v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return err
		}
		*p = uint32(n)
		return nil
	})
}

// listFlag is a repeatable string flag. Its first Set replaces the list, so
// flags replace a list from --config instead of appending to it.
type listFlag struct {
	list  *[]string
	comma bool // split values at commas
	set   bool
}

func (f *listFlag) String() string {
	if f.list == nil {
		return ""
	}
	return strings.Join(*f.list, ",")
}

func (f *listFlag) Set(v string) error {
	if !f.set {
		*f.list, f.set = nil, true
	}
	if f.comma {
		*f.list = append(*f.list, strings.Split(v, ",")...)
	} else {
		*f.list = append(*f.list, v)
	}
	return nil
}

// labelsFlag parses "k=v,k2=v2".
type labelsFlag struct{ m *map[string]string }

func (f labelsFlag) String() string {
	if f.m == nil {
		return ""
	}
	var parts []string
	for k, v := range *f.m {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

func (f labelsFlag) Set(v string) error {
	m := make(map[string]string)
	for _, kv := range strings.Split(v, ",") {
		if kv == "" {
			continue
		}
		k, val, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("label %q: want key=value", kv)
		}
		m[k] = val
	}
	*f.m = m
	return nil
}

// duration is a time.Duration that reads "30s" from flags and YAML.
type duration time.Duration

func (d *duration) String() string { return time.Duration(*d).String() }

func (d *duration) Set(v string) error {
	x, err := time.ParseDuration(v)
	if err != nil {
		return err
	}
	*d = duration(x)
	return nil
}

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string like \"30s\": %w", err)
	}
	return d.Set(s)
}
