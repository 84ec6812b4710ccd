package kubetest

import (
	"net"

	"github.com/ewgate/ewgate/internal/lowports"
)

// freePort returns a loopback TCP port that nothing listens on now, chosen
// at random below the kernel's ephemeral range (the lower half of it that
// lowports leaves to this package). Below that range the kernel never
// hands the port to a client socket, so a client that keeps redialling a
// stopped API server cannot connect to itself on the very port the server
// must bind again when it restarts. The port is free only when checked:
// callers retry on "address already in use".
func freePort() (int, error) {
	lo, hi, err := lowports.Range(0)
	if err != nil { // a custom range leaves nothing below it: ask the kernel
		return kernelPort()
	}
	return lowports.Pick(lo, hi, nil)
}

// kernelPort asks the kernel for a free loopback port.
func kernelPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
