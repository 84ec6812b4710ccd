// Package netnstest gives tests addresses of their own: a network
// namespace joined to the root namespace by a veth pair, with servers
// listening inside it as goroutines of the test process. Kubernetes
// refuses loopback addresses in EndpointSlices, so tests whose endpoints
// are dialed need servers on addresses like these, and only there: no
// address outside a namespace the test created is ever used.
//
// Each namespace gets one /24 of 10.250.0.0/16: 10.250.N.1 on the root
// side, 10.250.N.10 (and more with AddAddr) inside. N is chosen under a
// lock file, among the /24s no root interface uses, so concurrent test
// processes never collide; the e2e suite uses 10.1-10.3.0.0/24 and
// 192.0.2.0/24 and never this range. The root namespace reaches every
// namespace and each reaches the root namespace; namespaces do not reach
// each other, and nothing routes the range off the machine: there is no
// default route inside, and the root side's address is on the veth only.
//
// It needs root (and iproute2's ip). Without root the test is skipped,
// except with CI=true, where it fails: CI must never skip silently.
package netnstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Prefix starts the name of every namespace this package creates
// ("ewkt-<pid>-<N>"), so that leftovers of a test process that died are
// recognised and removed.
const Prefix = "ewkt-"

// lockFile serialises choosing a /24 among concurrent test processes.
const lockFile = "/run/ewgate-netnstest.lock"

// Namespace is a network namespace with a veth link to the root namespace.
// Its methods may be called from any goroutine.
type Namespace struct {
	// Name is the namespace's name (/run/netns/<Name>, ip netns).
	Name string
	// Addr is the first address inside, 10.250.N.10.
	Addr netip.Addr
	// Peer is the root namespace's address on the link, 10.250.N.1; it
	// is what servers inside see as the address of clients in the root
	// namespace.
	Peer netip.Addr
	// Prefix is the link's /24, 10.250.N.0/24.
	Prefix netip.Prefix

	mu   sync.Mutex
	next byte // last octet of the next AddAddr
}

// New creates a namespace with loopback up, the veth pair up, Peer on
// the root side and Addr inside, and deletes it (with the veth) when the
// test ends, whether it passed or failed. Listeners opened in the
// namespace should be closed by then (a t.Cleanup registered after New
// runs before New's).
func New(t testing.TB) *Namespace {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFatal(t, errors.New("network namespaces need root"))
	}
	if _, err := exec.LookPath("ip"); err != nil {
		skipOrFatal(t, fmt.Errorf("no ip command (apt-get install iproute2): %w", err))
	}
	n, err := create()
	if n != nil {
		t.Cleanup(n.delete)
	}
	if err != nil {
		t.Fatalf("netnstest: %v", err)
	}
	return n
}

// skipOrFatal skips the test, or fails it with CI=true.
func skipOrFatal(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("netnstest: %v (CI=true: not skipping)", err)
	}
	t.Skipf("netnstest: %v", err)
}

// create chooses a free /24 and builds the namespace under the lock. It
// returns the namespace as far as it got, for deletion, with the error.
func create() (*Namespace, error) {
	lock, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	defer lock.Close() // releases the lock
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock %s: %w", lockFile, err)
	}
	removeStale()
	used, err := usedSubnets()
	if err != nil {
		return nil, err
	}
	octet := 0
	for i := 1; i < 255; i++ {
		if !used[i] {
			octet = i
			break
		}
	}
	if octet == 0 {
		return nil, errors.New("every /24 of 10.250.0.0/16 is in use on a root interface")
	}
	b := byte(octet)
	n := &Namespace{
		Name:   fmt.Sprintf("%s%d-%d", Prefix, os.Getpid(), octet),
		Addr:   netip.AddrFrom4([4]byte{10, 250, b, 10}),
		Peer:   netip.AddrFrom4([4]byte{10, 250, b, 1}),
		Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, b, 0}), 24),
		next:   11,
	}
	if err := ip("netns", "add", n.Name); err != nil {
		return nil, err
	}
	// The root end is created in the root namespace and its peer moved
	// into the new one as eth0.
	steps := [][]string{
		{"link", "add", n.hostLink(), "type", "veth", "peer", "name", "eth0", "netns", n.Name},
		{"addr", "add", n.Peer.String() + "/24", "dev", n.hostLink()},
		{"link", "set", n.hostLink(), "up"},
		{"-n", n.Name, "link", "set", "lo", "up"},
		{"-n", n.Name, "addr", "add", n.Addr.String() + "/24", "dev", "eth0"},
		{"-n", n.Name, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return n, err
		}
	}
	return n, nil
}

// hostLink is the name of the veth end in the root namespace (at most 15
// bytes; unique because the /24 is).
func (n *Namespace) hostLink() string {
	return "ewkt" + strconv.Itoa(int(n.Prefix.Addr().As4()[2]))
}

// delete removes the veth pair and the namespace. Deleting the link first
// frees the /24 at once, even while a socket still holds the namespace.
func (n *Namespace) delete() {
	for _, args := range [][]string{{"link", "del", n.hostLink()}, {"netns", "del", n.Name}} {
		if err := ip(args...); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			fmt.Fprintf(os.Stderr, "netnstest: %v\n", err)
		}
	}
}

// removeStale deletes namespaces this package created in processes that
// no longer exist (a test binary killed before its cleanups ran).
func removeStale() {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), Prefix)
		if !ok {
			continue
		}
		pid, _, _ := strings.Cut(rest, "-")
		if _, err := strconv.Atoi(pid); err != nil {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue // alive (or the pid was reused: leave it)
		}
		_ = ip("netns", "del", e.Name())
	}
}

// usedSubnets returns the third octets of the 10.250.x.0/24 networks that
// root interfaces have addresses in.
func usedSubnets() (map[int]bool, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	used := make(map[int]bool)
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			return nil, err
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			if v4 := ipn.IP.To4(); v4 != nil && v4[0] == 10 && v4[1] == 250 {
				used[int(v4[2])] = true
			}
		}
	}
	return used, nil
}

// ip runs the ip command and returns its output in the error if it fails.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// AddAddr assigns the next free address of Prefix inside the namespace
// (10.250.N.11, .12, ...) and returns it, for tests that need several
// endpoints with addresses of their own.
func (n *Namespace) AddAddr(t testing.TB) netip.Addr {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.next == 255 {
		t.Fatalf("netnstest: %s: no addresses left in %s", n.Name, n.Prefix)
	}
	b := n.Prefix.Addr().As4()
	b[3] = n.next
	a := netip.AddrFrom4(b)
	if err := ip("-n", n.Name, "addr", "add", a.String()+"/24", "dev", "eth0"); err != nil {
		t.Fatalf("netnstest: %v", err)
	}
	n.next++
	return a
}

// Do runs fn on an OS thread that is inside the namespace. Sockets fn
// creates belong to the namespace for their whole life, whichever
// goroutine or thread uses them later. The thread goes back to the Go
// scheduler only once it is back in its original namespace; if that
// fails, the thread exits with its goroutine instead.
func (n *Namespace) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Not unlocked on the paths where the thread may be left inside
		// the namespace: the goroutine's end then ends the thread.
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: %w", n.Name, err)
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/run/netns", n.Name))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: %w", n.Name, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread() // a failed setns changes nothing
			errc <- fmt.Errorf("netns %s: setns: %w", n.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("netns %s: setns back: %w", n.Name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen is net.Listen inside the namespace.
func (n *Namespace) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket is net.ListenPacket inside the namespace.
func (n *Namespace) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.Do(func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// DialContext dials from inside the namespace; it has the signature of
// http.Transport.DialContext.
func (n *Namespace) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
