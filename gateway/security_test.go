package gateway

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/internal/await"
)

// halfHello is the start of a ClientHello of 60,000 bytes in records of
// 16 KiB, cut after 6,000 bytes: more than the pooled 4 KiB buffer holds.
func halfHello() []byte {
	b := make([]byte, 6000)
	copy(b, []byte{22, 3, 1, 0x40, 0x00, 1, 0x00, 0xea, 0x60})
	return b
}

// TestHelloMemoryBudget: with the hello budget taken by one half-sent
// large hello, the next is refused and counted as hello_over_budget, while
// an ordinary hello, which fits the pooled buffer, is still served.
func TestHelloMemoryBudget(t *testing.T) {
	m := newMesh(t)
	m.cfg.HelloMemory = 8192 // one buffer grown from 4 KiB
	m.startEcho()

	first, err := net.Dial("tcp", m.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := first.Write(halfHello()); err != nil {
		t.Fatal(err)
	}
	await.True(t, 10*time.Second, "the first hello to take the budget", func() bool { return m.gw.HelloMemory() == 8192 })

	second, err := net.Dial("tcp", m.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if _, err := second.Write(halfHello()); err != nil {
		t.Fatal(err)
	}
	second.SetReadDeadline(time.Now().Add(10 * time.Second))
	// Closed with bytes unread: EOF or a reset, never a timeout.
	if _, err := io.ReadAll(second); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("the refused connection: %v, want it closed", err)
	}
	await.True(t, 5*time.Second, "hello_over_budget counted", func() bool { return m.gw.m.Rejected("hello_over_budget") == 1 })

	c, err := m.dial("outbound_.9080_.v1_.echo.demo.svc.cluster.local", "istio")
	if err != nil {
		t.Fatalf("an ordinary hello with the budget taken: %v", err)
	}
	if c.Server != "v1" {
		t.Fatalf("reached %s, want v1", c.Server)
	}
	c.Close()

	first.Close()
	await.True(t, 10*time.Second, "the budget to be free again", func() bool { return m.gw.HelloMemory() == 0 })
}

// TestDialControlRefusesResolvedAddress: an endpoint named by DNS is
// checked again at connect time, so a name resolving to loopback is
// refused by an address policy that refuses loopback, and counted.
func TestDialControlRefusesResolvedAddress(t *testing.T) {
	m := newMesh(t)
	v1 := m.backend("v1")
	policy := discovery.AddressPolicy{AllowNames: true}
	m.cfg.DialControl = policy.Control
	m.start(strings.ReplaceAll(echoYAML(freePort(t), v1), "address: 127.0.0.1", "address: localhost"))

	if _, err := m.dial("outbound_.9080_.v1_.echo.demo.svc.cluster.local", "istio"); err == nil {
		t.Fatal("the gateway dialed localhost's loopback address")
	}
	await.True(t, 5*time.Second, "the refusal counted", func() bool { return m.gw.m.Rejected(RejectUnavailable) == 1 })
	if m.gw.m.Forwarded.Value() != 0 {
		t.Fatal("a connection was forwarded")
	}
}
