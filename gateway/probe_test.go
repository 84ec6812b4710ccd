package gateway

import (
	"net"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
)

// With probes on, an ejected endpoint that is back is readmitted by a
// probe, long before its ejection would end, and one that stays down stays
// ejected past EjectFor instead of being handed clients to fail on.
func TestProbeReadmitsEndpointThatIsBack(t *testing.T) {
	m := newMesh(t)
	live, flaky := m.backend("v1"), m.backend("v2")
	addr := flaky.Addr()
	flaky.Close()
	m.cfg.EjectAfter = 1
	m.cfg.EjectFor = 300 * time.Millisecond
	m.cfg.ProbeInterval = 20 * time.Millisecond
	m.start(echoYAML(freePort(t), live, flaky))

	// Clients' connections find it down and eject it.
	await.True(t, 10*time.Second, "endpoint ejected", func() bool {
		if c, err := m.dial(echoSNI, "istio"); err == nil {
			c.Close()
		}
		return !m.gw.Healthy(addr)
	})
	// Down for several EjectFor periods: each failed probe extends the
	// ejection, so it never looks healthy.
	deadline := time.Now().Add(4 * m.cfg.EjectFor)
	for time.Now().Before(deadline) {
		if m.gw.Healthy(addr) {
			t.Fatal("an endpoint the probe finds down was readmitted")
		}
		time.Sleep(10 * time.Millisecond) // sampling, not synchronisation
	}
	if m.gw.m.ProbeFailures.Value() == 0 {
		t.Error("no probe failure counted")
	}
	// Back on its address: a probe readmits it.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("the endpoint's port was taken meanwhile: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	await.True(t, 10*time.Second, "endpoint readmitted by a probe", func() bool { return m.gw.Healthy(addr) })
	if m.gw.m.Readmitted.Value() == 0 {
		t.Error("readmission not counted")
	}
}
