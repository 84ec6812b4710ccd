// Command ewgate is a multi-network east-west gateway for service meshes,
// wire-compatible with Istio's AUTO_PASSTHROUGH gateways.
//
// Usage:
//
//	ewgate run -f PATH --network NAME [flags]   run a gateway
//	ewgate demo                                 run a self-contained demo on loopback
//	ewgate ca init|issue [flags]                development SPIFFE CA
//	ewgate sni decode NAME | encode [flags]     Istio SNI names
//	ewgate ctl resolve|members|networks         ask a running gateway
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `ewgate is a multi-network east-west gateway for service meshes.

Usage:
  ewgate run -f PATH --network NAME [flags]   run a gateway
  ewgate demo [flags]                         run a self-contained demo on loopback
  ewgate ca init|issue [flags]                development SPIFFE certificate authority
  ewgate sni decode NAME | encode [flags]     decode or build Istio SNI names
  ewgate ctl [--api ADDR] resolve|members|networks   ask a running gateway

Run "ewgate COMMAND --help" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ewgate:", err)
		os.Exit(1)
	}
}

// dispatch runs the subcommand named by args[0].
func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("missing command")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return runGateway(ctx, rest, stdout, stderr)
	case "demo":
		return runDemo(ctx, rest, stdout, stderr)
	case "ca":
		return runCA(ctx, rest, stdout, stderr)
	case "sni":
		return runSNI(rest, stdout, stderr)
	case "ctl":
		return runCtl(ctx, rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}
