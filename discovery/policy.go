package discovery

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
)

// Policy is the DestinationRule traffic policy of one route (a service
// port and subset) at the gateway, as Istio applies it to the sni-dnat
// clusters of an AUTO_PASSTHROUGH gateway: the rule's policy, replaced by
// its portLevelSettings for the port, then, for a subset, each of
// connectionPool, outlierDetection and loadBalancer replaced by the
// subset's (all of them when the subset has settings for the port). TLS
// settings are ignored there, and so here: the gateway never originates
// TLS. Zero fields mean the gateway's own defaults.
type Policy struct {
	// MaxConnections caps the route's concurrent connections
	// (connectionPool.tcp.maxConnections); 0: no cap of its own.
	MaxConnections uint32
	// ConnectTimeout bounds each endpoint connect
	// (connectionPool.tcp.connectTimeout); 0: the gateway's.
	ConnectTimeout time.Duration
	// Keepalive, if set, turns TCP keep-alive on for the route's upstream
	// connections (connectionPool.tcp.tcpKeepalive); zero fields keep the
	// system's values.
	Keepalive *Keepalive
	// IdleTimeout closes the route's connections idle that long
	// (connectionPool.tcp.idleTimeout); 0: the gateway's.
	IdleTimeout time.Duration
	// MaxConnectionDuration closes the route's connections that old
	// (connectionPool.tcp.maxConnectionDuration); 0: no limit.
	MaxConnectionDuration time.Duration
	// Outlier, if set, replaces the gateway's built-in ejection rule for
	// the route's endpoints (outlierDetection).
	Outlier *Outlier
	// LoadBalancer chooses among the route's endpoints (loadBalancer).
	LoadBalancer LoadBalancer
}

// Keepalive is connectionPool.tcp.tcpKeepalive.
type Keepalive struct {
	Probes   uint32
	Time     time.Duration
	Interval time.Duration
}

// Outlier is outlierDetection as it applies to TCP: a failed connect is
// both a gateway error and a 5xx to Envoy's TCP proxy.
type Outlier struct {
	// ConsecutiveErrors failed connects in a row eject an endpoint: the
	// smaller of consecutiveGatewayErrors and consecutive5xxErrors that is
	// set (0 disables that one), Envoy's default 5 when neither is.
	// 0: no ejection.
	ConsecutiveErrors uint32
	// Interval is how often ejections are reconsidered: an endpoint that
	// stayed admitted a whole interval has one ejection forgiven.
	// Default 10s.
	Interval time.Duration
	// BaseEjectionTime is the first ejection's length; the n-th in a row
	// lasts n times as long, up to 300s (Envoy's max_ejection_time).
	// Default 30s.
	BaseEjectionTime time.Duration
	// MaxEjectionPercent caps the share of the route's endpoints ejected
	// at once; default 10, as Envoy's.
	MaxEjectionPercent int32
	// MinHealthPercent: below this share of admitted endpoints the route
	// ignores ejections (Envoy's panic threshold); 0, Istio's default,
	// never.
	MinHealthPercent int32
}

// LoadBalancer is loadBalancer as the gateway applies it.
type LoadBalancer struct {
	// Simple is the loadBalancer.simple name: ROUND_ROBIN and RANDOM are
	// themselves; any other ("" unset, LEAST_REQUEST, LEAST_CONN, which
	// Istio reads as LEAST_REQUEST, and PASSTHROUGH, warned) is the
	// gateway's own choice, Envoy's default: weighted least request of
	// two random choices.
	Simple string
	// HashSourceIP sends one client address to one endpoint while the
	// endpoints do not change (consistentHash.useSourceIp).
	HashSourceIP bool
	// Locality, if set, is localityLbSetting. The gateway does not apply
	// FailoverPriority yet (warned).
	Locality *LocalityLB
}

// LocalityLB is localityLbSetting, relative to the gateway's own locality.
type LocalityLB struct {
	// Disabled is enabled: false.
	Disabled bool
	// Distribute maps source localities ("region/zone/subzone", "*"
	// wildcards) to weights per destination locality.
	Distribute []LocalityDistribute
	// Failover names, per region, the region to fail over to first.
	Failover []LocalityFailover
	// FailoverPriority are endpoint labels: endpoints that share more of
	// them (in order) with the gateway are preferred.
	FailoverPriority []string
}

// LocalityDistribute is one entry of localityLbSetting.distribute.
type LocalityDistribute struct {
	From string
	To   map[string]uint32
}

// LocalityFailover is one entry of localityLbSetting.failover.
type LocalityFailover struct {
	From, To string
}

// maxEjectionTime is Envoy's default max_ejection_time, which bounds how
// long repeated ejections grow.
const maxEjectionTime = 300 * time.Second

// EjectionTime returns how long the n-th ejection in a row lasts.
func (o *Outlier) EjectionTime(n int) time.Duration {
	d := o.BaseEjectionTime * time.Duration(max(n, 1))
	return min(d, max(maxEjectionTime, o.BaseEjectionTime))
}

// resolvePolicy computes the policy of port for the subset with policy sub
// (nil: no subset, or one without a policy) under the rule's policy rule,
// as Istio's MergeSubsetTrafficPolicy does.
func resolvePolicy(rule, sub *networking.TrafficPolicy, port uint32) *networking.TrafficPolicy {
	merged := portLevel(rule, port)
	if sub == nil {
		return merged
	}
	subsetPolicy := portLevel(sub, port)
	hasPortLevel := subsetPolicy != sub
	if merged == nil {
		return subsetPolicy
	}
	out := &networking.TrafficPolicy{ConnectionPool: merged.GetConnectionPool(), OutlierDetection: merged.GetOutlierDetection(),
		LoadBalancer: merged.GetLoadBalancer(), Tls: merged.GetTls(), ProxyProtocol: merged.GetProxyProtocol(), Tunnel: merged.GetTunnel()}
	if subsetPolicy.GetConnectionPool() != nil || hasPortLevel {
		out.ConnectionPool = subsetPolicy.GetConnectionPool()
	}
	if subsetPolicy.GetOutlierDetection() != nil || hasPortLevel {
		out.OutlierDetection = subsetPolicy.GetOutlierDetection()
	}
	if subsetPolicy.GetLoadBalancer() != nil || hasPortLevel {
		out.LoadBalancer = subsetPolicy.GetLoadBalancer()
	}
	return out
}

// portLevel returns p's settings for port, which replace p's own (fields
// they leave out take the defaults, not p's), or p itself if it has none.
func portLevel(p *networking.TrafficPolicy, port uint32) *networking.TrafficPolicy {
	for _, pl := range p.GetPortLevelSettings() {
		if pl.GetPort().GetNumber() == port {
			return portPolicy(pl)
		}
	}
	return p
}

// portPolicy returns a portLevelSettings entry as a traffic policy of its
// own, the shape Istio gives it when it replaces the rule's.
func portPolicy(pl *networking.TrafficPolicy_PortTrafficPolicy) *networking.TrafficPolicy {
	return &networking.TrafficPolicy{ConnectionPool: pl.GetConnectionPool(), LoadBalancer: pl.GetLoadBalancer(),
		OutlierDetection: pl.GetOutlierDetection(), Tls: pl.GetTls()}
}

// translatePolicy turns a resolved traffic policy into the gateway's Policy.
func translatePolicy(p *networking.TrafficPolicy) Policy {
	var out Policy
	if tcp := p.GetConnectionPool().GetTcp(); tcp != nil {
		out.MaxConnections = uint32(max(tcp.GetMaxConnections(), 0))
		out.ConnectTimeout = tcp.GetConnectTimeout().AsDuration()
		out.IdleTimeout = tcp.GetIdleTimeout().AsDuration()
		out.MaxConnectionDuration = tcp.GetMaxConnectionDuration().AsDuration()
		if ka := tcp.GetTcpKeepalive(); ka != nil {
			out.Keepalive = &Keepalive{Probes: ka.GetProbes(), Time: ka.GetTime().AsDuration(), Interval: ka.GetInterval().AsDuration()}
		}
	}
	if od := p.GetOutlierDetection(); od != nil {
		o := &Outlier{Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 10, MinHealthPercent: od.GetMinHealthPercent()}
		if d := od.GetInterval(); d != nil {
			o.Interval = d.AsDuration()
		}
		if d := od.GetBaseEjectionTime(); d != nil {
			o.BaseEjectionTime = d.AsDuration()
		}
		if od.GetMaxEjectionPercent() > 0 {
			o.MaxEjectionPercent = od.GetMaxEjectionPercent()
		}
		gw, fivexx := od.GetConsecutiveGatewayErrors(), od.GetConsecutive_5XxErrors()
		if fivexx == nil && od.GetConsecutiveErrors() > 0 {
			// The deprecated field means consecutive5xxErrors.
			fivexx = wrapperspb.UInt32(uint32(od.GetConsecutiveErrors()))
		}
		switch {
		case gw == nil && fivexx == nil:
			o.ConsecutiveErrors = 5
		default:
			for _, v := range []interface{ GetValue() uint32 }{gw, fivexx} {
				if v == nil || v.GetValue() == 0 {
					continue
				}
				if o.ConsecutiveErrors == 0 || v.GetValue() < o.ConsecutiveErrors {
					o.ConsecutiveErrors = v.GetValue()
				}
			}
		}
		out.Outlier = o
	}
	if lb := p.GetLoadBalancer(); lb != nil {
		if s := lb.GetSimple(); s != networking.LoadBalancerSettings_UNSPECIFIED {
			out.LoadBalancer.Simple = s.String()
		}
		out.LoadBalancer.HashSourceIP = lb.GetConsistentHash().GetUseSourceIp()
		if l := lb.GetLocalityLbSetting(); l != nil {
			ll := &LocalityLB{Disabled: l.GetEnabled() != nil && !l.GetEnabled().GetValue(), FailoverPriority: l.GetFailoverPriority()}
			for _, d := range l.GetDistribute() {
				ll.Distribute = append(ll.Distribute, LocalityDistribute{From: d.GetFrom(), To: d.GetTo()})
			}
			for _, f := range l.GetFailover() {
				ll.Failover = append(ll.Failover, LocalityFailover{From: f.GetFrom(), To: f.GetTo()})
			}
			out.LoadBalancer.Locality = ll
		}
	}
	return out
}

// unhonoured names the fields of a traffic policy that the gateway does
// not apply, for a warning: L7 settings mean nothing to an L4 proxy, and
// settings of TLS origination or tunnelling to a proxy that never
// originates either. TLS settings are left out: Istio ignores them at an
// AUTO_PASSTHROUGH gateway too.
func unhonoured(p *networking.TrafficPolicy, field string) []string {
	if p == nil {
		return nil
	}
	var out []string
	if p.GetConnectionPool().GetHttp() != nil {
		out = append(out, field+".connectionPool.http")
	}
	if p.GetProxyProtocol() != nil {
		out = append(out, field+".proxyProtocol")
	}
	if p.GetTunnel() != nil {
		out = append(out, field+".tunnel")
	}
	if p.GetRetryBudget() != nil {
		out = append(out, field+".retryBudget")
	}
	if od := p.GetOutlierDetection(); od != nil {
		if od.GetSplitExternalLocalOriginErrors() || od.GetConsecutiveLocalOriginFailures() != nil {
			out = append(out, field+".outlierDetection.splitExternalLocalOriginErrors")
		}
		if len(od.GetOutlierDetectionHttpErrorCodes()) > 0 {
			out = append(out, field+".outlierDetection.outlierDetectionHttpErrorCodes")
		}
	}
	if lb := p.GetLoadBalancer(); lb != nil {
		if ch := lb.GetConsistentHash(); ch != nil && !ch.GetUseSourceIp() {
			out = append(out, field+".loadBalancer.consistentHash (only useSourceIp)")
		}
		if lb.GetWarmupDurationSecs() != nil || lb.GetWarmup() != nil {
			out = append(out, field+".loadBalancer.warmup")
		}
		if lb.GetZoneAwareLbSetting() != nil {
			out = append(out, field+".loadBalancer.zoneAwareLbSetting")
		}
		if len(lb.GetLocalityLbSetting().GetFailoverPriority()) > 0 {
			// Translated into Policy, but the gateway's targets carry no
			// labels to compare.
			out = append(out, field+".loadBalancer.localityLbSetting.failoverPriority (not applied yet)")
		}
		if lb.GetSimple() == networking.LoadBalancerSettings_PASSTHROUGH {
			// The client's destination is the gateway: there is no
			// original destination to pass through to.
			out = append(out, field+".loadBalancer.simple PASSTHROUGH")
		}
	}
	for i, pl := range p.GetPortLevelSettings() {
		out = append(out, unhonoured(portPolicy(pl), fmt.Sprintf("%s.portLevelSettings[%d]", field, i))...)
	}
	return out
}
