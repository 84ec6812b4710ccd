package netnstest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/leakcheck"
)

// echo serves one connection: it copies back what it reads and reports
// the client's address.
func echo(t *testing.T, ln net.Listener) <-chan net.Addr {
	t.Helper()
	remote := make(chan net.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(remote)
			return
		}
		defer c.Close()
		remote <- c.RemoteAddr()
		_, _ = io.Copy(c, c)
	}()
	return remote
}

func TestListenInsideDialFromRoot(t *testing.T) {
	// The runtime's network poller opens two descriptors for the process's
	// lifetime on first use: have them open before the leak check counts.
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	leakcheck.Check(t)
	n := New(t)
	if !n.Prefix.Contains(n.Addr) || !n.Prefix.Contains(n.Peer) || !strings.HasPrefix(n.Prefix.String(), "10.250.") {
		t.Fatalf("addresses %v %v outside %v", n.Addr, n.Peer, n.Prefix)
	}
	ln, err := n.Listen("tcp", netip.AddrPortFrom(n.Addr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	remote := echo(t, ln)

	c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte("through the veth")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
	// The server sees the root side of the link as the client.
	if ra, ok := (<-remote).(*net.TCPAddr); !ok || ra.AddrPort().Addr() != n.Peer {
		t.Errorf("client address at the server = %v, want %v", ra, n.Peer)
	}
}

func TestRootNamespaceUnchanged(t *testing.T) {
	n := New(t)
	// Many calls, so that most OS threads of the process run one; had one
	// stayed inside, some later listen on Addr would succeed there.
	for range 50 {
		ln, err := n.Listen("tcp", netip.AddrPortFrom(n.Addr, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
	}
	for range 50 {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(n.Addr, 0).String())
		if err == nil {
			ln.Close()
			t.Fatal("listened on the namespace's address in the root namespace")
		}
		if !errors.Is(err, syscall.EADDRNOTAVAIL) {
			t.Fatalf("listen on %v in root: %v, want EADDRNOTAVAIL", n.Addr, err)
		}
	}
	// Loopback inside is the namespace's own: a listener on 127.0.0.1
	// inside is not reachable from root.
	ln, err := n.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), 2*time.Second); err == nil {
		c.Close()
		t.Error("reached the namespace's loopback from root")
	}
}

func TestTwoNamespacesUDPAndAddAddr(t *testing.T) {
	a, b := New(t), New(t)
	if a.Prefix.Overlaps(b.Prefix) || a.Name == b.Name {
		t.Fatalf("two namespaces share %v/%v or a name %s", a.Prefix, b.Prefix, a.Name)
	}
	extra := b.AddAddr(t)
	if !b.Prefix.Contains(extra) || extra == b.Addr {
		t.Fatalf("AddAddr = %v", extra)
	}
	// UDP from root to the extra address inside b.
	pc, err := b.ListenPacket("udp", netip.AddrPortFrom(extra, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	// UDP may drop: resend until one arrives, with a deadline.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		_ = pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		nr, from, err := pc.ReadFrom(buf)
		if err == nil {
			if string(buf[:nr]) != "ping" || from.(*net.UDPAddr).AddrPort().Addr() != b.Peer {
				t.Fatalf("got %q from %v, want ping from %v", buf[:nr], from, b.Peer)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no datagram from root to %v: %v", extra, err)
		}
	}
	// Namespaces do not reach each other: a has no route to b.
	if c, err := a.DialContext(t.Context(), "udp", pc.LocalAddr().String()); err == nil {
		c.Close()
		t.Errorf("%s has a route to %v", a.Name, extra)
	} else if !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("dial from %s to %v: %v, want ENETUNREACH", a.Name, extra, err)
	}
}

func TestCleanupDeletes(t *testing.T) {
	var name string
	t.Run("inner", func(t *testing.T) {
		name = New(t).Name
	})
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatal(err, string(out))
	}
	if strings.Contains(string(out), name) {
		t.Errorf("namespace %s still exists after its test ended:\n%s", name, out)
	}
}

func TestRemovesStale(t *testing.T) {
	// No process has a pid above pid_max (at most 2^22). Our own pid
	// keeps concurrent runs of this test apart.
	stale := fmt.Sprintf("%s4194305-%d", Prefix, os.Getpid())
	if err := ip("netns", "add", stale); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ip("netns", "del", stale) })
	New(t)
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatal(err, string(out))
	}
	if strings.Contains(string(out), stale) {
		t.Errorf("stale namespace %s of a dead process not removed:\n%s", stale, out)
	}
}
