// Command loadgen drives the comparison of ewgate with HAProxy and nginx
// (bench/compare.sh). It plays both ends of a proxied connection:
//
//	loadgen sink -listen ADDR          the backend every proxy routes to
//	                  [-tls-listen ADDR -tls-svid D]  and one terminating mTLS
//	loadgen idle -addr A -pid P -n N   memory and fds per idle connection
//	loadgen throughput -addr A -c C    C connections, bulk up, then down
//	loadgen rr -addr A -c C -d T       ping-pong on C connections, checked
//	                  [-paired ADDR]   taking turns with C more to ADDR
//	                  [-set L=ADDR]... and with C more to each ADDR, row L
//	                  [-rate R]        R round trips/s in all, paced
//	loadgen connect -addr A -c C -d T  a new connection per operation
//	                  [-tls-svid D]    with a full TLS 1.3 mTLS handshake
//	loadgen quicsink -listen ADDR -tls-svid D   quic-go alone: the server
//	loadgen quicbase -addr A -tls-svid D        and one stream up, then down
//	loadgen header MODE                the markdown header of MODE's rows
//	loadgen freeport                   print a free loopback TCP port
//
// Every client connection starts with a real crypto/tls ClientHello carrying
// an Istio SNI and ALPN "istio", recorded once and replayed; the sink reads
// it and acknowledges with one byte, which proves the proxy routed it. With
// -tls-svid the client completes a TLS 1.3 handshake with SPIFFE SVIDs
// instead, with the sink's TLS listener behind the proxy. The SVIDs are
// directories written by "ewgate ca issue" (ECDSA P-256, from the CA of
// "ewgate ca init"): the benchmarks use ewgate's development CA, not one
// of their own.
// Client modes print one markdown table row on stdout, whose last column
// counts the errors (failed connections, short reads, wrong bytes); their
// detail goes to stderr.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen sink|idle|throughput|rr|connect|quicsink|quicbase|header|freeport [flags]")
		os.Exit(2)
	}
	err := run(os.Args[1], os.Args[2:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "loadgen %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func run(mode string, args []string) error {
	switch mode {
	case "sink":
		return runSink(args)
	case "idle":
		return runIdle(args)
	case "throughput":
		return runThroughput(args)
	case "rr":
		return runRR(args)
	case "connect":
		return runConnect(args)
	case "quicsink":
		return runQUICSink(args)
	case "quicbase":
		return runQUICBase(args)
	case "header":
		return printHeader(args)
	case "freeport":
		return freePort()
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
}

// printHeader prints the table header of a client mode.
func printHeader(args []string) error {
	headers := map[string]string{
		"idle":       idleHeader,
		"throughput": throughputHeader,
		"rr":         rrHeader,
		"rr-rate":    rrRateHeader,
		"connect":    connectHeader,
	}
	if len(args) != 1 || headers[args[0]] == "" {
		return fmt.Errorf("usage: loadgen header idle|throughput|rr|rr-rate|connect")
	}
	fmt.Println(headers[args[0]])
	return nil
}

// logf writes one line to stderr.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "loadgen "+format+"\n", args...)
}

// freePort prints a TCP port that is free on 127.0.0.1 right now.
func freePort() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	return nil
}
