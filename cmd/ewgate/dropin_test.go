package main

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
)

// istioDir is Istio's multi-network install as published, with an ingress
// gateway's config and an address-less WorkloadEntry next to it.
const istioDir = "../../discovery/testdata/istio-multicluster"

// randomLoopback returns a 127.x.y.z address, so that a test binding
// Istio's fixed ports (15443) does not collide with other processes on
// 127.0.0.1.
func randomLoopback() string {
	return fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), rand.IntN(256), 1+rand.IntN(250))
}

// "ewgate run" on the directory of Istio's multi-network install starts,
// serves expose-services' 15443 and warns about expose-istiod's
// PASSTHROUGH servers instead of refusing them.
func TestRunIstioMulticlusterDirectory(t *testing.T) {
	bind := randomLoopback()
	admin := loopbackAddr(t)
	p := startEwgate(t, "run", "-f", istioDir, "--network", "network-a", "--node-labels", "istio=eastwestgateway",
		"--bind-address", bind, "--admin-address", admin, "--log-level", "debug")
	await.True(t, 30*time.Second, "/readyz", func() bool {
		code, _, _ := httpGet("http://" + admin + "/readyz")
		return code == 200
	})
	c, err := net.DialTimeout("tcp", net.JoinHostPort(bind, "15443"), 5*time.Second)
	if err != nil {
		t.Fatalf("15443 not served: %v", err)
	}
	c.Close()
	for _, port := range []string{"15012", "15017"} {
		if c, err := net.DialTimeout("tcp", net.JoinHostPort(bind, port), 5*time.Second); err == nil {
			c.Close()
			t.Errorf("PASSTHROUGH port %s is served", port)
		}
	}
	out := p.output()
	for _, want := range []string{
		`msg="config: PASSTHROUGH server not served`,
		`Gateway default/istiod-gateway" field=spec.servers[0] port=15012`,
		`Gateway default/istiod-gateway" field=spec.servers[1] port=15017`,
		`WorkloadEntry demo/echo-elsewhere" field=spec.address`,
		`Gateway istio-system/bookinfo-gateway"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
