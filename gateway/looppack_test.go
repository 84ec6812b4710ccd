package gateway

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
)

// setPacked packs g's loops into the first or spreads them, from the
// first loop's goroutine, and waits until every loop is where it was
// sent.
func setPacked(t *testing.T, g *Gateway, packed bool) {
	t.Helper()
	first := g.loops.all[0]
	first.send(command{fn: func() {
		if packed {
			first.pack()
		} else {
			first.spread()
		}
	}})
	want := int64(0)
	if packed {
		want = int64(len(g.loops.all) - 1)
	}
	await.True(t, 5*time.Second, fmt.Sprintf("%d loops packed", want), func() bool { return g.m.LoopsPacked.Value() == want })
}

// exchange writes p to c and reads it back, byte for byte.
func exchange(c *net.TCPConn, p []byte) error {
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(p)
		errc <- err
	}()
	got := make([]byte, len(p))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, p) {
		return fmt.Errorf("echo differs from the %d bytes sent", len(p))
	}
	return nil
}

// Flows spread over three loops carry every byte while the loops pack
// into the first one's goroutine and spread again many times, with a
// bulk transfer running across the switches; new connections are taken
// in either state; a half-close carries across a packed loop; and a
// Shutdown with the loops packed returns every loop's goroutine.
// SpreadLoops keeps the load from packing or spreading them on its own.
func TestLoopPacking(t *testing.T) {
	for _, loopAccept := range []bool{false, true} {
		t.Run(fmt.Sprintf("loop accept %v", loopAccept), func(t *testing.T) {
			m, _, hello := loopMesh(t, Config{LoopAccept: loopAccept, EventLoops: 3, SpreadLoops: true}, echo)
			const conns = 9
			cs := make([]*net.TCPConn, conns)
			for i := range cs {
				cs[i] = m.rawConn(hello)
				cs[i].SetDeadline(time.Now().Add(time.Minute))
			}
			await.True(t, 5*time.Second, "every flow in a loop", func() bool { return loopsState(t, m.gw).flows == conns })
			bulk := make(chan error, 1)
			stop := make(chan struct{})
			go func() {
				defer close(bulk)
				for i := uint64(0); ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if err := exchange(cs[0], payload(1<<20, i)); err != nil {
						bulk <- err
						return
					}
				}
			}()
			const switches = 20
			for i := range switches {
				packed := i%2 == 0
				setPacked(t, m.gw, packed)
				for j, c := range cs[1:] {
					if err := exchange(c, payload(700, uint64(i*conns+j))); err != nil {
						t.Fatalf("switch %d, flow %d: %v", i, j+1, err)
					}
				}
				checkEcho(t, m.rawConn(hello), fmt.Sprintf("new flow, packed %v\n", packed))
			}
			close(stop)
			if err := <-bulk; err != nil {
				t.Fatalf("bulk flow: %v", err)
			}
			setPacked(t, m.gw, true)
			question := payload(100<<10, 7)
			if err := converse(cs[1], question, question, true); err != nil {
				t.Errorf("half-close through a packed loop: %v", err)
			}
			if n := flowGoroutines(); n != 0 {
				t.Errorf("%d forwarding goroutines with every flow in a loop", n)
			}
			shutdown(m.gw)
			if n := parked("gateway.(*loop).run("); n != 0 {
				t.Errorf("%d loop goroutines left after Shutdown", n)
			}
		})
	}
}

// A packed loop's deadlines are kept by the first loop: a flow of the
// second loop, packed while the first holds no flow of its own, is
// closed at its idle timeout and counted.
func TestLoopPackedIdleTimeout(t *testing.T) {
	m, _, hello := loopMesh(t, Config{EventLoops: 2, SpreadLoops: true, IdleTimeout: 300 * time.Millisecond}, echo)
	// The loops start with the first flow. Two flows that are over at
	// once, handed to the loops round robin, leave the next one to the
	// second loop.
	checkEcho(t, m.rawConn(hello), "start the loops\n")
	checkEcho(t, m.rawConn(hello), "and the first loop's turn\n")
	await.True(t, 5*time.Second, "no flow", func() bool { return loopsState(t, m.gw).flows == 0 })
	setPacked(t, m.gw, true)
	c := m.rawConn(hello)
	c.SetDeadline(time.Now().Add(time.Minute))
	if err := exchange(c, []byte("idle now\n")); err != nil {
		t.Fatal(err)
	}
	var inFirst, inSecond int
	onLoops(t, m.gw, func(l *loop) {
		if l == l.first {
			inFirst = len(l.flows)
		} else {
			inSecond = len(l.flows)
		}
	})
	// The connection may already be closed, which the read below tells.
	if inFirst != 0 {
		t.Fatalf("the first loop holds %d flows, want none (the second %d)", inFirst, inSecond)
	}
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("read %v, want EOF at the idle timeout", err)
	}
	await.True(t, 5*time.Second, "idle close counted", func() bool { return m.gw.m.IdleClosed.Value() == 1 })
	if n := m.gw.m.LoopsPacked.Value(); n != 1 {
		t.Errorf("%d loops packed after the flow ended, want 1", n)
	}
}

// The load decides: a light load packs the loops once it has stayed
// light for packCalm windows; a heavy one, or one that has not, does
// not; a packed first loop spreads them after spreadHot windows in a row
// close to saturation, not after fewer or a broken run.
func TestLoopPackJudge(t *testing.T) {
	type window struct{ busy, used float64 }
	calm := window{busy: 0.2, used: 0.1}
	heavy := window{busy: 0.6, used: packBelow}
	hot := window{busy: spreadAbove, used: 0.9}
	repeat := func(w window, n int) []window {
		ws := make([]window, n)
		for i := range ws {
			ws[i] = w
		}
		return ws
	}
	join := func(parts ...[]window) []window {
		var ws []window
		for _, p := range parts {
			ws = append(ws, p...)
		}
		return ws
	}
	for _, tc := range []struct {
		name    string
		packed  bool
		windows []window
		want    int // index of the window that switches; -1 for none
	}{
		{"calm packs", false, repeat(calm, packCalm), packCalm - 1},
		{"calm, not long enough", false, repeat(calm, packCalm-1), -1},
		{"heavy never packs", false, repeat(heavy, 3*packCalm), -1},
		{"a heavy window restarts the count", false, join(repeat(calm, packCalm-1), []window{heavy}, repeat(calm, packCalm)), 2*packCalm - 1},
		{"hot spreads", true, repeat(hot, spreadHot), spreadHot - 1},
		{"hot, not long enough", true, repeat(hot, spreadHot-1), -1},
		{"busy below the mark stays packed", true, repeat(window{busy: spreadAbove - 0.01, used: 1.5}, 3*spreadHot), -1},
		{"a cool window restarts the count", true, join(repeat(hot, spreadHot-1), []window{calm}, repeat(hot, spreadHot)), 2*spreadHot - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := packState{wantPacked: tc.packed}
			got := -1
			for i, w := range tc.windows {
				pack, spread := p.judge(w.busy, w.used)
				if pack && spread {
					t.Fatalf("window %d: both pack and spread", i)
				}
				if (pack && tc.packed) || (spread && !tc.packed) {
					t.Fatalf("window %d: pack %v spread %v with packed %v", i, pack, spread, tc.packed)
				}
				if pack || spread {
					if got >= 0 {
						t.Fatalf("switched at windows %d and %d", got, i)
					}
					got = i
				}
			}
			if got != tc.want {
				t.Errorf("switched at window %d, want %d", got, tc.want)
			}
		})
	}
}

// Without SpreadLoops, a gateway whose loops carry a light load packs
// them by itself: with flows in the first loop, which weighs the load
// when it polls, and with its only flow in another loop, for which the
// first loop wakes at the end of each window to weigh it.
func TestLoopPackOnLightLoad(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flows int // handed to the loops round robin, the second loop first
	}{{"a flow in each loop", 2}, {"the only flow in the second loop", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			m, _, hello := loopMesh(t, Config{EventLoops: 2}, echo)
			var cs []*net.TCPConn
			for range tc.flows {
				c := m.rawConn(hello)
				c.SetDeadline(time.Now().Add(time.Minute))
				cs = append(cs, c)
			}
			await.True(t, 5*time.Second, "the flows in a loop", func() bool { return loopsState(t, m.gw).flows == tc.flows })
			inFirst := -1
			onLoops(t, m.gw, func(l *loop) {
				if l == l.first {
					inFirst = len(l.flows)
				}
			})
			if want := tc.flows - 1; inFirst != want {
				t.Fatalf("the first loop holds %d flows, want %d", inFirst, want)
			}
			// Each poll exchanges messages: a light load, not none.
			await.True(t, 10*time.Second, "the loops packed", func() bool {
				for _, c := range cs {
					if err := exchange(c, []byte("light\n")); err != nil {
						t.Fatal(err)
					}
				}
				return m.gw.m.LoopsPacked.Value() == 1
			})
			for i, c := range cs {
				if err := exchange(c, payload(1<<20, uint64(i))); err != nil {
					t.Fatalf("flow %d after packing: %v", i, err)
				}
			}
		})
	}
}
