package tunnel

import (
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/ewgate/ewgate/internal/netnstest"
)

// TestListenPortMostlyTakenOnTCP: on a host whose TCP ports are nearly
// all held (a gateway's: each outbound connection holds its local port,
// and its TIME-WAIT a minute more), port 0 still finds the port free for
// both UDP and TCP. Picking UDP first, as listen did, found it by luck:
// here in about one call of ten. The namespace's ephemeral range is cut
// to 1,000 ports, all but one held by TCP listeners.
func TestListenPortMostlyTakenOnTCP(t *testing.T) {
	ns := netnstest.New(t)
	const lo, hi = 40000, 40999
	var held []net.Listener
	t.Cleanup(func() {
		for _, ln := range held {
			ln.Close()
		}
	})
	err := ns.Do(func() error {
		// net sysctls are per namespace: this is the namespace's range.
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte(fmt.Sprintf("%d %d", lo, hi)), 0o644); err != nil {
			return err
		}
		for p := lo; p < hi; p++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				return err
			}
			held = append(held, ln)
		}
		for i := range 5 {
			pc, ln, err := listen("127.0.0.1:0", true)
			if err != nil {
				return fmt.Errorf("call %d: %w", i, err)
			}
			udp, tcp := pc.LocalAddr().(*net.UDPAddr).Port, ln.Addr().(*net.TCPAddr).Port
			pc.Close()
			ln.Close()
			if udp != hi || tcp != hi {
				return fmt.Errorf("call %d: UDP port %d, TCP port %d, want both %d", i, udp, tcp, hi)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
