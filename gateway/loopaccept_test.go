package gateway

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"golang.org/x/sys/unix"
)

// The tests of this file are about Config.LoopAccept: what the loops
// take from accept to forwarding themselves, what they hand to a
// handler, and that the rules of the goroutine path hold on theirs.

func loopAcceptMesh(t *testing.T, path string) *mesh {
	t.Helper()
	m := newMeshPath(t, path)
	m.cfg.LoopAccept = true
	return m
}

// onLoops runs fn on each of g's loops, from the loop's goroutine.
func onLoops(t *testing.T, g *Gateway, fn func(l *loop)) {
	t.Helper()
	for _, l := range g.loops.all {
		done := make(chan struct{})
		l.send(command{fn: func() { defer close(done); fn(l) }})
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Fatal("a loop did not answer for a minute")
		}
	}
}

// The loops keep MaxConnections: a connection over it is reset and
// counted; one under it, once another closed, is forwarded.
func TestLoopAcceptConnectionLimit(t *testing.T) {
	m := loopAcceptMesh(t, pathLocal)
	m.cfg.MaxConnections = 1
	m.startEcho()
	first := m.mustDial(t, echoSNI, "istio")
	if _, err := m.dial(echoSNI, "istio"); err == nil {
		t.Fatal("second connection forwarded over the limit of 1")
	}
	await.True(t, 5*time.Second, "over_limit counted", func() bool { return m.gw.m.Rejected(RejectOverLimit) == 1 })
	first.Close()
	await.True(t, 5*time.Second, "the first connection to be released", func() bool { return m.gw.Active() == 0 })
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatalf("under the limit again: %v", err)
	}
	c.Close()
}

// A listener a reload removes is let go by every loop and closed before
// Apply returns: its port refuses connections at once, and a new one
// serves. Shutdown with listeners in the loops leaks no descriptor (the
// mesh's leak check).
func TestLoopAcceptListenerReload(t *testing.T) {
	m := loopAcceptMesh(t, pathLocal)
	b := m.backend("v1")
	old := freePort(t)
	m.start(echoYAML(old, b))
	oldAddr := m.addr()
	c := m.mustDial(t, echoSNI, "istio")
	c.Close()
	m.apply(echoYAML(freePort(t), b))
	if c, err := net.Dial("tcp", oldAddr); err == nil {
		c.Close()
		t.Fatal("the removed listener's port still accepts")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial the removed port: %v, want connection refused", err)
	}
	onLoops(t, m.gw, func(l *loop) {
		if len(l.lns) != 1 {
			t.Errorf("a loop polls %d listeners, want 1", len(l.lns))
		}
	})
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatalf("the new listener: %v", err)
	}
	c.Close()
}

// Config.EventLoops sets how many loops run, whatever GOMAXPROCS is, and
// with LoopAccept as many listening sockets; every flow of the loops
// carries its bytes.
func TestEventLoops(t *testing.T) {
	for _, tc := range []struct {
		loops      int
		loopAccept bool
	}{{1, true}, {3, true}, {1, false}, {3, false}} {
		t.Run(fmt.Sprintf("%d loops, loop accept %v", tc.loops, tc.loopAccept), func(t *testing.T) {
			m, _, hello := loopMesh(t, Config{LoopAccept: tc.loopAccept, EventLoops: tc.loops}, echo)
			const conns = 8
			var cs []*net.TCPConn
			for range conns {
				cs = append(cs, m.rawConn(hello))
			}
			await.True(t, 5*time.Second, "every flow in a loop", func() bool { return loopsState(t, m.gw).flows == conns })
			if got := len(m.gw.loops.all); got != tc.loops {
				t.Fatalf("%d loops, want %d", got, tc.loops)
			}
			fds := map[int]bool{}
			onLoops(t, m.gw, func(l *loop) {
				for _, ln := range l.lns {
					fds[ln.fd] = true
				}
			})
			if want := map[bool]int{true: tc.loops, false: 0}[tc.loopAccept]; len(fds) != want {
				t.Errorf("%d listening sockets in the loops, want %d", len(fds), want)
			}
			for i, c := range cs {
				checkEcho(t, c, fmt.Sprintf("flow %d\n", i))
			}
		})
	}
}

// Each loop accepts on a socket of its own (SO_REUSEPORT), between
// which the kernel spreads connections by hash: a burst of connections,
// which one socket polled by every loop would give to the loop that
// happens to be awake, is spread over the loops, and each is forwarded
// byte for byte.
func TestLoopAcceptSpread(t *testing.T) {
	m, _, hello := loopMesh(t, Config{LoopAccept: true}, echo)
	const conns = 32
	var wg sync.WaitGroup
	cs := make(chan *net.TCPConn, conns)
	for range conns {
		wg.Go(func() { cs <- m.rawConn(hello) })
	}
	wg.Wait()
	close(cs)
	await.True(t, 5*time.Second, "every flow in a loop", func() bool { return loopsState(t, m.gw).flows == conns })
	fds := map[int]bool{}
	onLoops(t, m.gw, func(l *loop) {
		if len(l.flows) == 0 {
			t.Errorf("a loop holds none of %d flows", conns)
		}
		for _, ln := range l.lns {
			fds[ln.fd] = true
		}
	})
	if want := len(m.gw.loops.all); len(fds) != want {
		t.Errorf("%d listening sockets for %d loops", len(fds), want)
	}
	for c := range cs {
		checkEcho(t, c, "spread\n")
	}
}

// polledEvents returns the events fd is registered for in the epoll set
// epfd, as the kernel reports them in /proc/self/fdinfo.
func polledEvents(epfd, fd int) (uint32, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", epfd))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// tfd: FD events: HEX data: ...
		if len(f) >= 4 && f[0] == "tfd:" && f[1] == strconv.Itoa(fd) && f[2] == "events:" {
			ev, err := strconv.ParseUint(f[3], 16, 32)
			return uint32(ev), err
		}
	}
	return 0, fmt.Errorf("descriptor %d not in epoll set %d", fd, epfd)
}

// listenerPolling reports, for each of g's loops, whether its listening
// sockets are polled edge-triggered, read from the kernel.
func listenerPolling(t *testing.T, g *Gateway) (edge, level int) {
	t.Helper()
	onLoops(t, g, func(l *loop) {
		for _, ln := range l.lns {
			ev, err := polledEvents(l.epfd, ln.fd)
			switch {
			case err != nil:
				t.Error(err)
			case ev&unix.EPOLLIN == 0:
				t.Errorf("listening socket polled for %#x, not for EPOLLIN", ev)
			case ev&unix.EPOLLET != 0:
				edge++
			default:
				level++
			}
		}
	})
	return edge, level
}

// The loops poll their listening sockets level-triggered, and accept one
// connection per event: a burst queued at once is served all the same,
// each connection byte for byte.
func TestLoopAcceptLevelTriggered(t *testing.T) {
	m, _, hello := loopMesh(t, Config{LoopAccept: true}, echo)
	m.rawConn(hello).Close() // the loops started, their listeners polled
	if edge, level := listenerPolling(t, m.gw); edge != 0 || level != len(m.gw.loops.all) {
		t.Fatalf("%d listening sockets edge-triggered, %d level-triggered; want every loop's level-triggered", edge, level)
	}
	// Hold the loops busy while the burst queues, so that a loop finds
	// several connections in its backlog at its next poll.
	release := make(chan struct{})
	for _, l := range m.gw.loops.all {
		l.send(command{fn: func() { <-release }})
	}
	const conns = 24
	cs := make(chan *net.TCPConn, conns)
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() { cs <- m.rawConn(hello) })
	}
	close(release)
	wg.Wait()
	close(cs)
	for c := range cs {
		checkEcho(t, c, "burst\n")
	}
}

// checkEcho writes msg on c, a connection to an echo backend, reads it
// back and closes c.
func checkEcho(t *testing.T, c *net.TCPConn, msg string) {
	t.Helper()
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo %q, %v", got, err)
	}
}

// After an accept failure a listening socket is polled edge-triggered
// (so that a backlog the loop cannot accept does not wake it at every
// poll): the next connections are served, and once an accept drained the
// backlog the socket is level-triggered again.
func TestLoopAcceptEdgeAfterFailure(t *testing.T) {
	m, _, hello := loopMesh(t, Config{LoopAccept: true}, echo)
	m.rawConn(hello).Close()
	// Read back in the same command: a connection still queued (the
	// first one's) may be accepted, and the socket drained, at the
	// loop's next poll.
	onLoops(t, m.gw, func(l *loop) {
		for i := range l.lns {
			ln := &l.lns[i]
			l.pollListener(ln, true) // as accept does after a failure
			if ev, err := polledEvents(l.epfd, ln.fd); err != nil || ev&unix.EPOLLET == 0 {
				t.Errorf("listening socket polled for %#x (%v) after a failure, want edge-triggered", ev, err)
			}
		}
	})
	// Enough connections that each loop's socket gets some (the kernel
	// spreads them by hash).
	for i := 0; ; i++ {
		checkEcho(t, m.rawConn(hello), "after failure\n")
		if edge, _ := listenerPolling(t, m.gw); edge == 0 {
			break
		}
		if i == 200 {
			t.Fatal("a listening socket still edge-triggered after 200 connections")
		}
	}
}
