package peer

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// waitTimeout bounds every poll in the tests; it is a deadline for a
// condition that normally holds much sooner, not a timing assertion.
const waitTimeout = 30 * time.Second

// testKey returns a distinct 32-byte AES key.
func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

// loopbackFor spreads nodes over 127.0.0.1 .. 127.0.0.30 by name.
func loopbackFor(name string) string {
	h := fnv.New32a()
	h.Write([]byte(name))
	return fmt.Sprintf("127.0.0.%d", h.Sum32()%30+1)
}

// gatewayIDPrefix is where the test gateways' SPIFFE IDs live: each node
// has its own service account, so that one gateway's SVID cannot pass
// for another's.
const gatewayIDPrefix = "spiffe://cluster.local/ns/istio-system/sa/"

// testCA is the trust domain of every test node, shared by the package's
// tests (keys are costly to generate under -race).
var testCA = sync.OnceValues(func() (*identity.DevCA, error) {
	return identity.NewDevCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
})

// testIdentity returns a real SVID source for id from testCA. It panics
// on errors, which a valid ID cannot cause, so that testConfig needs no
// testing.TB.
func testIdentity(id string) *identity.MemorySource {
	ca, err := testCA()
	if err != nil {
		panic(err)
	}
	src, err := ca.NewSource(spiffeid.RequireFromString(id), identity.IssueOptions{})
	if err != nil {
		panic(err)
	}
	return src
}

// allowGateways is the test nodes' gateway policy: every ID under
// gatewayIDPrefix.
func allowGateways(id string) error {
	if !strings.HasPrefix(id, gatewayIDPrefix) {
		return fmt.Errorf("%s is not under %s", id, gatewayIDPrefix)
	}
	return nil
}

// testConfig returns a fast local-profile config for a node of network,
// with its own SVID (gatewayIDPrefix + name).
func testConfig(name, network string) Config {
	return Config{
		Name:            name,
		Network:         network,
		BindAddr:        loopbackFor(name),
		Keys:            [][]byte{testKey(1)},
		Profile:         ProfileLocal,
		PassthroughAddr: name + ".example:15443",
		TunnelAddr:      name + ".example:15008",
		Identity:        testIdentity(gatewayIDPrefix + name),
		AllowGateway:    allowGateways,
		JoinBackoff:     20 * time.Millisecond,
		JoinBackoffMax:  200 * time.Millisecond,
		Logger:          testLogger(),
	}
}

// testLogger logs to stderr when PEER_TEST_LOG is set (debug level when
// it is "debug"), and discards otherwise.
func testLogger() *slog.Logger {
	switch os.Getenv("PEER_TEST_LOG") {
	case "":
		return nil
	case "debug":
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	default:
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
}

// startNode starts a node and shuts it down when the test ends.
func startNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	n, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Start(%s): %v", cfg.Name, err)
	}
	t.Cleanup(func() { n.Shutdown() })
	return n
}

// waitFor polls cond until it returns nil or waitTimeout passes.
func waitFor(t testing.TB, what string, cond func() error) {
	t.Helper()
	waitWithin(t, waitTimeout, what, cond)
}

// waitWithin polls cond until it returns nil or timeout passes.
func waitWithin(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}

// summaryOf returns a small summary with one service per name.
func summaryOf(network string, count uint32, hosts ...string) Summary {
	s := Summary{Network: network}
	for _, h := range hosts {
		s.Services = append(s.Services, ServiceSummary{Host: h, Ports: []PortSummary{{
			Port: 9080,
			Subsets: []SubsetSummary{
				{Name: "", Healthy: []LocalityCount{{Locality: "eu/a", Count: count}}},
				{Name: "v1", Healthy: []LocalityCount{{Locality: "eu/a", Count: count}, {Locality: "eu/b", Count: 1}}},
			},
		}}})
	}
	return s
}

// summaryFrom returns what n holds from origin, if it is live.
func summaryFrom(n *Node, origin string) (NodeSummary, bool) {
	for _, s := range n.Summaries() {
		if s.Node == origin {
			return s, true
		}
	}
	return NodeSummary{}, false
}

// memberState returns origin's state as n sees it.
func memberState(n *Node, name string) (State, bool) {
	for _, m := range n.Members() {
		if m.Name == name {
			return m.State, true
		}
	}
	return 0, false
}

// networksOf returns the distinct networks in n's summaries.
func networksOf(n *Node) map[string]int {
	out := make(map[string]int)
	for _, s := range n.Summaries() {
		out[s.Meta.Network]++
	}
	return out
}
