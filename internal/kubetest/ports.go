package kubetest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// freePort returns a loopback TCP port that nothing listens on now, chosen
// at random below the kernel's ephemeral range. Below that range the
// kernel never hands the port to a client socket, so a client that keeps
// redialling a stopped API server cannot connect to itself on the very
// port the server must bind again when it restarts. The port is free only
// when checked: callers retry on "address already in use".
func freePort() (int, error) {
	lo, hi := 10000, ephemeralLow()-1
	if hi-lo < 1000 { // a custom range leaves nothing below it: ask the kernel
		return kernelPort()
	}
	for range 100 {
		p := lo + rand.IntN(hi-lo)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		ln.Close()
		return p, nil
	}
	return 0, fmt.Errorf("no free loopback port in %d-%d after 100 tries", lo, hi)
}

// ephemeralLow is the low end of net.ipv4.ip_local_port_range (32768 when
// it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
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
