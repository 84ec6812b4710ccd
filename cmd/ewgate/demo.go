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
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/sni"
	"github.com/ewgate/ewgate/workload"
)

const demoUsage = `Usage: ewgate demo [--once]

Runs a self-contained mesh on loopback, without root: a development CA, two
versions of an mTLS echo service, an ewgate gateway configured from Istio
YAML, and a sidecar-like client. The client calls the service through the
gateway with Istio SNIs and prints what happened; then the demo keeps
running (admin URLs printed) until Ctrl-C, or exits with --once.

Flags:
`

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
	svid := func(sa string) (identity.Source, spiffeid.ID, error) {
		id := spiffeid.RequireFromPath(td, "/ns/demo/sa/"+sa)
		src, err := ca.NewSource(id, identity.IssueOptions{})
		return src, id, err
	}
	var echoes []*workload.EchoServer
	defer func() {
		for _, e := range echoes {
			e.Close()
		}
	}()
	for _, v := range []string{"v1", "v2"} {
		src, _, err := svid("echo-" + v)
		if err != nil {
			return err
		}
		e, err := workload.NewEchoServer("echo-"+v, "127.0.0.1:0", src, nil)
		if err != nil {
			return err
		}
		echoes = append(echoes, e)
	}
	port, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	cfgFile := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(cfgFile, []byte(workload.IstioConfig("network-a", port, echoes...)), 0o644); err != nil {
		return err
	}
	s := defaultSettings()
	s.Files = []string{cfgFile}
	s.Network = "network-a"
	s.NodeLabels = map[string]string{"istio": "eastwestgateway"}
	s.BindAddress = "127.0.0.1"
	s.AdminAddress = "127.0.0.1:0"
	s.DrainTimeout = duration(time.Second)
	n, err := startNode(ctx, s, log)
	if err != nil {
		return err
	}
	defer n.stop()
	gwAddr := fmt.Sprintf("127.0.0.1:%d", port)
	adminURL := "http://" + n.adminLn.Addr().String()

	clientSrc, clientID, err := svid("sleep")
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "ewgate demo: one network (%s) on loopback\n\n", s.Network)
	fmt.Fprintf(tw, "  config\t%s\t(Istio Gateway, ServiceEntry, DestinationRule)\n", cfgFile)
	fmt.Fprintf(tw, "  gateway\t%s\tAUTO_PASSTHROUGH for *.local\n", gwAddr)
	fmt.Fprintf(tw, "  admin\t%s\t/metrics /debug/config /readyz\n", adminURL)
	for _, e := range echoes {
		fmt.Fprintf(tw, "  %s\t%s\tspiffe://cluster.local/ns/demo/sa/%s\n", e.Name(), e.Addr(), e.Name())
	}
	fmt.Fprintf(tw, "  client\t\t%s\n", clientID)
	tw.Flush()

	fmt.Fprintf(stdout, "\ntraffic: client -> gateway %s -> endpoint (the gateway routes by SNI and never terminates TLS)\n", gwAddr)
	cl := workload.Client{Source: clientSrc}
	host := workload.EchoHost
	var failed []string
	call := func(name, serverName string, alpn []string, wantServer string) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		c := cl
		c.ALPN = alpn
		conn, err := c.DialName(cctx, gwAddr, serverName)
		switch {
		case wantServer == "" && err != nil:
			fmt.Fprintf(tw, "  refused\t%s\t%v (as expected)\n", name, err)
		case wantServer == "" && err == nil:
			conn.Close()
			fmt.Fprintf(tw, "  FAIL\t%s\treached %s; want refused\n", name, conn.Server)
			failed = append(failed, name)
		case err != nil:
			fmt.Fprintf(tw, "  FAIL\t%s\t%v\n", name, err)
			failed = append(failed, name)
		default:
			defer conn.Close()
			xerr := conn.Exchange(1 << 20)
			ok := xerr == nil && strings.HasPrefix(conn.Server, wantServer) && conn.SeenAs == clientID.String()
			verdict := "ok"
			if !ok {
				verdict = "FAIL"
				failed = append(failed, name)
			}
			detail := fmt.Sprintf("-> %s, which saw the client as %s; 1 MiB echoed byte-exact", conn.Server, conn.SeenAs)
			if xerr != nil {
				detail = fmt.Sprintf("-> %s: %v", conn.Server, xerr)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", verdict, name, detail)
		}
	}
	call(sni.Key{Host: host, Port: 9080, Subset: "v1"}.SNI(), sni.Key{Host: host, Port: 9080, Subset: "v1"}.SNI(), nil, "echo-v1")
	call(sni.Key{Host: host, Port: 9080, Subset: "v2"}.SNI(), sni.Key{Host: host, Port: 9080, Subset: "v2"}.SNI(), nil, "echo-v2")
	call(sni.Key{Host: host, Port: 9080}.SNI(), sni.Key{Host: host, Port: 9080}.SNI(), nil, "echo-")
	call("unknown service", sni.Key{Host: "nope.demo.svc.cluster.local", Port: 9080}.SNI(), nil, "")
	call("IP address as host", "outbound_.9080_._.127.0.0.1", nil, "")
	call("no Istio ALPN (h2 only)", sni.Key{Host: host, Port: 9080}.SNI(), []string{"h2"}, "")
	tw.Flush()

	fmt.Fprintf(stdout, "\nmetrics (%s/metrics):\n", adminURL)
	var sb strings.Builder
	n.reg.WriteTo(&sb)
	for _, line := range strings.Split(sb.String(), "\n") {
		if strings.HasPrefix(line, "ewgate_connections_") && !strings.HasSuffix(line, " 0") {
			fmt.Fprintf(stdout, "  %s\n", line)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("demo: %d checks failed: %s", len(failed), strings.Join(failed, "; "))
	}
	if *once {
		return nil
	}
	fmt.Fprintf(stdout, "\nrunning: try  curl %s/debug/config  (Ctrl-C to stop)\n", adminURL)
	<-ctx.Done()
	return nil
}

// freeLoopbackPort returns a port that was free on 127.0.0.1 a moment ago.
func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	if a, ok := ln.Addr().(*net.TCPAddr); ok {
		return a.Port, nil
	}
	return 0, errors.New("not a TCP address")
}
