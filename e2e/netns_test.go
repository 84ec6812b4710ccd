package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// prefix starts every network namespace name this suite creates; the
// run prefix adds the test binary's pid ("ewe2e-1234-"), so that runs
// cannot collide and leftovers of a crashed run can be recognised.
const prefix = "ewe2e-"

// runPrefix is prefix plus this process's pid and a dash.
var runPrefix = fmt.Sprintf("%s%d-", prefix, os.Getpid())

// registry holds everything the run created, so that teardown (at the end
// of TestMain, or on SIGINT/SIGTERM) can remove it whatever happened.
var registry = struct {
	sync.Mutex
	namespaces []string       // in creation order
	groups     map[int]string // process group id -> what it is
}{groups: make(map[int]string)}

// ipCmd runs the ip command with args and returns a clear error with its
// output when it fails.
func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// netns is a named network namespace (/run/netns/<name>).
type netns struct {
	name string
}

// newNetns creates the namespace runPrefix+short with its loopback up and
// IP forwarding off, and registers it for teardown.
func newNetns(short string) (*netns, error) {
	n := &netns{name: runPrefix + short}
	if err := ipCmd("netns", "add", n.name); err != nil {
		return nil, err
	}
	registry.Lock()
	registry.namespaces = append(registry.namespaces, n.name)
	registry.Unlock()
	if err := ipCmd("-n", n.name, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	if err := n.sysctl("net/ipv4/ip_forward", "0"); err != nil {
		return nil, err
	}
	return n, nil
}

// sysctl writes value to /proc/sys/<key> inside the namespace and reads
// it back.
func (n *netns) sysctl(key, value string) error {
	return n.do(func() error {
		p := filepath.Join("/proc/sys", key)
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return err
		}
		got, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(got)) != value {
			return fmt.Errorf("%s in %s is %q after writing %q", key, n.name, got, value)
		}
		return nil
	})
}

// do runs fn on an OS thread that has entered the namespace. Sockets
// created by fn stay in the namespace for their whole life, whichever
// thread uses them later. The thread is returned to the Go scheduler only
// if it could be switched back to its original namespace; otherwise it
// exits with its goroutine.
func (n *netns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
		if err != nil {
			errc <- fmt.Errorf("netns %s: %w", n.name, err)
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/run/netns", n.name))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: %w", n.name, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: setns: %w", n.name, err)
			return
		}
		ferr := fn()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// listen opens a TCP listener on addr inside the namespace (for servers
// that take a net.Listener; workload.NewEchoServer binds itself, inside do).
func (n *netns) listen(addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

// dial connects to addr over TCP from inside the namespace.
func (n *netns) dial(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// dialContext has the signature of http.Transport.DialContext and
// grpc.WithContextDialer.
func (n *netns) dialContext(ctx context.Context, _, addr string) (net.Conn, error) {
	return n.dial(ctx, addr)
}

// command returns a command that runs argv inside the namespace, in its
// own process group (so that it and its children can be killed together).
func (n *netns) command(argv ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name}, argv...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// startGroup starts cmd and registers its process group for teardown.
func startGroup(cmd *exec.Cmd, what string) error {
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", what, err)
	}
	registry.Lock()
	registry.groups[cmd.Process.Pid] = what
	registry.Unlock()
	return nil
}

// forgetGroup unregisters a process group that has exited.
func forgetGroup(pid int) {
	registry.Lock()
	delete(registry.groups, pid)
	registry.Unlock()
}

// link connects node to the bridge br0 of sw with a veth pair: ifname in
// node with address cidr, port in sw. Both ends are created directly in
// their namespaces, so nothing ever appears in the root namespace.
func link(node, sw *netns, ifname, port, cidr string) error {
	steps := [][]string{
		{"-n", node.name, "link", "add", ifname, "type", "veth", "peer", "name", port, "netns", sw.name},
		{"-n", sw.name, "link", "set", port, "master", "br0", "up"},
		{"-n", node.name, "addr", "add", cidr, "dev", ifname},
		{"-n", node.name, "link", "set", ifname, "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			return err
		}
	}
	return nil
}

// newSwitch creates a namespace holding one Linux bridge, br0.
func newSwitch(short string) (*netns, error) {
	sw, err := newNetns(short)
	if err != nil {
		return nil, err
	}
	if err := ipCmd("-n", sw.name, "link", "add", "br0", "type", "bridge"); err != nil {
		return nil, err
	}
	return sw, ipCmd("-n", sw.name, "link", "set", "br0", "up")
}

// killGroup sends SIGKILL to a process group.
func killGroup(pgid int) {
	syscall.Kill(-pgid, syscall.SIGKILL)
}

// deleteNetns kills whatever still runs in the namespace (ip netns pids)
// and deletes it.
func deleteNetns(name string) error {
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	return ipCmd("netns", "del", name)
}

// teardown kills every registered process group and deletes every
// registered namespace, newest first. It is safe to call more than once.
func teardown() []error {
	registry.Lock()
	groups := registry.groups
	registry.groups = make(map[int]string)
	nss := registry.namespaces
	registry.namespaces = nil
	registry.Unlock()
	for pgid := range groups {
		killGroup(pgid)
	}
	var errs []error
	for i := len(nss) - 1; i >= 0; i-- {
		if err := deleteNetns(nss[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// removeLeftovers deletes namespaces of earlier runs whose test process is
// gone (names prefix<pid>-..., no process <pid> running a test binary).
func removeLeftovers() error {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("ip netns list: %w", err)
	}
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], prefix) {
			continue
		}
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(f[0], prefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() || testProcessAlive(pid) {
			continue
		}
		if err := deleteNetns(f[0]); err != nil {
			errs = append(errs, fmt.Errorf("leftover of an earlier run: %w", err))
		}
	}
	// Their per-run directories (runPrefix in os.TempDir()).
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
	for _, d := range dirs {
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(d), prefix), "-")
		if pid, err := strconv.Atoi(pidStr); err == nil && pid != os.Getpid() && !testProcessAlive(pid) {
			os.RemoveAll(d)
		}
	}
	return errors.Join(errs...)
}

// testProcessAlive reports whether pid runs a Go test binary (a reused pid
// running something else does not keep leftovers alive).
func testProcessAlive(pid int) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.HasSuffix(strings.TrimSpace(string(comm)), ".test")
}
