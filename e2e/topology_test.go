package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/sni"
	"github.com/ewgate/ewgate/workload"
)

// Suite-wide state set by TestMain.
var (
	skipReason string // non-empty: the suite cannot run here
	ewgateBin  string // the ewgate binary built for this run
	runDir     string // per-run files: configs, SVIDs, logs, captures
)

// Ports every gateway uses, on its own addresses.
const (
	passthroughPort = 15443
	tunnelPort      = 15444
	gossipPort      = 15445
	apiPort         = 15020
	adminAddr       = "127.0.0.1:15446" // inside the gateway's namespace
	echoPort        = 9080              // service port of both echo services
)

// Services: echo in network B (subsets v1 and v2), echo-c in network C.
const (
	hostB = workload.EchoHost
	hostC = "echo-c.demo.svc.cluster.local"
)

// The client's SPIFFE ID, which the echo servers must see.
const clientID = "spiffe://cluster.local/ns/demo/sa/sleep"

// TestMain builds ewgate once, removes leftovers of crashed runs, and
// tears everything down at the end or on SIGINT/SIGTERM.
func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	skipReason = checkPrerequisites()
	if skipReason == "" {
		if err := removeLeftovers(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
		}
		var err error
		if runDir, err = os.MkdirTemp("", runPrefix); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		if os.Getenv("E2E_KEEP") == "" {
			defer os.RemoveAll(runDir)
		} else {
			defer fmt.Fprintf(os.Stderr, "e2e: E2E_KEEP set: logs, configs and captures kept in %s\n", runDir)
		}
		ewgateBin = filepath.Join(runDir, "ewgate")
		build := exec.Command("go", "build", "-o", ewgateBin, "github.com/ewgate/ewgate/cmd/ewgate")
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: go build ./cmd/ewgate: %v\n%s", err, out)
			return 1
		}
	}
	// Ctrl-C or a kill of the test binary still removes every namespace
	// and process.
	sigc := make(chan os.Signal, 1)
	done := make(chan struct{})
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case s := <-sigc:
			fmt.Fprintf(os.Stderr, "e2e: %v: removing namespaces and gateways\n", s)
			for _, err := range teardown() {
				fmt.Fprintln(os.Stderr, "e2e: teardown:", err)
			}
			os.RemoveAll(runDir)
			os.Exit(130)
		case <-done:
		}
	}()
	code := m.Run()
	signal.Stop(sigc)
	close(done)
	for _, err := range teardown() {
		fmt.Fprintln(os.Stderr, "e2e: teardown:", err)
		code = 1
	}
	return code
}

// checkPrerequisites says why the suite cannot run, or returns "".
func checkPrerequisites() string {
	if os.Geteuid() != 0 {
		return "e2e needs root to create network namespaces (CI runs it as root; run `sudo go test ./e2e`)"
	}
	for _, tool := range []string{"ip", "nft", "tcpdump"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("e2e needs %s (Debian: apt-get install iproute2 nftables tcpdump): %v", tool, err)
		}
	}
	if _, err := exec.LookPath("go"); err != nil {
		return "e2e builds ewgate with the go command, which is not on PATH"
	}
	return ""
}

// gateway is one "ewgate run" process in its own namespace.
type gateway struct {
	name, network string
	ns            *netns
	lanIP, wanIP  string // lanIP empty: attached to the WAN only
	args          []string
	logPath       string
	http          *http.Client // reaches the admin address inside ns

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// start starts the process; its output is appended to logPath.
func (g *gateway) start() error {
	f, err := os.OpenFile(g.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close() // the child has its own copy
	fmt.Fprintf(f, "=== %s: ewgate %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(g.args, " "))
	cmd := g.ns.command(append([]string{ewgateBin}, g.args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := startGroup(cmd, "ewgate "+g.name); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		forgetGroup(cmd.Process.Pid)
		close(exited)
	}()
	g.mu.Lock()
	g.cmd, g.exited = cmd, exited
	g.mu.Unlock()
	return nil
}

// running reports whether the process is running.
func (g *gateway) running() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil {
		return false
	}
	select {
	case <-g.exited:
		return false
	default:
		return true
	}
}

// signal sends sig to the process group and waits up to d for it to exit.
func (g *gateway) signal(sig syscall.Signal, d time.Duration) error {
	g.mu.Lock()
	cmd, exited := g.cmd, g.exited
	g.mu.Unlock()
	if cmd == nil {
		return nil
	}
	syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-exited:
		return nil
	case <-time.After(d):
		killGroup(cmd.Process.Pid)
		<-exited
		return fmt.Errorf("%s did not exit within %v of %v", g.name, d, sig)
	}
}

// kill kills the gateway at once (SIGKILL), as a crash would.
func (g *gateway) kill() { g.signal(syscall.SIGKILL, 10*time.Second) }

// ready polls /readyz until it answers 200.
func (g *gateway) ready(t testing.TB) {
	t.Helper()
	await.True(t, 30*time.Second, g.name+" /readyz", func() bool {
		if !g.running() {
			t.Fatalf("%s exited:\n%s", g.name, g.logTail(8<<10))
		}
		code, _, _ := g.get("/readyz")
		return code == http.StatusOK
	})
}

// get fetches path from the admin address.
func (g *gateway) get(path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+adminAddr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := g.http.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metric returns the sum of every series of the named metric on /metrics.
func (g *gateway) metric(name string) (float64, error) {
	code, body, err := g.get("/metrics")
	if err != nil || code != http.StatusOK {
		return 0, fmt.Errorf("%s /metrics: %d %v", g.name, code, err)
	}
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		series, value, ok := strings.Cut(line, " ")
		if !ok || (series != name && !strings.HasPrefix(series, name+"{")) {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return 0, fmt.Errorf("%s /metrics: %q: %w", g.name, line, err)
		}
		sum += v
	}
	return sum, nil
}

// logTail returns the last n bytes of the gateway's log.
func (g *gateway) logTail(n int64) string {
	b, err := os.ReadFile(g.logPath)
	if err != nil {
		return err.Error()
	}
	if int64(len(b)) > n {
		b = append([]byte("...\n"), b[int64(len(b))-n:]...)
	}
	return string(b)
}

// lanPassthrough returns the gateway's AUTO_PASSTHROUGH address on the LAN.
func (g *gateway) lanPassthrough() string {
	return net.JoinHostPort(g.lanIP, strconv.Itoa(passthroughPort))
}

// wanPassthrough returns the gateway's AUTO_PASSTHROUGH address on the WAN.
func (g *gateway) wanPassthrough() string {
	return net.JoinHostPort(g.wanIP, strconv.Itoa(passthroughPort))
}

// topology is the whole multi-network world of doc.go.
type topology struct {
	ca       *identity.DevCA
	client   workload.Client
	keyFile  string
	wan      *netns
	lan      map[string]*netns // network letter -> LAN switch
	wl       map[string]*netns // network letter -> workload namespace
	rc       *netns            // remote-mode client: LAN A and WAN
	gw       map[string]*gateway
	echoes   []*workload.EchoServer
	api      ewgatev1.GatewayServiceClient // network A's gateway, from A's workload namespace
	apiConn  io.Closer
	gwSeeds  []string
	gwConfig map[string]string // network letter -> config file
}

// gatewaySpec describes a gateway to create.
type gatewaySpec struct {
	key, network, lan string // lan: network letter, or "" for WAN only
	lanIP, wanIP      string
}

// The WAN is 192.0.2.0/24; LAN x is 10.x.0.0/24 with gateways at .1 and
// .2 and workloads at .10.
var gatewaySpecs = []gatewaySpec{
	{"a", "network-a", "a", "10.1.0.1", "192.0.2.1"},
	{"b1", "network-b", "b", "10.2.0.1", "192.0.2.2"},
	{"b2", "network-b", "b", "10.2.0.2", "192.0.2.3"},
	{"c", "network-c", "c", "10.3.0.1", "192.0.2.4"},
	{"x-badkey", "network-x", "", "", "192.0.2.5"},  // wrong gossip key
	{"x-otherca", "network-x", "", "", "192.0.2.6"}, // SVID of another CA
}

// gatewayID is the SPIFFE ID of the gateway with key: each has its own
// service account.
func gatewayID(key string) string {
	return "spiffe://cluster.local/ns/istio-system/sa/eastwest-" + key
}

// gatewayIDs are the IDs of every gateway, their tunnel peer policy
// (--peer-ids; the default would be each gateway's own ID alone).
func gatewayIDs() []string {
	var ids []string
	for _, s := range gatewaySpecs {
		ids = append(ids, gatewayID(s.key))
	}
	return ids
}

// newTopology builds the namespaces, links, workloads and gateways of
// doc.go and waits until network A's gateway sees networks B and C. The
// gateways x-* are created but not started. Everything is removed by a
// cleanup of t (and by TestMain's teardown as a last resort).
func newTopology(t *testing.T) *topology {
	t.Helper()
	tp := &topology{lan: map[string]*netns{}, wl: map[string]*netns{}, gw: map[string]*gateway{}, gwConfig: map[string]string{}}
	t.Cleanup(func() { tp.close(t) })
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	var err error
	tp.ca, err = identity.NewDevCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
	must(err)
	src, err := tp.ca.NewSource(spiffeid.RequireFromString(clientID), identity.IssueOptions{})
	must(err)
	tp.client = workload.Client{Source: src}
	tp.keyFile = filepath.Join(runDir, "gossip.key")
	must(writeGossipKey(tp.keyFile))

	tp.wan, err = newSwitch("wan")
	must(err)
	for _, n := range []string{"a", "b", "c"} {
		tp.lan[n], err = newSwitch("lan-" + n)
		must(err)
		tp.wl[n], err = newNetns(n + "-wl")
		must(err)
		must(link(tp.wl[n], tp.lan[n], "eth0", "wl", lanIP(n, 10)+"/24"))
		// Workloads route everything to their network's gateway, which
		// must not forward it.
		must(ipCmd("-n", tp.wl[n].name, "route", "add", "default", "via", lanIP(n, 1)))
	}
	// The remote-mode client: a pod of network A that may also reach other
	// networks' gateways over the WAN, as Istio's remote mode assumes.
	tp.rc, err = newNetns("a-rc")
	must(err)
	must(link(tp.rc, tp.lan["a"], "eth0", "rc", lanIP("a", 11)+"/24"))
	must(link(tp.rc, tp.wan, "wan0", "a-rc", "192.0.2.100/24"))

	// Echo servers: network B has v1 and v2, network C has v1 of echo-c.
	tp.echo(t, "b", "b-echo-v1", echoPort)
	tp.echo(t, "b", "b-echo-v2", echoPort+1)
	tp.echo(t, "c", "c-echo-v1", echoPort)
	for n, eps := range map[string][]endpoint{
		"a": nil,
		"b": {{hostB, lanIP("b", 10), echoPort, "v1"}, {hostB, lanIP("b", 10), echoPort + 1, "v2"}},
		"c": {{hostC, lanIP("c", 10), echoPort, "v1"}},
		"x": nil,
	} {
		dir := filepath.Join(runDir, "config-"+n)
		must(os.MkdirAll(dir, 0o755))
		tp.gwConfig[n] = dir
		must(os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(istioYAML("network-"+n, eps)), 0o644))
	}

	for _, s := range gatewaySpecs {
		if !strings.HasPrefix(s.key, "x-") {
			tp.gwSeeds = append(tp.gwSeeds, net.JoinHostPort(s.wanIP, strconv.Itoa(gossipPort)))
		}
	}
	// gw-x-otherca has an SVID of another CA of the same trust domain
	// name, gw-x-badkey another gossip key.
	otherCA, err := identity.NewDevCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
	must(err)
	badKey := filepath.Join(runDir, "wrong-gossip.key")
	must(writeGossipKey(badKey))
	for _, s := range gatewaySpecs {
		ca, key := tp.ca, tp.keyFile
		switch s.key {
		case "x-otherca":
			ca = otherCA
		case "x-badkey":
			key = badKey
		}
		tp.gw[s.key] = tp.newGateway(t, s, ca, key)
	}
	for _, k := range []string{"a", "b1", "b2", "c"} {
		must(tp.gw[k].start())
	}
	for _, k := range []string{"a", "b1", "b2", "c"} {
		tp.gw[k].ready(t)
	}

	// A sidecar of network A asks its gateway's API (mTLS, on the LAN).
	tp.api, tp.apiConn, err = tp.apiClient(tp.wl["a"], tp.gw["a"])
	must(err)
	tp.awaitNetworks(t, 60*time.Second, map[string]uint32{"network-b": 2, "network-c": 1})
	return tp
}

// apiClient connects from namespace from to g's gRPC API on its LAN
// address, with the client's SVID (SPIFFE mTLS). The gRPC dialer creates
// every connection inside from. (api.Dial takes no dial options, so the
// client is built here with grpc.NewClient.)
func (tp *topology) apiClient(from *netns, g *gateway) (ewgatev1.GatewayServiceClient, io.Closer, error) {
	tlsCfg := identity.ClientTLSConfig(tp.client.Source, nil)
	conn, err := grpc.NewClient("passthrough:///"+net.JoinHostPort(g.lanIP, strconv.Itoa(apiPort)),
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return from.dial(ctx, addr) }))
	if err != nil {
		return nil, nil, fmt.Errorf("API of %s: %w", g.name, err)
	}
	return ewgatev1.NewGatewayServiceClient(conn), conn, nil
}

// lanIP returns the address host of network n's LAN.
func lanIP(n string, host int) string {
	return fmt.Sprintf("10.%d.0.%d", n[0]-'a'+1, host)
}

// endpoint is one WorkloadEntry of a network's config.
type endpoint struct {
	host, addr string
	port       int
	version    string
}

// istioYAML is the config of one network: the east-west Gateway, both
// services (every network defines them, as Istio requires for
// multi-network) with the network's own endpoints, and their subsets.
func istioYAML(network string, eps []endpoint) string {
	var b strings.Builder
	b.WriteString(workload.EastWestGateway(passthroughPort))
	for _, host := range []string{hostB, hostC} {
		name, _, _ := strings.Cut(host, ".")
		fmt.Fprintf(&b, `---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: %s, namespace: demo}
spec:
  hosts: [%s]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %d, name: tcp-echo, protocol: TCP}]
  workloadSelector: {labels: {app: %s}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: %s, namespace: demo}
spec:
  host: %s
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`, name, host, echoPort, name, name, host)
		for _, e := range eps {
			if e.host != host {
				continue
			}
			fmt.Fprintf(&b, `---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: %s-%s, namespace: demo}
spec:
  address: %s
  ports: {tcp-echo: %d}
  network: %s
  labels: {app: %s, version: %s, security.istio.io/tlsMode: istio}
`, name, e.version, e.addr, e.port, network, name, e.version)
		}
	}
	return b.String()
}

// writeGossipKey writes a keyring with one random AES-128 key.
func writeGossipKey(path string) error {
	k := make([]byte, 16)
	rand.Read(k)
	return os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(k)+"\n"), 0o600)
}

// echo starts an echo server of network n, listening in its workload
// namespace, with its own SVID.
func (tp *topology) echo(t *testing.T, n, name string, port int) {
	t.Helper()
	src, err := tp.ca.NewSource(spiffeid.RequireFromPath(tp.ca.TrustDomain(), "/ns/demo/sa/"+name), identity.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var e *workload.EchoServer
	// NewEchoServer binds with net.Listen: inside do, the socket is the
	// namespace's.
	err = tp.wl[n].do(func() (err error) {
		e, err = workload.NewEchoServer(name, net.JoinHostPort(lanIP(n, 10), strconv.Itoa(port)), src, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	tp.echoes = append(tp.echoes, e)
}

// echoByName returns the echo server called name.
func (tp *topology) echoByName(name string) *workload.EchoServer {
	for _, e := range tp.echoes {
		if e.Name() == name {
			return e
		}
	}
	panic("e2e: no echo server " + name)
}

// newGateway creates (does not start) the gateway of spec s, with an SVID
// from ca and the gossip keyring keyFile.
func (tp *topology) newGateway(t *testing.T, s gatewaySpec, ca *identity.DevCA, keyFile string) *gateway {
	t.Helper()
	ns, err := newNetns("gw-" + s.key)
	if err != nil {
		t.Fatal(err)
	}
	if s.lan != "" {
		if err := link(ns, tp.lan[s.lan], "lan0", "gw-"+s.key, s.lanIP+"/24"); err != nil {
			t.Fatal(err)
		}
	}
	if err := link(ns, tp.wan, "wan0", "gw-"+s.key, s.wanIP+"/24"); err != nil {
		t.Fatal(err)
	}
	svidDir := filepath.Join(runDir, "svid-"+s.key)
	svid, err := ca.Issue(spiffeid.RequireFromString(gatewayID(s.key)), identity.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Every gateway trusts the mesh's CA: gw-x-otherca accepts B's
	// gateways, and they must refuse it.
	if err := identity.WriteSVIDFiles(svidDir, svid, tp.ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	cfg := tp.gwConfig[s.network[len("network-"):]]
	wan := func(port int) string { return net.JoinHostPort(s.wanIP, strconv.Itoa(port)) }
	args := []string{"run", "-f", cfg, "--network", s.network, "--node-labels", "istio=eastwestgateway",
		"--node-name", "gw-" + s.key, "--bind-address", "0.0.0.0", "--admin-address", adminAddr,
		"--drain-timeout", "1s", "--log-level", logLevel(),
		"--svid-cert", filepath.Join(svidDir, identity.FileCert), "--svid-key", filepath.Join(svidDir, identity.FileKey),
		"--trust-bundle", filepath.Join(svidDir, identity.FileBundle),
		"--gossip-address", wan(gossipPort), "--gossip-key-file", keyFile, "--gossip-profile", gossipProfile(),
		"--mesh-id", "e2e", "--passthrough-advertise", wan(passthroughPort), "--tunnel-address", wan(tunnelPort),
		"--peer-ids", strings.Join(gatewayIDs(), ",")}
	if s.lanIP != "" {
		args = append(args, "--api-address", net.JoinHostPort(s.lanIP, strconv.Itoa(apiPort)))
	}
	var seeds []string
	for _, a := range tp.gwSeeds {
		if a != wan(gossipPort) {
			seeds = append(seeds, a)
		}
	}
	args = append(args, "--join", strings.Join(seeds, ","))
	return &gateway{
		name: "gw-" + s.key, network: s.network, ns: ns, lanIP: s.lanIP, wanIP: s.wanIP, args: args,
		logPath: filepath.Join(runDir, "gw-"+s.key+".log"),
		http:    &http.Client{Transport: &http.Transport{DialContext: ns.dialContext, DisableKeepAlives: true}},
	}
}

// logLevel is the gateways' --log-level: "info" unless E2E_LOG_LEVEL says
// otherwise ("debug" adds memberlist's chatter).
func logLevel() string {
	if l := os.Getenv("E2E_LOG_LEVEL"); l != "" {
		return l
	}
	return "info"
}

// gossipProfile is the --gossip-profile of every gateway: "local" unless
// E2E_GOSSIP_PROFILE says otherwise (to measure "lan").
func gossipProfile() string {
	if p := os.Getenv("E2E_GOSSIP_PROFILE"); p != "" {
		return p
	}
	return "local"
}

// close stops everything newTopology created, printing the gateways' logs
// when the test failed.
func (tp *topology) close(t *testing.T) {
	for _, g := range tp.gw {
		g.kill()
	}
	if t.Failed() {
		for _, s := range gatewaySpecs {
			if g := tp.gw[s.key]; g != nil {
				t.Logf("log of %s (%s):\n%s", g.name, g.logPath, g.logTail(48<<10))
			}
		}
	}
	if tp.apiConn != nil {
		tp.apiConn.Close()
	}
	for _, e := range tp.echoes {
		e.Close()
	}
	for _, err := range teardown() {
		t.Errorf("teardown: %v", err)
	}
}

// members returns network A's gateway's view: member name -> state.
func (tp *topology) members(ctx context.Context) (map[string]ewgatev1.MemberState, error) {
	resp, err := tp.api.ListMembers(ctx, &ewgatev1.ListMembersRequest{})
	if err != nil {
		return nil, err
	}
	m := make(map[string]ewgatev1.MemberState)
	for _, mb := range resp.GetMembers() {
		m[mb.GetName()] = mb.GetState()
	}
	return m, nil
}

// alive reports whether A's gateway sees member name alive; an error
// means it could not tell.
func (tp *topology) alive(name string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := tp.members(ctx)
	if err != nil {
		return false, fmt.Errorf("ListMembers on gw-a: %w", err)
	}
	return m[name] == ewgatev1.MemberState_MEMBER_STATE_ALIVE, nil
}

// awaitAlive waits until A's gateway sees member name alive (want) or not
// alive (!want); failed queries count as neither.
func (tp *topology) awaitAlive(t testing.TB, d time.Duration, name string, want bool) {
	t.Helper()
	what := fmt.Sprintf("%s to be alive in gw-a's view", name)
	if !want {
		what = fmt.Sprintf("%s to leave gw-a's view", name)
	}
	await.True(t, d, what, func() bool {
		ok, err := tp.alive(name)
		return err == nil && ok == want
	})
}

// networks returns A's gateway's catalog: network -> gateways, for
// networks offering at least one service.
func (tp *topology) networks() (map[string]uint32, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := tp.api.ListNetworks(ctx, &ewgatev1.ListNetworksRequest{})
	if err != nil {
		return nil, err
	}
	m := make(map[string]uint32)
	for _, n := range resp.GetNetworks() {
		if n.GetServices() > 0 {
			m[n.GetName()] = n.GetGateways()
		}
	}
	return m, nil
}

// awaitNetworks waits until A's catalog has each network of want with
// that many gateways.
func (tp *topology) awaitNetworks(t testing.TB, d time.Duration, want map[string]uint32) {
	t.Helper()
	await.True(t, d, fmt.Sprintf("network A's catalog to hold %v", want), func() bool {
		got, err := tp.networks()
		if err != nil {
			return false
		}
		for n, g := range want {
			if got[n] != g {
				return false
			}
		}
		return true
	})
}

// dial connects from namespace from to addr, calling key like a sidecar.
func (tp *topology) dial(ctx context.Context, from *netns, addr string, key sni.Key) (*workload.Conn, error) {
	var c *workload.Conn
	err := from.do(func() (err error) {
		c, err = tp.client.Dial(ctx, addr, key)
		return err
	})
	return c, err
}

// call dials key from namespace from through addr, checks who answered and
// that the server saw the client's own SPIFFE ID, and echoes n bytes
// carrying marker. It returns the server's name.
func (tp *topology) call(ctx context.Context, from *netns, addr string, key sni.Key, marker string, n int) (string, error) {
	c, err := tp.dial(ctx, from, addr, key)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if c.SeenAs != clientID {
		return c.Server, fmt.Errorf("%s saw the client as %q, want %q: the client's TLS must reach the endpoint untouched", c.Server, c.SeenAs, clientID)
	}
	if want := "spiffe://cluster.local/ns/demo/sa/" + c.Server; c.ServerID != want {
		return c.Server, fmt.Errorf("server %s presented %s, want %s", c.Server, c.ServerID, want)
	}
	return c.Server, exchange(ctx, c, marker, n)
}

// newMarker returns a unique marker for one connection's payload.
func newMarker(what string) string {
	b := make([]byte, 12)
	rand.Read(b)
	return "ewe2e-marker-" + what + "-" + hex.EncodeToString(b)
}

// exchange sends marker, n random bytes and marker again, half-closes and
// reads the echo to EOF; the echo must be byte-exact (length and SHA-256).
func exchange(ctx context.Context, c *workload.Conn, marker string, n int) error {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	payload := make([]byte, 0, n+2*len(marker))
	payload = append(payload, marker...)
	body := make([]byte, n)
	rand.Read(body)
	payload = append(append(payload, body...), marker...)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("send %d bytes: %w", len(payload), werr)
	}
	if rerr != nil {
		return fmt.Errorf("read echo after %d of %d bytes: %w", len(got), len(payload), rerr)
	}
	if ws, gs := sha256.Sum256(payload), sha256.Sum256(got); len(got) != len(payload) || ws != gs {
		return fmt.Errorf("echo mismatch: got %d bytes sha256 %x, sent %d sha256 %x", len(got), gs, len(payload), ws)
	}
	return nil
}

// errNotAlert is returned by tlsAlert for errors that are not a TLS alert
// from the peer.
var errNotAlert = errors.New("not a TLS alert")

// tlsAlert returns the alert text of a "remote error: tls: ..." error.
func tlsAlert(err error) (string, error) {
	if err == nil {
		return "", errNotAlert
	}
	_, alert, ok := strings.Cut(err.Error(), "remote error: tls: ")
	if !ok {
		return "", fmt.Errorf("%w: %v", errNotAlert, err)
	}
	return alert, nil
}
