package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/lowports"
	"github.com/ewgate/ewgate/sni"
	"github.com/ewgate/ewgate/workload"
)

const demoUsage = `Usage: ewgate demo [--once]

Runs a self-contained two-network mesh on loopback, without root: a
development CA, an mTLS echo service (version v1 in network-a, v2 in
network-b), one ewgate gateway per network configured from Istio YAML,
gossiping with each other and linked by a QUIC tunnel, and a sidecar-like
client. The client calls the service with Istio SNIs in "remote" mode (it
dials the other network's gateway) and in "local" mode (it dials its own
gateway, which tunnels), and the demo prints what happened; then it keeps
running (admin URLs printed) until Ctrl-C, or exits with --once.

Flags:
`

// demoNetwork is one network of the demo: its echo server and gateway.
type demoNetwork struct {
	name, version string
	echo          *workload.EchoServer
	gwAddr        string
	node          *node
}

// runDemo implements "ewgate demo".
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, demoUsage); fs.PrintDefaults() }
	once := fs.Bool("once", false, "exit after the traffic instead of running until Ctrl-C")
	logLevel := fs.String("log-level", "error", "gateway log level (refusals log at warn)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLogger(stderr, *logLevel, "text")
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "ewgate-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := identity.NewDevCA(td)
	if err != nil {
		return err
	}
	issue := func(sa string) (*identity.MemorySource, spiffeid.ID, error) {
		id := spiffeid.RequireFromPath(td, "/ns/demo/sa/"+sa)
		src, err := ca.NewSource(id, identity.IssueOptions{})
		return src, id, err
	}
	nets := []*demoNetwork{{name: "network-a", version: "v1"}, {name: "network-b", version: "v2"}}
	// Each gateway has its network's own service account, so the tunnel
	// peer policy lists them all (it defaults to the gateway's own ID).
	var peerIDs []string
	for _, nw := range nets {
		peerIDs = append(peerIDs, demoGatewayID(td, nw.name).String())
	}
	var seed string // gossip address of the first gateway
	var ports loopbackPorts
	for _, nw := range nets {
		src, _, err := issue("echo-" + nw.version)
		if err != nil {
			return err
		}
		if nw.echo, err = workload.NewEchoServer("echo-"+nw.version, "127.0.0.1:0", src, nil); err != nil {
			return err
		}
		defer nw.echo.Close()
		s, err := demoGateway(dir, ca, nw, seed, peerIDs, &ports)
		if err != nil {
			return err
		}
		if nw.node, err = startNode(ctx, s, log); err != nil {
			return err
		}
		defer nw.node.stop()
		if seed == "" {
			seed = s.GossipAddress
		}
	}
	// Wait until each gateway has the other's summary of its network (a
	// member may be known before its first summary arrives).
	deadline := time.Now().Add(30 * time.Second)
	for _, nw := range nets {
		for !knowsAll(nw.node, len(nets)) {
			if time.Now().After(deadline) {
				return errors.New("demo: the gateways did not learn each other's networks within 30s")
			}
			time.Sleep(20 * time.Millisecond) // polling, bounded by the deadline
		}
	}

	clientSrc, clientID, err := issue("sleep")
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "ewgate demo: two networks on loopback, one gateway each, gossiping and linked by a QUIC tunnel\n\n")
	for _, nw := range nets {
		fmt.Fprintf(tw, "  %s\tgateway %s\tadmin http://%s\t%s at %s\n", nw.name, nw.gwAddr, nw.node.adminLn.Addr(), nw.echo.Name(), nw.echo.Addr())
	}
	fmt.Fprintf(tw, "  client\t%s\t\t(a sidecar in network-a)\n", clientID)
	fmt.Fprintf(tw, "  config\t%s\t\t(Istio Gateway, ServiceEntry, DestinationRule per network)\n", dir)
	tw.Flush()

	fmt.Fprintf(stdout, "\ntraffic (gateways route by SNI and never terminate TLS: each echo server reports the client's own SPIFFE ID):\n")
	var failed []string
	call := func(how, gwAddr string, key sni.Key, alpn []string, wantServer string) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		cl := workload.Client{Source: clientSrc, ALPN: alpn}
		name := key.SNI()
		conn, err := cl.DialName(cctx, gwAddr, name)
		switch {
		case wantServer == "" && err != nil:
			fmt.Fprintf(tw, "  refused\t%s\t%s\t%v (as expected)\n", how, name, err)
		case wantServer == "":
			conn.Close()
			fmt.Fprintf(tw, "  FAIL\t%s\t%s\treached %s; want refused\n", how, name, conn.Server)
			failed = append(failed, how)
		case err != nil:
			fmt.Fprintf(tw, "  FAIL\t%s\t%s\t%v\n", how, name, err)
			failed = append(failed, how)
		default:
			defer conn.Close()
			xerr := conn.Exchange(1 << 20)
			verdict, detail := "ok", fmt.Sprintf("%s saw %s; 1 MiB echoed byte-exact", conn.Server, conn.SeenAs)
			if xerr != nil || conn.Server != wantServer || conn.SeenAs != clientID.String() {
				verdict, detail = "FAIL", fmt.Sprintf("%s saw %s: %v", conn.Server, conn.SeenAs, xerr)
				failed = append(failed, how)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", verdict, how, name, detail)
		}
	}
	a, b := nets[0], nets[1]
	key := func(subset string) sni.Key {
		return sni.Key{Host: workload.EchoHost, Port: workload.EchoPort, Subset: subset}
	}
	call("network-a's own endpoint, via A", a.gwAddr, key("v1"), nil, "echo-v1")
	call("remote mode: dial B's gateway", b.gwAddr, key("v2"), nil, "echo-v2")
	call("local mode: A tunnels to B", a.gwAddr, key("v2"), nil, "echo-v2")
	call("unknown service", a.gwAddr, sni.Key{Host: "nope.demo.svc.cluster.local", Port: 9080}, nil, "")
	call("no Istio ALPN (h2 only)", a.gwAddr, key("v1"), []string{"h2"}, "")
	tw.Flush()

	for _, nw := range nets {
		fmt.Fprintf(stdout, "\nmetrics of %s's gateway (http://%s/metrics):\n", nw.name, nw.node.adminLn.Addr())
		var sb strings.Builder
		nw.node.reg.WriteTo(&sb)
		for _, line := range strings.Split(sb.String(), "\n") {
			if (strings.HasPrefix(line, "ewgate_connections_") || strings.HasPrefix(line, "ewgate_tunnel_streams_total") ||
				strings.HasPrefix(line, "ewgate_gossip_networks")) && !strings.HasSuffix(line, " 0") {
				fmt.Fprintf(stdout, "  %s\n", line)
			}
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("demo: %d checks failed: %s", len(failed), strings.Join(failed, "; "))
	}
	if *once {
		return nil
	}
	fmt.Fprintf(stdout, "\nrunning: try  curl http://%s/debug/config  or  /debug/members  (Ctrl-C to stop)\n", a.node.adminLn.Addr())
	<-ctx.Done()
	return nil
}

// knowsAll reports whether n holds a non-empty summary from each of the
// demo's networks.
func knowsAll(n *node, networks int) bool {
	seen := 0
	for _, ns := range n.gossip.node.Summaries() {
		if len(ns.Summary.Services) > 0 {
			seen++
		}
	}
	return seen >= networks
}

// demoGatewayID is the SPIFFE ID of network's demo gateway.
func demoGatewayID(td spiffeid.TrustDomain, network string) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/ns/istio-system/sa/eastwest-"+network)
}

// demoGateway writes network nw's config and its gateway's SVID under dir
// and returns the gateway's settings; seed is a gossip address to join,
// peerIDs the IDs of every demo gateway; its ports come from free.
func demoGateway(dir string, ca *identity.DevCA, nw *demoNetwork, seed string, peerIDs []string, free *loopbackPorts) (settings, error) {
	ports := make([]int, 3) // passthrough, gossip, tunnel
	for i := range ports {
		p, err := free.pick()
		if err != nil {
			return settings{}, err
		}
		ports[i] = p
	}
	ndir := filepath.Join(dir, nw.name)
	cfgFile := filepath.Join(ndir, "mesh.yaml")
	svid, err := ca.Issue(demoGatewayID(ca.TrustDomain(), nw.name), identity.IssueOptions{})
	if err != nil {
		return settings{}, err
	}
	if err := identity.WriteSVIDFiles(filepath.Join(ndir, "svid"), svid, ca.Bundle()); err != nil {
		return settings{}, err
	}
	if err := os.WriteFile(cfgFile, []byte(workload.IstioConfig(nw.name, ports[0], nw.echo)), 0o644); err != nil {
		return settings{}, err
	}
	nw.gwAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	s := defaultSettings()
	s.Files = []string{cfgFile}
	s.Network = nw.name
	s.NodeName = "gw-" + nw.name
	s.NodeLabels = map[string]string{"istio": "eastwestgateway"}
	s.BindAddress = "127.0.0.1"
	s.EndpointAllowLoopback = true // every demo workload listens on loopback
	s.AdminAddress = "127.0.0.1:0"
	// Two gateways share the host: each gets its own status port.
	status := "127.0.0.1:0"
	s.StatusAddress = &status
	s.DrainTimeout = duration(time.Second)
	s.SVIDCert = filepath.Join(ndir, "svid", identity.FileCert)
	s.SVIDKey = filepath.Join(ndir, "svid", identity.FileKey)
	s.TrustBundles = []string{filepath.Join(ndir, "svid", identity.FileBundle)}
	s.GossipAddress = fmt.Sprintf("127.0.0.1:%d", ports[1])
	s.GossipProfile = "local"
	s.InsecureGossip = true // a demo on one host; real meshes use --gossip-key-file
	s.PassthroughAdvertise = nw.gwAddr
	s.TunnelAddress = fmt.Sprintf("127.0.0.1:%d", ports[2])
	s.PeerIDs = peerIDs
	if seed != "" {
		s.Join = []string{seed}
	}
	return s, nil
}

// loopbackPorts hands out loopback ports for gateways to bind later
// (their passthrough, admin, gossip and tunnel ports), never the same one
// twice. They are free on TCP and UDP when picked, below the kernel's
// ephemeral range (the upper half of it that internal/lowports leaves to
// ewgate), where no connection of any process and no listener on port 0
// can take them before the gateway binds them; a port picked from those
// net.Listen on port 0 reported free was seen taken meanwhile, on a busy
// machine. A custom ephemeral range that leaves nothing below it falls
// back to such ports. The zero value is ready; it is safe for concurrent
// use.
type loopbackPorts struct {
	mu    sync.Mutex
	given map[int]bool
}

// pick returns a free loopback port not handed out before.
func (lp *loopbackPorts) pick() (int, error) {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if lp.given == nil {
		lp.given = make(map[int]bool)
	}
	lo, hi, err := lowports.Range(1)
	if err != nil {
		return lp.pickEphemeral()
	}
	p, err := lowports.Pick(lo, hi, func(p int) bool { return lp.given[p] })
	if err != nil {
		return 0, err
	}
	lp.given[p] = true
	return p, nil
}

// pickEphemeral is pick among the ports the kernel hands out for port 0.
func (lp *loopbackPorts) pickEphemeral() (int, error) {
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !lp.given[p] {
			lp.given[p] = true
			return p, nil
		}
	}
	return 0, errors.New("no loopback port that was not handed out already")
}
