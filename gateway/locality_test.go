package gateway

import (
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/workload"
)

func targetsIn(localities ...string) []discovery.Target {
	out := make([]discovery.Target, len(localities))
	for i, l := range localities {
		out[i] = discovery.Target{Address: "192.0.2.1:" + string(rune('a'+i)), Weight: 1, Locality: l}
	}
	return out
}

func TestLocalityPriorities(t *testing.T) {
	targets := targetsIn("eu/z1/s1", "eu/z1/s2", "eu/z2", "us/z1", "ap/z1", "")
	tests := []struct {
		name     string
		failover []discovery.LocalityFailover
		want     []uint8
		levels   int
	}{
		{"nearest first", nil, []uint8{0, 1, 2, 3, 3, 3}, 4},
		{"failover region next", []discovery.LocalityFailover{{From: "us", To: "eu"}, {From: "eu", To: "ap"}}, []uint8{0, 1, 2, 4, 3, 4}, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prio, levels := localityPriorities("eu/z1/s1", targets, &discovery.LocalityLB{Failover: tt.failover})
			if !slices.Equal(prio, tt.want) || levels != tt.levels {
				t.Fatalf("priorities %v (%d levels), want %v (%d)", prio, levels, tt.want, tt.levels)
			}
		})
	}
	// Levels no endpoint has are left out.
	if prio, levels := localityPriorities("eu/z1/s1", targetsIn("eu/z2", "us/z1"), &discovery.LocalityLB{}); !slices.Equal(prio, []uint8{0, 1}) || levels != 2 {
		t.Fatalf("compacted priorities %v (%d levels)", prio, levels)
	}
}

func TestDistributedWeights(t *testing.T) {
	targets := targetsIn("eu/z1", "eu/z1", "eu/z2", "us/z1")
	lb := &discovery.LocalityLB{Distribute: []discovery.LocalityDistribute{
		{From: "us/*", To: map[string]uint32{"us/*": 100}},
		{From: "eu/z1/*", To: map[string]uint32{"eu/z1/*": 80, "eu/*": 20}},
	}}
	got := distributedWeights("eu/z1/s1", targets, lb)
	// eu/z1 takes 80 over its two endpoints; eu/z2, the only other eu
	// locality, 20; us nothing.
	want := []uint64{40 * distributeScale, 40 * distributeScale, 20 * distributeScale, 0}
	if !slices.Equal(got, want) {
		t.Fatalf("weights %v, want %v", got, want)
	}
	if got := distributedWeights("ap/z1", targets, lb); got != nil {
		t.Fatalf("no entry for the gateway's locality: %v, want nil", got)
	}
}

// withLocality gives backend b's endpoint in yaml the locality loc.
func withLocality(yaml string, b *workload.EchoServer, loc string) string {
	_, port, _ := net.SplitHostPort(b.Addr())
	line := "    ports: {tcp-echo: " + port + "}\n"
	return strings.Replace(yaml, line, line+"    locality: "+loc+"\n", 1)
}

// With the gateway in r1/z1/s1 and outlier detection on, connections go
// to the nearest locality, and as each dies, to the next: another zone of
// the region, then the failover region, then any other.
func TestLocalityFailoverOrder(t *testing.T) {
	m := newMesh(t)
	m.cfg.Locality = "r1/z1/s1"
	near, zone, other, failover := m.backend("v1"), m.backend("v2"), m.backend("v3"), m.backend("v4")
	yaml := policyYAML(freePort(t), `outlierDetection: {consecutiveGatewayErrors: 1, baseEjectionTime: 3600s, maxEjectionPercent: 100}
loadBalancer: {localityLbSetting: {failover: [{from: r1, to: r3}]}}`, near, zone, other, failover)
	for b, loc := range map[*workload.EchoServer]string{near: "r1/z1/s1", zone: "r1/z2/s1", other: "r2/z1/s1", failover: "r3/z1/s1"} {
		yaml = withLocality(yaml, b, loc)
	}
	m.start(yaml)
	for _, step := range []struct {
		want string
		down *workload.EchoServer
	}{{"v1", near}, {"v2", zone}, {"v4", failover}, {"v3", nil}} {
		for range 8 {
			c := m.mustDial(t, echoSNI, "istio")
			c.Close()
			if c.Server != step.want {
				t.Fatalf("connection went to %s, want %s", c.Server, step.want)
			}
		}
		if step.down != nil {
			step.down.Close()
			// The next connection fails over on its retry and ejects it.
			c := m.mustDial(t, echoSNI, "istio")
			c.Close()
		}
	}
}

// withNetwork moves backend b's endpoint in yaml to network.
func withNetwork(yaml string, b *workload.EchoServer, network string) string {
	_, port, _ := net.SplitHostPort(b.Addr())
	line := "    ports: {tcp-echo: " + port + "}\n    network: net-a\n"
	return strings.Replace(yaml, line, "    ports: {tcp-echo: "+port+"}\n    network: "+network+"\n", 1)
}

// Under outlier detection, when no endpoint of the gateway's own network
// connects, the connection fails over to another network through a
// tunnel, the last rank of Istio's locality failover.
func TestOutlierFailoverToOtherNetwork(t *testing.T) {
	for _, path := range []string{pathQUIC, pathTCP} {
		t.Run(path, func(t *testing.T) {
			m := newMeshPath(t, path)
			local, remote := m.backend("v1"), m.backend("v2")
			local.Close() // this network's only endpoint refuses
			// The far gateway has both endpoints (start moves them to
			// net-b); the gateway clients dial keeps local in its own
			// network, net-a.
			yaml := policyYAML(freePort(t), "outlierDetection: {consecutiveGatewayErrors: 1, baseEjectionTime: 3600s, maxEjectionPercent: 100}", local, remote)
			m.start(yaml)
			m.applyTo(m.gw, "net-a", withNetwork(yaml, remote, "net-b"))
			for range 5 {
				c, err := m.dial(echoSNI, "istio")
				if err != nil {
					t.Fatalf("no failover to the other network: %v", err)
				}
				c.Close()
				if c.Server != "v2" {
					t.Fatalf("reached %s", c.Server)
				}
			}
			if m.gw.Healthy(local.Addr()) {
				t.Fatal("the local endpoint that refused is not ejected")
			}
		})
	}
}
