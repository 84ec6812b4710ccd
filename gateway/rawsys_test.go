package gateway

import (
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// rawConnect's address is the kernel's sockaddr for either family, port
// in network byte order, and one storage serves both in turn: each
// connect reaches its listener, which sees the socket's own address.
func TestRawConnect(t *testing.T) {
	var sa unix.RawSockaddrInet6 // shared, as a loop's is
	for _, addr := range []string{"[::1]:0", "127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				t.Skipf("no loopback for %s: %v", addr, err)
			}
			defer ln.Close()
			ap := ln.Addr().(*net.TCPAddr).AddrPort()
			family := unix.AF_INET6
			if ap.Addr().Is4() {
				family = unix.AF_INET
			}
			fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if err := rawConnect(fd, ap, &sa); err != nil && err != unix.EINPROGRESS {
				t.Fatalf("connect to %s: %v", ap, err)
			}
			// Blocks until the connect completes; the timeout bounds a hang.
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if n, err := unix.Poll(pfd, 60_000); n != 1 || err != nil {
				t.Fatalf("connect to %s did not complete: %d, %v", ap, n, err)
			}
			if errno, err := rawGetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || errno != 0 {
				t.Fatalf("connect to %s: %v, %v", ap, unix.Errno(errno), err)
			}
			c, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			local, err := unix.Getsockname(fd)
			if err != nil {
				t.Fatal(err)
			}
			var want netip.AddrPort
			switch a := local.(type) {
			case *unix.SockaddrInet4:
				want = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
			case *unix.SockaddrInet6:
				want = netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
			}
			if got := c.RemoteAddr().(*net.TCPAddr).AddrPort(); got != want {
				t.Errorf("listener on %s accepted %s, want the socket's %s", ap, got, want)
			}
		})
	}
}

// BenchmarkRawCall is what a loop's system call costs before it does
// any work: the bound on what batching the loops' calls (io_uring, say)
// could save per call, against a round trip's whole CPU
// (docs/benchmarks.md "CPU per request: the floor").
func BenchmarkRawCall(b *testing.B) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(epfd)
	var buf [128]byte
	events := make([]unix.EpollEvent, 8)
	b.Run("read-EAGAIN", func(b *testing.B) {
		for b.Loop() {
			if _, err := rawRead(fds[0], buf[:]); err != unix.EAGAIN {
				b.Fatalf("read of an empty socket: %v", err)
			}
		}
	})
	b.Run("epoll-empty", func(b *testing.B) {
		for b.Loop() {
			if n, err := rawEpollPoll(epfd, events); n != 0 || err != nil {
				b.Fatalf("poll of an empty set: %d, %v", n, err)
			}
		}
	})
}
