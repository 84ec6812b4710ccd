package gateway

import (
	"context"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BenchmarkDialWays connects to a loopback listener, and closes, in the
// ways an upstream dial could be made, so that their allocations (and,
// under strace -c, system calls) can be compared; docs/benchmarks.md
// has the figures and why the gateway dials the second way (the first
// is how it did before). Each iteration
// also counts the listener's accept (6 allocations).
func BenchmarkDialWays(b *testing.B) {
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer func() {
		ln.Close()
		<-done
	}()
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	addr := ap.String()
	dc := newDialContext()
	ways := []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"Dialer.Dial-timeout", func() (net.Conn, error) {
			d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1}
			return d.Dial("tcp", addr)
		}},
		{"Dialer.DialContext-dialContext", func() (net.Conn, error) {
			d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1}
			dc.begin(d.Timeout)
			defer dc.end()
			return d.DialContext(dc, "tcp", addr)
		}},
		{"Dialer.Dial-no-timeout", func() (net.Conn, error) {
			d := net.Dialer{KeepAlive: -1}
			return d.Dial("tcp", addr)
		}},
		{"Dialer.DialTCP-timeout", func() (net.Conn, error) {
			d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1}
			return d.DialTCP(context.Background(), "tcp", netip.AddrPort{}, ap)
		}},
		{"net.DialTCP-no-timeout", func() (net.Conn, error) {
			return net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(ap))
		}},
		{"raw+FileConn-deadline", func() (net.Conn, error) { return rawDial(ap, 5*time.Second) }},
	}
	for _, w := range ways {
		b.Run(w.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c, err := w.dial()
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

// rawDial connects a nonblocking socket of its own to the IPv4 address
// ap, makes it a *net.TCPConn (net.FileConn, which dups it) and waits
// for the connect through the runtime's poller under one write deadline.
func rawDial(ap netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
	port := (*[2]byte)(unsafe.Pointer(&sa.Port))
	port[0], port[1] = byte(ap.Port()>>8), byte(ap.Port())
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if _, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa)); e != 0 && e != unix.EINPROGRESS {
		unix.Close(fd)
		return nil, e
	}
	f := os.NewFile(uintptr(fd), "")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetWriteDeadline(time.Now().Add(timeout))
	var soErr error
	err = rc.Write(func(fd uintptr) bool {
		n, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			soErr = err
		case n == int(syscall.EINPROGRESS) || n == int(syscall.EALREADY):
			return false
		case n != 0:
			soErr = syscall.Errno(n)
		}
		return true
	})
	c.SetWriteDeadline(time.Time{})
	if err == nil {
		err = soErr
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
