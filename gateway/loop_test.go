package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"golang.org/x/sys/unix"
)

// The tests of this file are about what the event loops add to the
// forwarding engine: the socket-to-socket pump without goroutines. The
// rules every path keeps (half-close, resets, idle timeout, drain) are
// tested in paths_test.go, over the loops on the local path.

// loopState is what a test reads of a gateway's loops, each loop
// reporting from its own goroutine.
type loopState struct {
	loops   int
	flows   int
	pending int // sides holding a chunk the other side did not take
	maxPend int // the largest such chunk
	piped   int // sides holding bytes in a splice pipe
	maxPipe int
	pipes   int // sides holding a pipe at all
	pooled  int // empty pipes in the loops' pools
	busy    int // sides still marked readable: an edge not yet drained
}

func loopsState(t testing.TB, g *Gateway) loopState {
	t.Helper()
	all := g.loops.started(g) // after pick, which may be starting them
	st := loopState{loops: len(all)}
	for _, l := range all {
		done := make(chan struct{})
		l.send(command{fn: func() {
			defer close(done)
			st.flows += len(l.flows)
			st.pooled += len(l.pipes)
			for _, lf := range l.flows {
				for i := range lf.side {
					s := &lf.side[i]
					if s.pend != nil {
						st.pending++
						st.maxPend = max(st.maxPend, s.n-s.off)
					}
					if s.pipe != nil {
						st.pipes++
					}
					if s.inPipe > 0 {
						st.piped++
						st.maxPipe = max(st.maxPipe, s.inPipe)
					}
					if s.readable && !s.shut {
						st.busy++
					}
				}
			}
		}})
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Fatal("a loop did not answer for a minute")
		}
	}
	return st
}

// flowGoroutines counts the goroutines of forward's pump: none while
// every flow is in a loop.
func flowGoroutines() int { return parked("gateway.(*flow).run(") }

// loopMesh starts a local gateway under cfg to a raw backend that serves
// each connection with serve, and returns the mesh, the backend and the
// hello a client sends.
func loopMesh(t *testing.T, cfg Config, serve func(net.Conn)) (*mesh, *rawBackend, []byte) {
	t.Helper()
	m := newMesh(t)
	m.cfg = cfg
	hello := recordHello(t, echoSNI)
	b := newRawBackend(t, len(hello), serve)
	m.start(rawYAML(freePort(t), b.ln.Addr().String()))
	return m, b, hello
}

func echo(c net.Conn) { io.Copy(c, c) }

func payload(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

// A flow that goes idle and wakes many times carries every byte both
// ways, holds neither a pending chunk nor a pipe while idle, and gives
// the pipe its bulk took back to the pool.
func TestLoopIdleAndWake(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int // bytes each way per wake-up
	}{
		{"one byte", 1},
		{"small", 700},
		{"one chunk", chunkSize},
		{"bulk", 3 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, _, hello := loopMesh(t, Config{}, echo)
			c := m.rawConn(hello)
			c.SetDeadline(time.Now().Add(time.Minute))
			// Bytes sent with the hello would be replayed with it, not
			// counted.
			await.True(t, 5*time.Second, "the flow to reach a loop", func() bool { return loopsState(t, m.gw).flows == 1 })
			const wakes = 20
			for i := range wakes {
				if err := exchange(c, payload(tc.size, uint64(i))); err != nil {
					t.Fatalf("wake %d: %v", i, err)
				}
				await.True(t, 5*time.Second, "the flow to go idle", func() bool {
					st := loopsState(t, m.gw)
					return st.flows == 1 && st.busy == 0 && st.pending == 0 && st.pipes == 0
				})
			}
			if n := flowGoroutines(); n != 0 {
				t.Errorf("%d forwarding goroutines with the flow in a loop", n)
			}
			want := uint64(wakes * tc.size)
			if up, down := m.gw.m.BytesUp.Value(), m.gw.m.BytesDown.Value(); up != want || down != want {
				t.Errorf("bytes up %d down %d, want %d each", up, down, want)
			}
			if st := loopsState(t, m.gw); tc.size > chunkSize && st.pooled == 0 {
				t.Error("the bulk's pipe did not go back to the pool")
			}
		})
	}
}

// smallBuffers makes the gateway's dialed sockets' send buffers small, so
// that a backend that does not read fills them after a few KiB.
func smallBuffers(network, address string, c syscall.RawConn) error {
	var err error
	c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096) })
	return err
}

// A slow reader holds the flow back: the loop keeps at most one chunk (or
// one pipe) of what it read and stops reading the client, and once the
// reader reads, every byte arrives in order. A reset while held back
// resets the other side and frees what was held.
func TestLoopBackpressure(t *testing.T) {
	for _, tc := range []struct {
		name  string
		msg   int  // size of the client's writes
		paced bool // write the next message only once the last was taken
		reset bool // the backend resets instead of reading
	}{
		{"small messages", 1000, true, false},
		{"bulk", 256 << 10, false, false},
		{"small messages, reset while held", 1000, true, true},
		{"bulk, reset while held", 256 << 10, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			got := make(chan [32]byte, 1)
			conns := make(chan net.Conn, 1)
			m, _, hello := loopMesh(t, Config{DialControl: smallBuffers}, func(c net.Conn) {
				conns <- c
				<-release
				h := sha256.New()
				io.Copy(h, c)
				got <- [32]byte(h.Sum(nil))
			})
			c := m.rawConn(hello)
			held := func() bool {
				st := loopsState(t, m.gw)
				return st.pending > 0 || st.piped > 0
			}
			const total = 4 << 20
			p := payload(total, 7)
			sent := 0
			if tc.paced {
				// One message at a time, each read by the loop on its
				// own, until the loop holds one back.
				for !held() {
					if sent+tc.msg > total {
						t.Fatal("the loop never held a chunk back")
					}
					if _, err := c.Write(p[sent : sent+tc.msg]); err != nil {
						t.Fatal(err)
					}
					sent += tc.msg
					want := uint64(sent)
					await.True(t, 5*time.Second, "the message to be taken", func() bool {
						return m.gw.m.BytesUp.Value() >= want || held()
					})
				}
			}
			wrote := make(chan error, 1)
			go func() {
				var err error
				for off := sent; off < total && err == nil; off += tc.msg {
					_, err = c.Write(p[off:min(off+tc.msg, total)])
				}
				if err == nil {
					err = c.CloseWrite()
				}
				wrote <- err
			}()
			await.True(t, 5*time.Second, "the loop to hold bytes back", held)
			st := loopsState(t, m.gw)
			if st.pending > 1 || st.maxPend > chunkSize || st.piped > 1 || st.maxPipe > maxSplice {
				t.Errorf("held back: %d chunks (largest %d B), %d pipes (largest %d B); want at most one of each, bounded", st.pending, st.maxPend, st.piped, st.maxPipe)
			}
			up := <-conns
			if tc.reset {
				up.(*net.TCPConn).SetLinger(0)
				up.Close()
				c.SetReadDeadline(time.Now().Add(time.Minute))
				_, rerr := io.Copy(io.Discard, c)
				// The writer may be the one that takes the socket's error.
				if werr := <-wrote; !isReset(rerr) && !isReset(werr) {
					t.Errorf("client read %v and wrote %v after the backend's reset, want a reset", rerr, werr)
				}
				close(release)
				<-got
				await.True(t, 5*time.Second, "the flow to end", func() bool { return m.gw.Active() == 0 })
				if st := loopsState(t, m.gw); st.flows != 0 {
					t.Errorf("%d flows left in the loops", st.flows)
				}
				return
			}
			close(release)
			if err := <-wrote; err != nil {
				t.Fatal(err)
			}
			if h := <-got; h != sha256.Sum256(p) {
				t.Error("the backend read other bytes than the client wrote")
			}
		})
	}
}

// A half-close carries across either way, the other direction going on.
func TestLoopHalfClose(t *testing.T) {
	for _, first := range []string{"client", "endpoint"} {
		t.Run(first+" closes first", func(t *testing.T) {
			question, answer := payload(100<<10, 1), payload(200<<10, 2)
			result := make(chan error, 1)
			m, _, hello := loopMesh(t, Config{}, func(c net.Conn) {
				result <- converse(c.(*net.TCPConn), answer, question, first == "endpoint")
			})
			c := m.rawConn(hello)
			c.SetDeadline(time.Now().Add(time.Minute))
			if err := converse(c, question, answer, first == "client"); err != nil {
				t.Errorf("client: %v", err)
			}
			if err := <-result; err != nil {
				t.Errorf("endpoint: %v", err)
			}
			await.True(t, 5*time.Second, "the flow to end", func() bool { return m.gw.Active() == 0 })
		})
	}
}

// converse sends out and half-closes, before reading to EOF if first,
// after otherwise, and checks it read in.
func converse(c *net.TCPConn, out, in []byte, first bool) error {
	send := func() error {
		if _, err := c.Write(out); err != nil {
			return err
		}
		return c.CloseWrite()
	}
	if first {
		if err := send(); err != nil {
			return err
		}
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, in) {
		return fmt.Errorf("read %d bytes, not the %d sent", len(got), len(in))
	}
	if !first {
		return send()
	}
	return nil
}

// Many flows share the few loops, each byte-exact, with no goroutine of
// their own.
func TestLoopManyFlows(t *testing.T) {
	m, _, hello := loopMesh(t, Config{}, echo)
	const flows = 200
	conns := make([]*net.TCPConn, flows)
	for i := range conns {
		conns[i] = m.rawConn(hello)
		conns[i].SetDeadline(time.Now().Add(time.Minute))
	}
	await.True(t, 10*time.Second, "every flow to reach a loop", func() bool { return loopsState(t, m.gw).flows == flows })
	st := loopsState(t, m.gw)
	if want := max(1, runtime.GOMAXPROCS(0)); st.loops != want {
		t.Errorf("%d loops, want GOMAXPROCS, %d", st.loops, want)
	}
	if n := flowGoroutines(); n != 0 {
		t.Errorf("%d forwarding goroutines with every flow in a loop", n)
	}
	var wg sync.WaitGroup
	errs := make(chan error, flows)
	for i, c := range conns {
		wg.Go(func() {
			p := payload(20<<10+i*97, uint64(i))
			go c.Write(p)
			got := make([]byte, len(p))
			if _, err := io.ReadFull(c, got); err != nil {
				errs <- fmt.Errorf("flow %d: %w", i, err)
				return
			}
			if !bytes.Equal(got, p) {
				errs <- fmt.Errorf("flow %d: echo differs", i)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A drain that runs out of time cuts the flows in the loops, and the
// loops stop with their descriptors closed (the mesh's leak check). The
// cut is the loop's to do, so descriptors that the kernel hands to new
// connections right after are never read or closed by the cut flows'
// loop: a second gateway in the same process, whose connections reuse
// the numbers, stays byte-exact.
func TestLoopCut(t *testing.T) {
	m, _, hello := loopMesh(t, Config{}, echo)
	other, _, otherHello := loopMesh(t, Config{}, echo)
	const flows = 50
	var clients []*net.TCPConn
	for range flows {
		c := m.rawConn(hello)
		c.SetDeadline(time.Now().Add(time.Minute))
		clients = append(clients, c)
		// Traffic in flight while the cut comes.
		go func() {
			p := payload(1<<20, 3)
			for {
				if _, err := c.Write(p); err != nil {
					return
				}
			}
		}()
	}
	await.True(t, 10*time.Second, "every flow to reach a loop", func() bool { return loopsState(t, m.gw).flows == flows })
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.Dial("tcp", other.addr())
				if err != nil {
					errs <- err
					return
				}
				c.SetDeadline(time.Now().Add(time.Minute))
				p := payload(64<<10, uint64(w*1000+i))
				c.Write(otherHello)
				go c.Write(p)
				got := make([]byte, len(p))
				_, err = io.ReadFull(c, got)
				c.Close()
				if err != nil || !bytes.Equal(got, p) {
					errs <- fmt.Errorf("connection %d of worker %d: %v, exact %v", i, w, err, bytes.Equal(got, p))
					return
				}
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.gw.Shutdown(ctx); err == nil {
		t.Error("Shutdown with flows open and its context done returned nil")
	}
	if n := m.gw.Active(); n != 0 {
		t.Errorf("%d flows active after the cut", n)
	}
	for _, c := range clients {
		if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) && !strings.Contains(err.Error(), "closed") {
			t.Errorf("cut client read %v, want a reset or EOF", err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// forEachLoopPath runs test, as a subtest, on a mesh of each way a flow
// reaches a loop: handed over by a handler that dialed, or dialed by the
// loop (LoopAccept).
func forEachLoopPath(t *testing.T, test func(t *testing.T, m *mesh)) {
	for _, loopAccept := range []bool{false, true} {
		t.Run(map[bool]string{false: "handed over", true: "loop dial"}[loopAccept], func(t *testing.T) {
			m := newMesh(t)
			m.cfg.LoopAccept = loopAccept
			test(t, m)
		})
	}
}

// A loop's flow ends at its route's MaxConnectionDuration by the loop's
// sweep, with no timer of its own, however it reached the loop: handed
// over by a handler that dialed, or dialed by the loop (LoopAccept). It
// is closed, not reset, and counted as such.
func TestLoopMaxConnectionDuration(t *testing.T) {
	forEachLoopPath(t, func(t *testing.T, m *mesh) {
		m.cfg.IdleTimeout = time.Hour
		b := m.backend("v1")
		m.start(policyYAML(freePort(t), "connectionPool: {tcp: {maxConnectionDuration: 1s}}", b))
		c := m.mustDial(t, echoSNI, "istio")
		await.True(t, 5*time.Second, "the flow to reach a loop", func() bool { return loopsState(t, m.gw).flows == 1 })
		onLoops(t, m.gw, func(l *loop) {
			for _, lf := range l.flows {
				if lf.f.expiry != nil {
					t.Error("the loop's flow has a timer of its own")
				}
				if lf.expires == 0 {
					t.Error("the loop's flow has no max duration")
				}
			}
		})
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, c)
		if isTimeout(err) || isReset(err) {
			t.Fatalf("read %v, want the gateway to close the connection", err)
		}
		await.True(t, 5*time.Second, "closed counted", func() bool { return m.gw.m.DurationClosed.Value() == 1 })
		if n := m.gw.m.IdleClosed.Value(); n != 0 {
			t.Errorf("%d counted as idle", n)
		}
	})
}

// A MaxConnectionDuration too long to add to a loop's clock (the
// longest time.Duration, which AsDuration saturates Istio's largest to)
// never ends a loop's flow, as it never fires forward's timer: the
// deadline saturates rather than wrapping into the past.
func TestLoopMaxConnectionDurationSaturates(t *testing.T) {
	forEachLoopPath(t, func(t *testing.T, m *mesh) {
		b := m.backend("v1")
		m.start(policyYAML(freePort(t), "connectionPool: {tcp: {maxConnectionDuration: 2562047h47m16.854775807s}}", b))
		c := m.mustDial(t, echoSNI, "istio")
		await.True(t, 5*time.Second, "the flow to reach a loop", func() bool { return loopsState(t, m.gw).flows == 1 })
		// A loop has swept since it took the flow: loopsState's
		// command ran after the sweep of the poll that adopted it.
		if err := c.Exchange(64 << 10); err != nil {
			t.Fatalf("exchange after the flow reached a loop: %v", err)
		}
		if n := m.gw.m.DurationClosed.Value(); n != 0 {
			t.Errorf("%d flows closed at a max duration of ~10,000 years", n)
		}
	})
}
