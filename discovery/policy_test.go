package discovery

import (
	"strings"
	"testing"
	"time"
)

// policyOf loads a ServiceEntry with ports 9080 and 9443 and the given
// DestinationRule spec, and returns the policy of each route, keyed
// "port/subset".
func policyOf(t *testing.T, drSpec string) map[string]Policy {
	t.Helper()
	c := mustParse(t, ewGateway("ew"),
		doc("ServiceEntry", "demo", "svc", `{hosts: [svc.demo.svc.cluster.local], ports: [{number: 9080, name: a}, {number: 9443, name: b}],
  endpoints: [{address: 10.0.0.1, labels: {v: one, security.istio.io/tlsMode: istio}}]}`),
		doc("DestinationRule", "demo", "svc", drSpec))
	v, err := c.View(*istioNode)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]Policy)
	for _, r := range v.Routes() {
		out[strings.TrimSuffix(r.Key.SNI(), "_.svc.demo.svc.cluster.local")] = r.Policy
	}
	return out
}

// Policies resolve per port and subset as Istio's MergeSubsetTrafficPolicy
// resolves them: port-level settings replace the rule's (without
// inheriting from it); a subset's fields replace the rule's one by one; a
// subset's port-level settings replace all three.
func TestPolicyResolution(t *testing.T) {
	p := policyOf(t, `{host: svc.demo.svc.cluster.local,
  trafficPolicy: {
    connectionPool: {tcp: {maxConnections: 100, connectTimeout: 2s}},
    loadBalancer: {simple: ROUND_ROBIN},
    portLevelSettings: [{port: {number: 9443}, loadBalancer: {simple: RANDOM}}]},
  subsets: [
    {name: cp, labels: {v: one}, trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}},
    {name: pl, labels: {v: one}, trafficPolicy: {portLevelSettings: [{port: {number: 9080}, outlierDetection: {consecutive5xxErrors: 2}}]}},
    {name: none, labels: {v: one}}]}`)
	tests := []struct {
		route    string
		maxConns uint32
		timeout  time.Duration
		lb       string
		outlier  bool
	}{
		{"outbound_.9080_.", 100, 2 * time.Second, "ROUND_ROBIN", false},
		// Port-level settings replace the rule's wholesale.
		{"outbound_.9443_.", 0, 0, "RANDOM", false},
		// A subset's connectionPool replaces the rule's; its load balancer
		// is the rule's.
		{"outbound_.9080_.cp", 7, 0, "ROUND_ROBIN", false},
		{"outbound_.9443_.cp", 7, 0, "RANDOM", false},
		// A subset's port-level settings replace all three fields.
		{"outbound_.9080_.pl", 0, 0, "", true},
		// ... and only on that port.
		{"outbound_.9443_.pl", 0, 0, "RANDOM", false},
		{"outbound_.9080_.none", 100, 2 * time.Second, "ROUND_ROBIN", false},
	}
	for _, tt := range tests {
		got, ok := p[tt.route]
		if !ok {
			t.Errorf("%s: no route in %v", tt.route, p)
			continue
		}
		if got.MaxConnections != tt.maxConns || got.ConnectTimeout != tt.timeout || got.LoadBalancer.Simple != tt.lb || (got.Outlier != nil) != tt.outlier {
			t.Errorf("%s: maxConnections %d connectTimeout %v lb %q outlier %v; want %d %v %q %v", tt.route,
				got.MaxConnections, got.ConnectTimeout, got.LoadBalancer.Simple, got.Outlier != nil, tt.maxConns, tt.timeout, tt.lb, tt.outlier)
		}
	}
}

// outlierDetection's fields and Envoy's defaults, as they apply to TCP
// connect failures.
func TestPolicyOutlierDetection(t *testing.T) {
	tests := []struct {
		name, od string
		want     Outlier
	}{
		{"defaults", `{}`, Outlier{ConsecutiveErrors: 5, Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 10}},
		{"the smaller of gateway and 5xx errors", `{consecutiveGatewayErrors: 3, consecutive5xxErrors: 4, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 50, minHealthPercent: 30}`,
			Outlier{ConsecutiveErrors: 3, Interval: time.Second, BaseEjectionTime: 2 * time.Second, MaxEjectionPercent: 50, MinHealthPercent: 30}},
		{"0 disables one of them", `{consecutiveGatewayErrors: 0, consecutive5xxErrors: 4}`, Outlier{ConsecutiveErrors: 4, Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 10}},
		{"both 0: no ejection", `{consecutiveGatewayErrors: 0, consecutive5xxErrors: 0}`, Outlier{Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 10}},
		{"the deprecated consecutiveErrors is 5xx", `{consecutiveErrors: 2}`, Outlier{ConsecutiveErrors: 2, Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := policyOf(t, `{host: svc.demo.svc.cluster.local, trafficPolicy: {outlierDetection: `+tt.od+`}}`)["outbound_.9080_."]
			if p.Outlier == nil || *p.Outlier != tt.want {
				t.Errorf("outlier %+v, want %+v", p.Outlier, tt.want)
			}
		})
	}
	o := Outlier{BaseEjectionTime: 30 * time.Second}
	for n, want := range map[int]time.Duration{1: 30 * time.Second, 2: 60 * time.Second, 9: 270 * time.Second, 11: 300 * time.Second} {
		if got := o.EjectionTime(n); got != want {
			t.Errorf("ejection %d lasts %v, want %v", n, got, want)
		}
	}
}

// The rest of connectionPool.tcp and loadBalancer.
func TestPolicyFields(t *testing.T) {
	p := policyOf(t, `{host: svc.demo.svc.cluster.local, trafficPolicy: {
  connectionPool: {tcp: {tcpKeepalive: {probes: 3, time: 60s, interval: 10s}, idleTimeout: 300s, maxConnectionDuration: 3600s}},
  loadBalancer: {consistentHash: {useSourceIp: true}, localityLbSetting: {enabled: true, failover: [{from: eu, to: us}], failoverPriority: [topology.istio.io/network]}}}}`)["outbound_.9080_."]
	if p.Keepalive == nil || *p.Keepalive != (Keepalive{Probes: 3, Time: time.Minute, Interval: 10 * time.Second}) {
		t.Errorf("keepalive %+v", p.Keepalive)
	}
	if p.IdleTimeout != 5*time.Minute || p.MaxConnectionDuration != time.Hour {
		t.Errorf("idle %v max duration %v", p.IdleTimeout, p.MaxConnectionDuration)
	}
	l := p.LoadBalancer.Locality
	if !p.LoadBalancer.HashSourceIP || l == nil || l.Disabled || len(l.Failover) != 1 || l.Failover[0] != (LocalityFailover{From: "eu", To: "us"}) ||
		len(l.FailoverPriority) != 1 {
		t.Errorf("load balancer %+v locality %+v", p.LoadBalancer, l)
	}
}

// Settings an L4 gateway cannot apply are named in one warning per rule;
// TLS settings, which Istio ignores at an AUTO_PASSTHROUGH gateway too,
// are not.
func TestPolicyUnhonouredWarned(t *testing.T) {
	log, b := newLogger()
	var l loader
	l.log = log
	l.addFile("test.yaml", join(ewGateway("ew"),
		doc("ServiceEntry", "demo", "svc", `{hosts: [svc.demo.svc.cluster.local], ports: [{number: 9080, name: a}]}`),
		doc("DestinationRule", "demo", "svc", `{host: svc.demo.svc.cluster.local, trafficPolicy: {
  tls: {mode: ISTIO_MUTUAL},
  connectionPool: {http: {http2MaxRequests: 10}},
  loadBalancer: {consistentHash: {httpHeaderName: x-user}, localityLbSetting: {failoverPriority: [topology.istio.io/network]}}},
  subsets: [{name: a, labels: {v: a}, trafficPolicy: {outlierDetection: {splitExternalLocalOriginErrors: true}}}]}`)))
	if _, err := l.build(); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"spec.trafficPolicy.connectionPool.http", "spec.trafficPolicy.loadBalancer.consistentHash (only useSourceIp)",
		"spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority (not applied yet)",
		"spec.subsets[0].trafficPolicy.outlierDetection.splitExternalLocalOriginErrors"} {
		if !strings.Contains(out, want) {
			t.Errorf("warning lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "tls") {
		t.Errorf("tls settings warned about:\n%s", out)
	}
}

// Durations read as istiod reads them (Istio's types decode with jsonpb,
// which takes Go's syntax as well as protobuf's), so that a
// DestinationRule copied from Istio's documentation loads unchanged.
func TestPolicyDurationsInIstioSyntax(t *testing.T) {
	p := policyOf(t, `{host: svc.demo.svc.cluster.local, trafficPolicy: {
  connectionPool: {tcp: {connectTimeout: 30ms, idleTimeout: 5m, maxConnectionDuration: 0.5s}},
  outlierDetection: {interval: 1m30s, baseEjectionTime: 15m}}}`)["outbound_.9080_."]
	if p.ConnectTimeout != 30*time.Millisecond || p.IdleTimeout != 5*time.Minute || p.MaxConnectionDuration != 500*time.Millisecond {
		t.Errorf("connectTimeout %v idleTimeout %v maxConnectionDuration %v", p.ConnectTimeout, p.IdleTimeout, p.MaxConnectionDuration)
	}
	if p.Outlier == nil || p.Outlier.Interval != 90*time.Second || p.Outlier.BaseEjectionTime != 15*time.Minute {
		t.Errorf("outlier %+v", p.Outlier)
	}
}
