package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ewgate/ewgate/api"
	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
	"github.com/ewgate/ewgate/identity"
)

const ctlUsage = `Usage: ewgate ctl [--api ADDR] [--svid-cert F --svid-key F --trust-bundle F] COMMAND

Asks a running gateway over its gRPC API: its unix socket (ewgate run
--api-socket PATH), or its TCP address with SPIFFE mTLS (--api-address).

Commands:
  resolve NAME [--from-network N]   what a client in network N should dial for
                                    an Istio SNI or cluster name (default N:
                                    the gateway's own network)
  members                           the gateways gossip knows
  networks                          the networks gossip knows
  catalog                           what each network offers: healthy
                                    endpoints per service port and subset

Flags:
`

// runCtl implements "ewgate ctl".
func runCtl(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ctlUsage); fs.PrintDefaults() }
	addr := fs.String("api", os.Getenv("EWGATE_API"), "gateway API `address`: unix:///path or a socket path (default $EWGATE_API)")
	timeout := fs.Duration("timeout", 10*time.Second, "deadline of the call")
	cert := fs.String("svid-cert", "", "SVID certificate `file`, for an API address served with mTLS")
	key := fs.String("svid-key", "", "SVID key `file`")
	bundle := fs.String("trust-bundle", "", "trust bundle `file` of the gateway's trust domain")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("ctl: missing command")
	}
	if *addr == "" {
		return errors.New("ctl: give --api ADDR or set EWGATE_API")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var tlsCfg *tls.Config
	if *cert != "" {
		src, err := identity.NewFileSource(ctx, identity.FileConfig{CertFile: *cert, KeyFile: *key,
			Bundles: []identity.BundleFile{{Path: *bundle}}})
		if err != nil {
			return fmt.Errorf("ctl: %w", err)
		}
		defer src.Close()
		tlsCfg = identity.ClientTLSConfig(src, nil)
	}
	client, closer, err := api.Dial(ctx, *addr, tlsCfg)
	if err != nil {
		return fmt.Errorf("ctl: %w", err)
	}
	defer closer.Close()
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	defer tw.Flush()
	switch cmd, rest := fs.Arg(0), fs.Args()[1:]; cmd {
	case "resolve":
		rfs := flag.NewFlagSet("ctl resolve", flag.ContinueOnError)
		rfs.SetOutput(stderr)
		from := rfs.String("from-network", "", "the client's network (default: the gateway's)")
		// Accept the flag before or after NAME.
		var name string
		if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
			name, rest = rest[0], rest[1:]
		}
		if err := rfs.Parse(rest); err != nil {
			return err
		}
		if name == "" && rfs.NArg() == 1 {
			name = rfs.Arg(0)
		}
		if name == "" {
			return errors.New("ctl resolve: want NAME, an Istio SNI or cluster name")
		}
		resp, err := client.Resolve(ctx, &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: name}, FromNetwork: *from})
		if err != nil {
			return fmt.Errorf("ctl resolve: %w", err)
		}
		fmt.Fprintf(tw, "sni:\t%s\n\n", resp.GetSni())
		fmt.Fprintln(tw, "VIA\tADDRESS\tWEIGHT\tNETWORK\tLOCALITY\tGATEWAY")
		for _, t := range resp.GetTargets() {
			via := strings.ToLower(strings.TrimPrefix(t.GetVia().String(), "VIA_"))
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", via, t.GetAddress(), t.GetWeight(), t.GetNetwork(), t.GetLocality(), t.GetGateway())
		}
	case "members":
		resp, err := client.ListMembers(ctx, &ewgatev1.ListMembersRequest{})
		if err != nil {
			return fmt.Errorf("ctl members: %w", err)
		}
		fmt.Fprintln(tw, "NAME\tNETWORK\tSTATE\tPASSTHROUGH\tTUNNEL\tSPIFFE ID")
		for _, m := range resp.GetMembers() {
			state := strings.ToLower(strings.TrimPrefix(m.GetState().String(), "MEMBER_STATE_"))
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.GetName(), m.GetNetwork(), state, m.GetPassthroughAddress(), m.GetTunnelAddress(), m.GetSpiffeId())
		}
	case "networks":
		resp, err := client.ListNetworks(ctx, &ewgatev1.ListNetworksRequest{})
		if err != nil {
			return fmt.Errorf("ctl networks: %w", err)
		}
		fmt.Fprintln(tw, "NETWORK\tGATEWAYS\tSERVICES")
		for _, nw := range resp.GetNetworks() {
			fmt.Fprintf(tw, "%s\t%d\t%d\n", nw.GetName(), nw.GetGateways(), nw.GetServices())
		}
	case "catalog":
		resp, err := client.ListCatalog(ctx, &ewgatev1.ListCatalogRequest{})
		if err != nil {
			return fmt.Errorf("ctl catalog: %w", err)
		}
		fmt.Fprintln(tw, "NETWORK\tSERVICE\tPORT\tSUBSET\tHEALTHY\tGATEWAYS")
		for _, e := range resp.GetEntries() {
			var healthy []string
			for _, lc := range e.GetHealthy() {
				healthy = append(healthy, fmt.Sprintf("%s=%d", cmp.Or(lc.GetLocality(), "-"), lc.GetCount()))
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", e.GetNetwork(), e.GetHost(), e.GetPort(), cmp.Or(e.GetSubset(), "-"),
				cmp.Or(strings.Join(healthy, ","), "0"), strings.Join(e.GetGateways(), ","))
		}
	default:
		fs.Usage()
		return fmt.Errorf("ctl: unknown command %q", cmd)
	}
	return nil
}
