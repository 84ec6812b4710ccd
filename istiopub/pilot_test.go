package istiopub

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/kubetest"
)

// pilotEnv names a pilot-discovery binary (built from the istio.io/istio
// module go.mod requires: go build istio.io/istio/pilot/cmd/pilot-discovery).
// Building it takes long on a small machine, so CI does not: without it
// the test skips and says so.
const pilotEnv = "EWGATE_PILOT_DISCOVERY"

// istiod itself, run against the API server the publisher writes, learns
// from the generated objects what the publisher means: network-b's
// gateway from the istio-remote Gateway (/debug/networkz), and reviews'
// endpoints in network-b with their weights, labels and the remote
// workloads' SPIFFE ID from the ServiceEntry and WorkloadEntries
// (/debug/endpointShardz).
func TestIstiodReadsWhatIsPublished(t *testing.T) {
	bin := os.Getenv(pilotEnv)
	if bin == "" {
		t.Skipf("$%s is not set: no istiod to run", pilotEnv)
	}
	srv := kubetest.Start(t)
	srv.Ensure(t, "", []byte(namespaces+`---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system, labels: {topology.istio.io/network: net-a}}
`))
	a, b := gossipPair(t, "192.0.2.10:15443")
	if err := b.Publish(reviewsSummary(3)); err != nil {
		t.Fatal(err)
	}
	startPublisher(t, srv, a, "replica-1", time.Minute)

	dir := t.TempDir()
	mesh, networks := filepath.Join(dir, "mesh"), filepath.Join(dir, "meshNetworks")
	os.WriteFile(mesh, []byte("trustDomain: cluster.local\n"), 0o644)
	os.WriteFile(networks, []byte("networks: {}\n"), 0o644)
	// Five free ports, held until all are picked so that none repeats.
	ports := make([]string, 5)
	var held []net.Listener
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = ln.Addr().String()
		held = append(held, ln)
	}
	for _, ln := range held {
		ln.Close()
	}
	cmd := exec.Command(bin, "discovery", "--kubeconfig", srv.Kubeconfig, "--meshConfig", mesh, "--networksConfig", networks,
		"--httpAddr", ports[0], "--grpcAddr", ports[1], "--secureGRPCAddr", ports[2], "--monitoringAddr", ports[3], "--httpsAddr", ports[4],
		"--clusterID", "cluster-a", "--domain", "cluster.local")
	cmd.Env = append(os.Environ(), "POD_NAMESPACE=istio-system", "POD_NAME=istiod-test", "REVISION=default")
	out, err := os.Create(filepath.Join(dir, "istiod.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		wg.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(out.Name())
			t.Logf("istiod's log (last 8 KiB):\n%s", b[max(0, len(b)-8192):])
		}
	})
	get := func(path string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ports[0]+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}

	var networkz string
	await.True(t, 120*time.Second, "istiod to know network-b's gateway", func() bool {
		networkz = get("/debug/networkz")
		return strings.Contains(networkz, "192.0.2.10") && strings.Contains(networkz, "net-b")
	})
	t.Logf("/debug/networkz: %s", networkz)

	type endpoint struct {
		Network, ServiceAccount string
		LbWeight                uint32
		Labels                  map[string]string
		Locality                struct{ Label string }
	}
	var got []string
	await.True(t, 60*time.Second, "istiod's endpoints of reviews in network-b", func() bool {
		var shards map[string]map[string]struct{ Shards map[string][]endpoint }
		if err := json.Unmarshal([]byte(get("/debug/endpointShardz")), &shards); err != nil {
			return false
		}
		got = nil
		for _, sh := range shards[reviews]["bookinfo"].Shards {
			for _, e := range sh {
				got = append(got, fmt.Sprintf("%s %s %s version=%s weight=%d", e.Network, e.ServiceAccount, e.Locality.Label, e.Labels["version"], e.LbWeight))
			}
		}
		return strings.Contains(strings.Join(got, "\n"), "net-b spiffe://cluster.local/ns/bookinfo/sa/reviews eu/1 version=v1 weight=3") &&
			strings.Contains(strings.Join(got, "\n"), "net-b spiffe://cluster.local/ns/bookinfo/sa/reviews eu/1 version=v2 weight=1")
	})
	t.Logf("istiod's endpoints of %s: %q", reviews, got)
}
