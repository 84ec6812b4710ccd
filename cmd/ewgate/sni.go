package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/ewgate/ewgate/sni"
)

const sniUsage = `Usage:
  ewgate sni decode NAME
      Decode an Istio SNI (outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local)
      or cluster name (outbound|9080|v1|reviews.bookinfo.svc.cluster.local).
  ewgate sni encode --host HOST --port PORT [--subset SUBSET]
      Print the SNI and cluster name for a service port and subset.
`

// runSNI implements "ewgate sni".
func runSNI(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, sniUsage)
		return errors.New("sni: missing subcommand")
	}
	switch args[0] {
	case "decode":
		fs := flag.NewFlagSet("sni decode", flag.ContinueOnError)
		fs.SetOutput(stderr)
		fs.Usage = func() { fmt.Fprint(stderr, sniUsage) }
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			fs.Usage()
			return errors.New("sni decode: want exactly one NAME")
		}
		k, err := sni.ParseName(fs.Arg(0))
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "host:    %s\nport:    %d\nsubset:  %s\nsni:     %s\ncluster: %s\n", k.Host, k.Port, k.Subset, k.SNI(), k.ClusterName())
		return nil
	case "encode":
		fs := flag.NewFlagSet("sni encode", flag.ContinueOnError)
		fs.SetOutput(stderr)
		fs.Usage = func() { fmt.Fprint(stderr, sniUsage); fs.PrintDefaults() }
		host := fs.String("host", "", "service host (FQDN)")
		port := fs.Uint("port", 0, "service port")
		subset := fs.String("subset", "", "DestinationRule subset (optional)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *port > 65535 {
			return fmt.Errorf("sni encode: --port %d out of range", *port)
		}
		// Validate through the decoder so encode never prints a name the
		// gateway would refuse.
		k, err := sni.ParseName(sni.Key{Host: *host, Port: uint16(*port), Subset: *subset}.SNI())
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n%s\n", k.SNI(), k.ClusterName())
		return nil
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, sniUsage)
		return nil
	}
	fmt.Fprint(stderr, sniUsage)
	return fmt.Errorf("sni: unknown subcommand %q", args[0])
}
