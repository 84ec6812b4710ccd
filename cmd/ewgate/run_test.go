package main

import (
	"context"
	"fmt"
	"github.com/ewgate/ewgate/internal/await"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/api"
	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/sni"
	"github.com/ewgate/ewgate/workload"
)

// world is a loopback mesh for process tests: a dev CA, echo servers and
// a config directory for an ewgate process.
type world struct {
	t       *testing.T
	ca      *identity.DevCA
	dir     string
	port    int // gateway port
	admin   string
	network string
	echoes  map[string]*workload.EchoServer
}

func newWorld(t *testing.T, versions ...string) *world {
	t.Helper()
	ca, err := identity.NewDevCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		t.Fatal(err)
	}
	return newWorldCA(t, ca, "network-a", versions...)
}

// newWorldCA is newWorld in network with a given CA, so that several
// networks share one trust domain.
func newWorldCA(t *testing.T, ca *identity.DevCA, network string, versions ...string) *world {
	t.Helper()
	var err error
	w := &world{t: t, ca: ca, dir: t.TempDir(), network: network, echoes: make(map[string]*workload.EchoServer)}
	for _, v := range versions {
		e, err := workload.NewEchoServer("echo-"+v, "127.0.0.1:0", w.source("echo-"+v), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		w.echoes[v] = e
	}
	if w.port, err = testPorts.pick(); err != nil {
		t.Fatal(err)
	}
	adminPort, err := testPorts.pick()
	if err != nil {
		t.Fatal(err)
	}
	w.admin = fmt.Sprintf("127.0.0.1:%d", adminPort)
	return w
}

func (w *world) source(sa string) identity.Source {
	w.t.Helper()
	src, err := w.ca.NewSource(spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/"+sa), identity.IssueOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	return src
}

// writeConfig writes the demo's Istio YAML with the given versions as
// endpoints, replacing the file atomically as Kubernetes does.
func (w *world) writeConfig(versions ...string) {
	w.t.Helper()
	var es []*workload.EchoServer
	for _, v := range versions {
		es = append(es, w.echoes[v])
	}
	w.writeFile("mesh.yaml", workload.IstioConfig(w.network, w.port, es...))
}

func (w *world) writeFile(name, content string) {
	w.t.Helper()
	tmp := filepath.Join(w.dir, ".tmp-"+name)
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		w.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(w.dir, name)); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) gwAddr() string { return fmt.Sprintf("127.0.0.1:%d", w.port) }

// run starts "ewgate run" on the config directory and waits until ready.
func (w *world) run(extra ...string) *proc {
	w.t.Helper()
	args := append([]string{"run", "-f", w.dir, "--network", w.network,
		"--node-labels", "istio=eastwestgateway", "--bind-address", "127.0.0.1",
		"--admin-address", w.admin, "--log-level", "debug", "--endpoint-allow-loopback"}, extra...)
	p := startEwgate(w.t, args...)
	await.True(w.t, 30*time.Second, "/readyz", func() bool {
		code, _, _ := httpGet("http://" + w.admin + "/readyz")
		return code == 200
	})
	return p
}

// runWithAPI runs the gateway with the eastwest SVID and the gRPC API on
// a free loopback port, and returns that address.
func (w *world) runWithAPI(extra ...string) string {
	w.t.Helper()
	gwID := w.svidFiles("eastwest")
	apiPort, err := testPorts.pick()
	if err != nil {
		w.t.Fatal(err)
	}
	apiAddr := fmt.Sprintf("127.0.0.1:%d", apiPort)
	w.run(append([]string{"--svid-cert", filepath.Join(gwID, "cert.pem"), "--svid-key", filepath.Join(gwID, "key.pem"),
		"--trust-bundle", filepath.Join(gwID, "bundle.pem"), "--api-address", apiAddr}, extra...)...)
	return apiAddr
}

func (w *world) dial(subset string) (*workload.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := workload.Client{Source: w.source("sleep")}
	return cl.Dial(ctx, w.gwAddr(), sni.Key{Host: "echo.demo.svc.cluster.local", Port: 9080, Subset: subset})
}

func TestRunForwardsReloadsAndDrains(t *testing.T) {
	w := newWorld(t, "v1", "v2")
	w.writeConfig("v1")
	p := w.run("--drain-timeout", "30s")

	c, err := w.dial("")
	if err != nil {
		t.Fatal(err)
	}
	if c.Server != "echo-v1" || c.SeenAs != "spiffe://cluster.local/ns/demo/sa/sleep" {
		t.Fatalf("reached %s seen as %s", c.Server, c.SeenAs)
	}
	if err := c.Exchange(4 << 20); err != nil {
		t.Fatal(err)
	}
	c.Close()

	// A connection open across the reload keeps working.
	open, err := w.dial("")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	w.writeConfig("v2")
	await.True(t, 10*time.Second, "reload to route to v2", func() bool {
		c, err := w.dial("")
		if err != nil {
			return false
		}
		defer c.Close()
		return c.Server == "echo-v2"
	})
	if got := metric(t, w.admin, `ewgate_config_reloads_total{result="ok"}`); got != 2 {
		t.Errorf("reloads ok = %d, want 2", got)
	}

	// A broken config is refused and the last good one stays.
	w.writeFile("mesh.yaml", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: broken}\nspec: {servers: [{port: {number: 1, protocol: TLS}, hosts: ['*'], tls: {mode: SIMPLE}}]}\n")
	await.True(t, 10*time.Second, "failed reload to be counted", func() bool {
		return metric(t, w.admin, `ewgate_config_reloads_total{result="failed"}`) == 1
	})
	// The counter may move before the log line reaches the pipe.
	await.True(t, 10*time.Second, "log naming the bad field", func() bool {
		return strings.Contains(p.output(), "spec.servers[0].tls.mode: SIMPLE is not supported")
	})
	c, err = w.dial("")
	if err != nil {
		t.Fatalf("routing after a rejected config: %v", err)
	}
	if c.Server != "echo-v2" {
		t.Errorf("after a rejected config: routed to %s", c.Server)
	}
	c.Close()

	if _, err := open.Write([]byte("across reloads\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := open.ReadLine(); err != nil || line != "across reloads" {
		t.Fatalf("connection open across reloads: %q, %v", line, err)
	}

	// SIGTERM drains: no new connections, the open one finishes.
	p.cmd.Process.Signal(syscall.SIGTERM)
	await.True(t, 10*time.Second, "listener to close", func() bool {
		c, err := net.Dial("tcp", w.gwAddr())
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if _, err := open.Write([]byte("while draining\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := open.ReadLine(); err != nil || line != "while draining" {
		t.Fatalf("open connection while draining: %q, %v", line, err)
	}
	select {
	case <-p.exited:
		t.Fatal("ewgate exited with a connection still open")
	default:
	}
	open.Close()
	if err := p.wait(30 * time.Second); err != nil {
		t.Fatalf("ewgate exit: %v", err)
	}
	if !strings.Contains(p.output(), "msg=drained") {
		t.Errorf("no drained log:\n%s", p.output())
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unsupported tls mode",
			"apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  servers:\n  - port: {number: 15443, protocol: TLS}\n    hosts: ['*.local']\n    tls: {mode: MUTUAL}\n",
			"Gateway istio-system/gw: spec.servers[0].tls.mode: MUTUAL is not supported"},
		{"broken YAML", "apiVersion: [", "invalid YAML"},
		{"unknown field",
			"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\nspec: {hostz: [a.b]}\n",
			"ServiceEntry default/se: spec:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			f := filepath.Join(dir, "bad.yaml")
			os.WriteFile(f, []byte(tt.yaml), 0o644)
			out, err := runEwgate(t, "run", "-f", f, "--network", "n", "--admin-address", "")
			if err == nil {
				t.Fatal("ewgate run accepted a bad config")
			}
			if !strings.Contains(out, f) || !strings.Contains(out, tt.want) {
				t.Fatalf("error does not name file and field (%q):\n%s", tt.want, out)
			}
		})
	}
}

func TestSNICommand(t *testing.T) {
	tests := []struct {
		args    []string
		want    string
		wantErr bool
	}{
		{[]string{"sni", "decode", "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local"}, "cluster: outbound|9080|v1|reviews.bookinfo.svc.cluster.local", false},
		{[]string{"sni", "decode", "outbound|9080||reviews.bookinfo.svc.cluster.local"}, "sni:     outbound_.9080_._.reviews.bookinfo.svc.cluster.local", false},
		{[]string{"sni", "encode", "--host", "reviews.bookinfo.svc.cluster.local", "--port", "9080", "--subset", "v2"}, "outbound_.9080_.v2_.reviews.bookinfo.svc.cluster.local\noutbound|9080|v2|reviews.bookinfo.svc.cluster.local", false},
		{[]string{"sni", "decode", "outbound_.0_._.reviews"}, "port", true},
		{[]string{"sni", "encode", "--host", "10.0.0.1", "--port", "80"}, "IP", true},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, err := runEwgate(t, tt.args...)
			if (err != nil) != tt.wantErr || !strings.Contains(out, tt.want) {
				t.Fatalf("err=%v, output:\n%s\nwant %q", err, out, tt.want)
			}
		})
	}
}

func TestDemoOnce(t *testing.T) {
	out, err := runEwgate(t, "demo", "--once")
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		"ok       local mode: A tunnels to B",
		"echo-v2 saw spiffe://cluster.local/ns/demo/sa/sleep; 1 MiB echoed byte-exact",
		"ok       remote mode: dial B's gateway",
		"refused  unknown service",
		"ewgate_tunnel_streams_total 1",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

func TestRunIdentity(t *testing.T) {
	w := newWorld(t, "v1")
	w.writeConfig("v1")
	certs := w.svidFiles("eastwest")
	w.run("--svid-cert", filepath.Join(certs, "cert.pem"), "--svid-key", filepath.Join(certs, "key.pem"),
		"--trust-bundle", "cluster.local="+filepath.Join(certs, "bundle.pem"))
	if got := metric(t, w.admin, "ewgate_svid_remaining_seconds"); got <= 0 || got > 24*3600 {
		t.Fatalf("ewgate_svid_remaining_seconds = %d, want within the SVID's 24h", got)
	}

	// Nothing answers on the socket: a clear error within the timeout.
	sock := "unix://" + filepath.Join(t.TempDir(), "agent.sock")
	out, err := runEwgate(t, "run", "-f", w.dir, "--network", "n", "--admin-address", "", "--bind-address", "127.0.0.1",
		"--endpoint-allow-loopback", "--spiffe-socket", sock, "--spiffe-timeout", "200ms")
	if err == nil || !strings.Contains(out, "no SPIFFE Workload API answered") {
		t.Fatalf("err=%v, output:\n%s", err, out)
	}
}

func TestRunAPIResolveAndRegister(t *testing.T) {
	w := newWorld(t, "v1", "v2")
	w.writeConfig("v1")
	sock := filepath.Join(t.TempDir(), "api.sock")
	w.run("--api-socket", sock)

	out, err := runEwgate(t, "ctl", "--api", sock, "resolve", "outbound_.9080_.v1_.echo.demo.svc.cluster.local")
	if err != nil || !hasRow(out, "direct", w.echoes["v1"].Addr()) {
		t.Fatalf("ctl resolve: %v\n%s", err, out)
	}
	if _, err := w.dial("v2"); err == nil || !strings.Contains(err.Error(), "handshake failure") {
		t.Fatalf("subset v2 before registration: %v, want no endpoints", err)
	}

	// An agent registers the v2 server without touching the files.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, closer, err := api.Dial(ctx, sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	host, port, _ := net.SplitHostPort(w.echoes["v2"].Addr())
	var p uint32
	fmt.Sscan(port, &p)
	_, err = client.RegisterEndpoints(ctx, &ewgatev1.RegisterEndpointsRequest{
		Registrar: "agent-1", LeaseSeconds: 60,
		Endpoints: []*ewgatev1.Endpoint{{ServiceHost: workload.EchoHost, Address: host,
			Ports: map[string]uint32{"tcp-echo": p}, Labels: map[string]string{"version": "v2", "security.istio.io/tlsMode": "istio"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	await.True(t, 10*time.Second, "registered endpoint to serve subset v2", func() bool {
		c, err := w.dial("v2")
		if err != nil {
			return false
		}
		defer c.Close()
		return c.Server == "echo-v2"
	})
	if _, err := client.DeregisterEndpoints(ctx, &ewgatev1.DeregisterEndpointsRequest{Registrar: "agent-1"}); err != nil {
		t.Fatal(err)
	}
	await.True(t, 10*time.Second, "deregistered endpoint to leave", func() bool {
		c, err := w.dial("v2")
		if err == nil {
			c.Close()
		}
		return err != nil
	})
}

func TestRunGossipResolvesAcrossNetworks(t *testing.T) {
	key := filepath.Join(t.TempDir(), "gossip.key")
	os.WriteFile(key, []byte("# shared by the gateways of this mesh\nq0Yh4n8ZbC3Tj9v6Xk2LmA==\n"), 0o600)
	gossipAddr := func() string {
		p, err := testPorts.pick()
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("127.0.0.1:%d", p)
	}
	gossipArgs := func(w *world, name, addr string, join ...string) []string {
		args := []string{"--node-name", name, "--gossip-address", addr, "--gossip-key-file", key, "--gossip-profile", "local",
			"--mesh-id", "test-mesh", "--passthrough-advertise", w.gwAddr(), "--api-socket", filepath.Join(w.dir, "..", name+".sock")}
		if len(join) > 0 {
			args = append(args, "--join", strings.Join(join, ","))
		}
		return args
	}
	wa := newWorld(t, "v1")
	wa.writeConfig("v1")
	wb := newWorld(t, "v2")
	wb.network = "network-b"
	wb.writeConfig("v2")
	addrA, addrB := gossipAddr(), gossipAddr()
	wa.run(gossipArgs(wa, "gw-a", addrA)...)
	pb := wb.run(gossipArgs(wb, "gw-b", addrB, addrA)...)
	sockA := filepath.Join(wa.dir, "..", "gw-a.sock")

	resolve := func(from string) string {
		out, _ := runEwgate(t, "ctl", "--api", sockA, "resolve", "outbound_.9080_._.echo.demo.svc.cluster.local", "--from-network", from)
		return out
	}
	await.True(t, 30*time.Second, "network-b to appear in network-a's answers", func() bool {
		return hasRow(resolve("network-a"), "gateway", wb.gwAddr(), "1", "network-b")
	})
	out := resolve("network-a")
	if !hasRow(out, "direct", wa.echoes["v1"].Addr()) {
		t.Fatalf("network-a's own endpoint missing:\n%s", out)
	}
	// A client elsewhere reaches both networks through their gateways.
	out = resolve("network-c")
	for _, want := range []string{wa.gwAddr(), wb.gwAddr()} {
		if !hasRow(out, "gateway", want) {
			t.Fatalf("from network-c: missing %q:\n%s", want, out)
		}
	}
	if members, _ := runEwgate(t, "ctl", "--api", sockA, "members"); !hasRow(members, "gw-b", "network-b", "alive") {
		t.Fatalf("members:\n%s", members)
	}
	if catalog, _ := runEwgate(t, "ctl", "--api", sockA, "catalog"); !hasRow(catalog, "network-b", workload.EchoHost, "9080", "v2", "-=1", "gw-b") ||
		!hasRow(catalog, "network-a", workload.EchoHost, "9080", "v2", "0", "gw-a") {
		t.Fatalf("catalog:\n%s", catalog)
	}
	if got := metric(t, wa.admin, "ewgate_gossip_networks"); got != 2 {
		t.Errorf("ewgate_gossip_networks = %d, want 2", got)
	}

	// Network-b's only gateway dies: network-b leaves the answers.
	pb.cmd.Process.Kill()
	await.True(t, 60*time.Second, "network-b to leave after its gateway died", func() bool {
		return !strings.Contains(resolve("network-c"), "network-b")
	})
}

// hasRow reports whether a line of a table printed by ctl starts with the
// given columns.
func hasRow(out string, cols ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= len(cols) && slices.Equal(f[:len(cols)], cols) {
			return true
		}
	}
	return false
}

func TestRunAPIOverMTLS(t *testing.T) {
	w := newWorld(t, "v1")
	w.writeConfig("v1")
	apiAddr := w.runWithAPI()

	ctlArgs := func(dir string) []string {
		return []string{"ctl", "--api", apiAddr, "--svid-cert", filepath.Join(dir, "cert.pem"), "--svid-key", filepath.Join(dir, "key.pem"),
			"--trust-bundle", filepath.Join(dir, "bundle.pem"), "resolve", "outbound_.9080_._.echo.demo.svc.cluster.local"}
	}
	out, err := runEwgate(t, ctlArgs(w.svidFiles("operator"))...)
	if err != nil || !hasRow(out, "direct", w.echoes["v1"].Addr()) {
		t.Fatalf("ctl over mTLS: %v\n%s", err, out)
	}

	// A caller whose SVID another CA signed is refused.
	other := newWorld(t)
	out, err = runEwgate(t, ctlArgs(other.svidFiles("intruder"))...)
	if err == nil {
		t.Fatalf("a caller signed by another CA got an answer:\n%s", out)
	}
}

func TestRunAPIAddressNeedsIdentity(t *testing.T) {
	w := newWorld(t, "v1")
	w.writeConfig("v1")
	out, err := runEwgate(t, "run", "-f", w.dir, "--network", "network-a", "--node-labels", "istio=eastwestgateway",
		"--bind-address", "127.0.0.1", "--admin-address", w.admin, "--endpoint-allow-loopback", "--api-address", "127.0.0.1:0")
	if err == nil || !strings.Contains(out, "--api-address needs this node's SPIFFE identity") {
		t.Fatalf("err=%v, output:\n%s", err, out)
	}
	// The failed start released its ports: a new gateway can take them.
	w.run()
}

// Hellos split into 1-byte TCP segments and into many TLS records, and
// clients that stall or send garbage, against the real process.
//
// The clients that must get through go to a gateway of their own whose
// hello timeout no correct client can exceed, however loaded the machine:
// behind one with the 300 ms that makes the slowloris quick, their hello
// raced that deadline (a client under -race on a busy machine can take
// that long between its connect and its last byte), and lost in CI.
func TestRunAwkwardClients(t *testing.T) {
	good := newWorld(t, "v1")
	good.writeConfig("v1")
	good.run("--hello-timeout", "10m")
	bad := newWorld(t, "v1")
	bad.writeConfig("v1")
	bad.run("--hello-timeout", "300ms")
	for name, wrap := range map[string]func(net.Conn) net.Conn{
		"1-byte TCP segments": workload.Trickle(1),
		"7-byte TLS records":  workload.Refragment(7),
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cl := workload.Client{Source: good.source("sleep"), Wrap: wrap}
			c, err := cl.Dial(ctx, good.gwAddr(), sni.Key{Host: workload.EchoHost, Port: workload.EchoPort})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Exchange(1 << 20); err != nil {
				t.Fatal(err)
			}
		})
	}
	for _, tt := range []struct {
		name, reason string
		send         []byte
	}{
		{"slowloris", "hello_timeout", []byte{22, 3, 1, 2, 0, 1}},
		{"garbage", "hello_not_tls", []byte("\x00garbage")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			series := `ewgate_connections_rejected_total{reason="` + tt.reason + `"}`
			before := metric(t, bad.admin, series)
			c, err := net.Dial("tcp", bad.gwAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(tt.send)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Fatal("the gateway answered instead of closing")
			}
			await.True(t, 5*time.Second, series, func() bool { return metric(t, bad.admin, series) == before+1 })
		})
	}
	if n := good.echoes["v1"].Accepted(); n != 2 {
		t.Errorf("backend accepted %d connections, want the 2 good ones", n)
	}
	if n := bad.echoes["v1"].Accepted(); n != 0 {
		t.Errorf("backend accepted %d connections of clients that stalled or sent garbage", n)
	}
}

// testGatewayIDs are the SPIFFE IDs tunnelArgs gives gateways: each has
// its own, so their tunnel peer policy lists them all.
var testGatewayIDs = []string{
	"spiffe://cluster.local/ns/demo/sa/gw-a", "spiffe://cluster.local/ns/demo/sa/gw-b", "spiffe://cluster.local/ns/demo/sa/gw-c",
	"spiffe://cluster.local/ns/demo/sa/gw-b1", "spiffe://cluster.local/ns/demo/sa/gw-b2",
}

// tunnelArgs returns the flags of a gateway named name that gossips on
// gossip (joining join) and tunnels, with an SVID of w's CA.
func tunnelArgs(t *testing.T, w *world, key, name, gossip string, join ...string) []string {
	t.Helper()
	tunnelPort, err := testPorts.pick()
	if err != nil {
		t.Fatal(err)
	}
	id := w.svidFiles("gw-" + name)
	a := []string{"--node-name", name, "--gossip-address", gossip, "--gossip-key-file", key, "--gossip-profile", "local",
		"--peer-ids", strings.Join(testGatewayIDs, ","),
		"--passthrough-advertise", w.gwAddr(), "--tunnel-address", fmt.Sprintf("127.0.0.1:%d", tunnelPort),
		"--svid-cert", filepath.Join(id, "cert.pem"), "--svid-key", filepath.Join(id, "key.pem"), "--trust-bundle", filepath.Join(id, "bundle.pem")}
	if len(join) > 0 {
		a = append(a, "--join", strings.Join(join, ","))
	}
	return a
}

// gossipKeyFile writes a gossip keyring with one key.
func gossipKeyFile(t *testing.T) string {
	t.Helper()
	key := filepath.Join(t.TempDir(), "gossip.key")
	if err := os.WriteFile(key, []byte("q0Yh4n8ZbC3Tj9v6Xk2LmA==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return key
}

// testPorts hands out the loopback ports of every test of the package, so
// that no two ports a test picks before binding them are the same.
var testPorts loopbackPorts

func loopbackAddr(t *testing.T) string {
	t.Helper()
	p, err := testPorts.pick()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", p)
}

// "Local" mode: the client reaches only its own network's gateway, which
// carries the connection through a QUIC tunnel to the network that has the
// service. The client's TLS session reaches the endpoint untouched.
func TestRunTunnelsLocalMode(t *testing.T) {
	wa := newWorld(t)
	wa.writeConfig() // the service exists in network-a, with no endpoint here
	wb := newWorldCA(t, wa.ca, "network-b", "v1")
	wb.writeConfig("v1")
	key := gossipKeyFile(t)
	gossipA := loopbackAddr(t)
	wa.run(tunnelArgs(t, wa, key, "a", gossipA)...)
	wb.run(tunnelArgs(t, wb, key, "b", loopbackAddr(t), gossipA)...)

	var c *workload.Conn
	await.True(t, 30*time.Second, "a connection through network-a's gateway to reach network-b", func() bool {
		var err error
		c, err = wa.dial("v1")
		return err == nil
	})
	defer c.Close()
	if c.Server != "echo-v1" || c.SeenAs != "spiffe://cluster.local/ns/demo/sa/sleep" || c.ServerID != "spiffe://cluster.local/ns/demo/sa/echo-v1" {
		t.Fatalf("reached %s (%s), seen as %s: the client's TLS must reach the endpoint untouched", c.Server, c.ServerID, c.SeenAs)
	}
	if err := c.Exchange(4 << 20); err != nil {
		t.Fatal(err)
	}
	if got := metric(t, wa.admin, "ewgate_tunnel_streams_total"); got < 1 {
		t.Errorf("ewgate_tunnel_streams_total = %d on the dialing gateway", got)
	}
	if code, body, _ := httpGet("http://" + wb.admin + "/debug/tunnels"); code != 200 || !strings.Contains(body, "spiffe://cluster.local/ns/demo/sa/gw-a") {
		t.Errorf("/debug/tunnels on network-b: %d\n%s", code, body)
	}
	if code, body, _ := httpGet("http://" + wa.admin + "/debug/tunnels"); code != 200 ||
		!strings.Contains(body, `"Transport": "quic"`) || !strings.Contains(body, `"Fallbacks": 0`) {
		t.Errorf("/debug/tunnels on network-a lacks the link's transport and fallbacks: %d\n%s", code, body)
	}
	for series, want := range map[string]int{"ewgate_tunnel_links_quic": 1, "ewgate_tunnel_links_tcp": 0, "ewgate_tunnel_fallbacks_total": 0} {
		if got := metric(t, wa.admin, series); got != want {
			t.Errorf("%s = %d on the dialing gateway, want %d", series, got, want)
		}
	}
}

// A peer gateway that stops answering (frozen, so that its own sockets
// stay open) has its link retired once gossip declares it dead, so new
// connections get a fresh link. The links run over --tunnel-transport tcp.
func TestRunTunnelsRetireLinkOfDeadMember(t *testing.T) {
	wa := newWorld(t)
	wa.writeConfig()
	wb := newWorldCA(t, wa.ca, "network-b", "v1")
	wb.writeConfig("v1")
	key := gossipKeyFile(t)
	gossipA := loopbackAddr(t)
	pa := wa.run(append(tunnelArgs(t, wa, key, "a", gossipA), "--tunnel-transport", "tcp")...)
	pb := wb.run(tunnelArgs(t, wb, key, "b", loopbackAddr(t), gossipA)...)

	await.True(t, 30*time.Second, "a connection through network-a's gateway to reach network-b", func() bool {
		c, err := wa.dial("v1")
		if err != nil {
			return false
		}
		defer c.Close()
		return c.Exchange(1<<10) == nil
	})
	if got := metric(t, wa.admin, "ewgate_tunnel_links_tcp"); got != 1 {
		t.Fatalf("ewgate_tunnel_links_tcp = %d with --tunnel-transport tcp, want 1", got)
	}
	if got := metric(t, wa.admin, "ewgate_tunnel_links_quic"); got != 0 {
		t.Fatalf("ewgate_tunnel_links_quic = %d with --tunnel-transport tcp, want 0", got)
	}

	if err := pb.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	await.True(t, 60*time.Second, "network-a to retire its link to b once gossip declares b dead", func() bool {
		return strings.Contains(pa.output(), `msg="retiring tunnel link"`) && strings.Contains(pa.output(), `why="gossip: member b is dead"`)
	})
	await.True(t, 10*time.Second, "the closed link to leave the gauges", func() bool {
		return metric(t, wa.admin, "ewgate_tunnel_links_tcp") == 0
	})
}

// One of network-b's two gateways dies: once gossip declares it dead, new
// connections from network-a go through the other.
func TestRunTunnelsFailover(t *testing.T) {
	wa := newWorld(t)
	wa.writeConfig()
	wb1 := newWorldCA(t, wa.ca, "network-b", "v1")
	wb1.writeConfig("v1")
	wb2 := newWorldCA(t, wa.ca, "network-b", "v1")
	wb2.writeConfig("v1")
	key := gossipKeyFile(t)
	gossipA := loopbackAddr(t)
	wa.run(tunnelArgs(t, wa, key, "a", gossipA)...)
	pb1 := wb1.run(tunnelArgs(t, wb1, key, "b1", loopbackAddr(t), gossipA)...)
	wb2.run(tunnelArgs(t, wb2, key, "b2", loopbackAddr(t), gossipA)...)
	await.True(t, 30*time.Second, "both of network-b's gateways to carry connections", func() bool {
		if c, err := wa.dial("v1"); err == nil {
			c.Close()
		}
		return metric(t, wb1.admin, "ewgate_connections_forwarded_total") > 0 && metric(t, wb2.admin, "ewgate_connections_forwarded_total") > 0
	})
	pb1.cmd.Process.Kill()
	// After failure detection every new connection succeeds, through b2.
	ok := 0
	await.True(t, 60*time.Second, "10 connections in a row after b1 died", func() bool {
		c, err := wa.dial("v1")
		if err != nil {
			ok = 0
			return false
		}
		defer c.Close()
		if err := c.Exchange(64 << 10); err != nil {
			ok = 0
			return false
		}
		ok++
		return ok >= 10
	})
}
