package gateway

import (
	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/metrics"
	"github.com/ewgate/ewgate/sni"
)

// Metrics are the data plane's counters. Build them with NewMetrics.
type Metrics struct {
	Accepted      *metrics.Counter
	Forwarded     *metrics.Counter
	Active        *metrics.Gauge
	BytesUp       *metrics.Counter // client to endpoint
	BytesDown     *metrics.Counter // endpoint to client
	ConnectErrors *metrics.Counter
	Ejections     *metrics.Counter
	IdleClosed    *metrics.Counter
	// DurationClosed counts connections closed at their route's
	// maxConnectionDuration.
	DurationClosed *metrics.Counter
	// EjectionsOverMax counts outlier ejections not made because
	// maxEjectionPercent of the route's endpoints were ejected.
	EjectionsOverMax *metrics.Counter
	Readmitted       *metrics.Counter // ejected endpoints a probe readmitted
	ProbeFailures    *metrics.Counter
	PeekSeconds      *metrics.Histogram
	// LoopsPacked is how many event loops the first loop's goroutine
	// runs now, besides its own (Config.SpreadLoops).
	LoopsPacked *metrics.Gauge
	rejected    metrics.CounterVec
	// byReason caches the counters of known reasons so that a refusal
	// takes no lock.
	byReason map[string]*metrics.Counter
}

// NewMetrics registers the data plane's metrics in r; a nil r keeps them
// in a private registry.
func NewMetrics(r *metrics.Registry) *Metrics {
	if r == nil {
		r = new(metrics.Registry)
	}
	bytes := r.CounterVec("ewgate_forwarded_bytes_total", "Bytes forwarded, by direction.", "direction")
	m := &Metrics{
		Accepted:      r.Counter("ewgate_connections_accepted_total", "Client connections accepted."),
		Forwarded:     r.Counter("ewgate_connections_forwarded_total", "Client connections connected to an endpoint and forwarded."),
		rejected:      r.CounterVec("ewgate_connections_rejected_total", "Client connections closed without forwarding, by reason.", "reason"),
		Active:        r.Gauge("ewgate_connections_active", "Client connections open now."),
		BytesUp:       bytes.With("client_to_upstream"),
		BytesDown:     bytes.With("upstream_to_client"),
		ConnectErrors: r.Counter("ewgate_upstream_connect_errors_total", "Failed connects to endpoints (each attempt)."),
		Ejections:     r.Counter("ewgate_upstream_ejections_total", "Endpoints ejected after consecutive connect failures."),
		IdleClosed:    r.Counter("ewgate_connections_idle_closed_total", "Connections closed by the idle timeout."),
		DurationClosed: r.Counter("ewgate_connections_max_duration_closed_total",
			"Connections closed at their route's DestinationRule connectionPool.tcp.maxConnectionDuration."),
		EjectionsOverMax: r.Counter("ewgate_upstream_ejections_overflow_total",
			"Outlier ejections not made because maxEjectionPercent of the route's endpoints were ejected."),
		Readmitted:    r.Counter("ewgate_upstream_probe_readmissions_total", "Ejected endpoints readmitted because a probe connected (--endpoint-probe-interval)."),
		ProbeFailures: r.Counter("ewgate_upstream_probe_failures_total", "Probes of ejected endpoints that did not connect; each extends the ejection."),
		PeekSeconds: r.Histogram("ewgate_hello_peek_seconds", "Time to read a ClientHello.",
			[]float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}),
		LoopsPacked: r.Gauge("ewgate_event_loops_packed", "Event loops whose work the first loop's goroutine does at low load, besides its own."),
		byReason:    make(map[string]*metrics.Counter),
	}
	// The packages that refuse list their reasons, so that a new one is
	// registered (and cached) without an edit here.
	reasons := []string{RejectNoData, RejectNoSNI, RejectBadSNI, RejectALPN, RejectNoEndpoints, RejectUnavailable, RejectOverLimit, RejectRouteOverLimit, RejectNoListener, RejectTooManyHops}
	for _, r := range discovery.Reasons() {
		reasons = append(reasons, string(r))
	}
	for _, r := range sni.PeekReasons() {
		reasons = append(reasons, rejectPeekPrefix+r)
	}
	for _, reason := range reasons {
		m.byReason[reason] = m.rejected.With(reason)
	}
	return m
}

// Rejected returns the count of connections refused for reason.
func (m *Metrics) Rejected(reason string) uint64 {
	if c, ok := m.byReason[reason]; ok {
		return c.Value()
	}
	return m.rejected.With(reason).Value()
}

func (m *Metrics) reject(reason string) {
	c, ok := m.byReason[reason]
	if !ok {
		c = m.rejected.With(reason)
	}
	c.Inc()
}
