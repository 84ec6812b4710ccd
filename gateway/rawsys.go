package gateway

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The event loops' system calls per event are raw (these, and accept4
// in loopaccept.go; epoll_ctl, socket and pipe2, once per socket or
// pipe, are not yet): made without telling the Go scheduler (no
// entersyscall and exitsyscall around them), which is safe only because
// every descriptor a loop calls them on is non-blocking, so none can
// block the loop's P. Announced calls cost a loop more than their
// bookkeeping: a syscall made while the whole process was idle wakes
// sysmon from its deep sleep, which then polls every 20 µs for a
// millisecond or more, a context switch each time (11 % of the process's
// CPU under request/response load; docs/benchmarks.md, "Raw system calls
// in the loops"), and a call that the kernel preempts across two of
// sysmon's polls gets its P retaken and handed to another thread. A raw
// call is only ever preempted, like any running code.

// rawRead is read(2) on a non-blocking descriptor, retried on EINTR.
func rawRead(fd int, p []byte) (int, error) { return rawIO(unix.SYS_READ, fd, p) }

// rawWrite is write(2) on a non-blocking descriptor, retried on EINTR.
func rawWrite(fd int, p []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, p) }

// rawIO is read(2) or write(2), as trap says.
func rawIO(trap uintptr, fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if e != unix.EINTR {
			if e != 0 {
				return 0, e
			}
			return int(n), nil
		}
	}
}

// rawSplice is splice(2) between a non-blocking socket and a pipe, without
// offsets; flags must include SPLICE_F_NONBLOCK.
func rawSplice(rfd, wfd, n, flags int) (int, error) {
	for {
		m, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(rfd), 0, uintptr(wfd), 0, uintptr(n), uintptr(flags))
		if e != unix.EINTR {
			if e != 0 {
				return 0, e
			}
			return int(m), nil
		}
	}
}

// rawEpollPoll takes the ready events of epfd without waiting.
func rawEpollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	if len(events) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawGetrusage is getrusage(2) of the whole process.
func rawGetrusage(ru *unix.Rusage) error {
	if _, _, e := unix.RawSyscall(unix.SYS_GETRUSAGE, uintptr(unix.RUSAGE_SELF), uintptr(unsafe.Pointer(ru)), 0); e != 0 {
		return e
	}
	return nil
}

// rawClose is close(2), not retried: Linux releases the descriptor even
// when close is interrupted.
func rawClose(fd int) error {
	_, _, e := unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
	return errnoErr(e)
}

// rawShutdown is shutdown(2).
func rawShutdown(fd, how int) error {
	_, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	return errnoErr(e)
}

// rawSetsockoptInt is setsockopt(2) of an int option.
func rawSetsockoptInt(fd, level, name, v int) error {
	x := int32(v)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name), uintptr(unsafe.Pointer(&x)), 4, 0)
	return errnoErr(e)
}

// rawLingerZero sets SO_LINGER to zero seconds, so that closing fd
// resets the connection.
func rawLingerZero(fd int) error {
	l := unix.Linger{Onoff: 1}
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_LINGER, uintptr(unsafe.Pointer(&l)), unsafe.Sizeof(l), 0)
	return errnoErr(e)
}

// rawGetsockoptInt is getsockopt(2) of an int option.
func rawGetsockoptInt(fd, level, name int) (int, error) {
	var x int32
	n := uint32(4)
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name), uintptr(unsafe.Pointer(&x)), uintptr(unsafe.Pointer(&n)), 0)
	return int(x), errnoErr(e)
}

// rawConnect starts connect(2) of the non-blocking socket fd to ap,
// which is EINPROGRESS until the socket is writable. sa is the caller's
// storage for the address, so that nothing is allocated.
func rawConnect(fd int, ap netip.AddrPort, sa *unix.RawSockaddrInet6) error {
	var n uintptr
	if a := ap.Addr(); a.Is4() {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Port: netOrder(ap.Port()), Addr: a.As4()}
		n = unsafe.Sizeof(*sa4)
	} else {
		*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Port: netOrder(ap.Port()), Addr: a.As16()}
		n = unsafe.Sizeof(*sa)
	}
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(sa)), n)
	return errnoErr(e)
}

// netOrder converts a port between host and network byte order, either
// way: the sockaddr's port field is stored in network order.
func netOrder(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// errnoErr returns e as an error, nil for 0.
func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}
