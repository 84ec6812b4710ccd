package gateway

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// loops are the gateway's event loops, which pump the flows whose two
// ends are sockets without a goroutine per flow, as nginx's and HAProxy's
// workers do: an idle connection costs its sockets and a few hundred
// bytes of heap, not two goroutine stacks, and a chunk costs a read and a
// write, not a wake-up of a parked goroutine and a read that finds
// nothing. They start with the first flow handed to them and stop when
// Shutdown has released every flow.
type loops struct {
	once    sync.Once
	all     []*loop
	err     error // why the loops could not start: flows fall back to forward
	next    atomic.Uint32
	wg      sync.WaitGroup // the loops' goroutines
	stopped atomic.Bool    // Shutdown stopped the loops: a later pick gets none, nor starts them
}

// pick returns the loop for a new flow, round robin, starting the loops
// on first use. It returns nil if they could not start or are stopped.
func (ls *loops) pick(g *Gateway) *loop {
	if !ls.start(g) {
		return nil
	}
	return ls.all[int(ls.next.Add(1))%len(ls.all)]
}

// start starts the loops, Config.EventLoops of them (GOMAXPROCS by
// default), if they are not yet, and reports whether they run.
func (ls *loops) start(g *Gateway) bool {
	ls.once.Do(func() {
		if ls.stopped.Load() {
			ls.err = errors.New("loops stopped")
			return
		}
		base := time.Now()
		for range g.eventLoops() {
			l, err := newLoop(g, base)
			if err != nil {
				ls.err = err
				for _, l := range ls.all {
					l.close()
				}
				ls.all = nil
				g.log.Warn("event loops unavailable, forwarding with goroutines", "err", err)
				return
			}
			ls.all = append(ls.all, l)
		}
		ls.all[0].peers = ls.all[1:]
		for _, l := range ls.all {
			l.first = ls.all[0]
		}
		for _, l := range ls.all {
			ls.wg.Add(1)
			go func() {
				defer ls.wg.Done()
				l.run()
			}()
		}
	})
	return ls.err == nil && !ls.stopped.Load()
}

// eventLoops is how many loops the gateway runs: Config.EventLoops, or
// GOMAXPROCS.
func (g *Gateway) eventLoops() int {
	if g.cfg.EventLoops > 0 {
		return g.cfg.EventLoops
	}
	return max(1, runtime.GOMAXPROCS(0))
}

// started returns the loops, starting them if need be; nil if they
// cannot run.
func (ls *loops) started(g *Gateway) []*loop {
	if !ls.start(g) {
		return nil
	}
	return ls.all
}

// stop ends the loops once the flows they pumped are released, and waits
// for their goroutines. A flow still in a loop is reset.
func (ls *loops) stop() {
	if ls.stopped.Swap(true) {
		return // a second Shutdown
	}
	// Waits for a pick that is starting the loops, whose loops are then
	// all in ls.all; none starts after.
	ls.once.Do(func() { ls.err = errors.New("loops stopped") })
	for _, l := range ls.all {
		l.send(command{stop: true})
	}
	ls.wg.Wait()
}

// command is what other goroutines ask of a loop, which alone touches
// the descriptors it polls: closing one from outside could close a
// number that the kernel reuses for a new connection while the loop still
// polls it.
type command struct {
	f    *flow // end f
	stop bool
	// listen and unlisten give the loop a listening socket to accept
	// on, or take it back (loopaccept.go).
	listen, unlisten *listener
	fd               int // the loop's socket of listen
	// fn, if set, is run by the loop, with nothing else: how a test
	// reads the loop's state.
	fn func()
	// pack asks a loop to hand its work to the first loop's goroutine;
	// adopt is how it does, sent to the first loop (looppack.go).
	pack  bool
	adopt *loop
}

// loop is one event loop: a goroutine that waits, parked in Go's
// netpoller on its epoll set, for the sockets of its flows and for an
// eventfd that wakes it for commands.
type loop struct {
	g    *Gateway
	epfd int
	file *os.File // epfd in Go's netpoller, which wakes the loop
	wake int      // eventfd

	mu     sync.Mutex
	cmds   []command
	woken  bool // an eventfd write is pending: no need for another
	closed bool // the eventfd is closed, or about to be
	// incoming are the flows registered and not yet adopted.
	incoming, spareIn []*loopFlow

	// The rest is the loop goroutine's alone.
	byFD  []*side     // the flow side polled at each descriptor
	flows []*loopFlow // every flow, for the sweep
	buf   []byte      // the chunk read and written at once
	pipes []*pipe     // empty splice pipes for reuse
	base  time.Time
	now   int64 // nanoseconds since base at the last wake-up: the coarse clock
	// minIdle is the shortest idle timeout among the flows, which sets
	// how often the sweep runs; 0 for none.
	minIdle time.Duration
	// sweepAt is when the next sweep is due, on the coarse clock: the
	// next idle check or the flows' earliest max duration; 0 for none.
	sweepAt int64
	// due is when the loop next needs to run without an event: the
	// next sweep or connect deadline, on the coarse clock; 0 for none.
	// armed is the wait's deadline, due or a packed loop's.
	due, armed int64
	spare      []command
	events     []unix.EpollEvent
	// stopping is set by the stop command: run returns.
	stopping bool
	// lns are the listening sockets the loop accepts on; dials the flows
	// whose upstream it is connecting; gen the generation of the last
	// socket it registered (side.gen).
	lns   []loopListener
	dials []*loopFlow
	gen   int32
	// acceptMore: an accept of this poll pass took a connection from a
	// level-triggered listening socket, whose backlog may not be empty.
	acceptMore bool
	// sa is the address connectRaw passes, reused.
	sa  unix.RawSockaddrInet6
	rsa unix.RawSockaddrAny // accept4's
	packState
}

// maxPooledPipes bounds the empty pipes a loop keeps: a bulk transfer
// holds one pipe per direction only while it has bytes in it.
const maxPooledPipes = 16

// newLoop makes a loop whose clock starts at base, which all the
// gateway's loops share, so that the first loop can keep the deadlines
// of the loops packed into it.
func newLoop(g *Gateway, base time.Time) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(wake)
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	// Non-blocking, so that os.NewFile registers it with the netpoller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(wake)
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll set non-blocking: %w", err)
	}
	return &loop{g: g, epfd: epfd, file: os.NewFile(uintptr(epfd), "epoll"), wake: wake,
		buf: make([]byte, chunkSize), base: base, events: make([]unix.EpollEvent, 128),
		packState: packState{resume: make(chan struct{}, 1), done: make(chan struct{})}}, nil
}

// close releases the loop's descriptors; its goroutine has returned or
// never started.
func (l *loop) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	for _, p := range l.pipes {
		p.close()
	}
	l.pipes = nil
	unix.Close(l.wake)
	l.file.Close()
}

// send queues c for the loop and wakes it. A command for a closed loop
// is dropped: only an abort that lost the race with its flow's end can
// come that late.
func (l *loop) send(c command) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.cmds = append(l.cmds, c)
	wake := !l.woken
	l.woken = true
	l.mu.Unlock()
	if wake {
		one := [8]byte{1}
		rawWrite(l.wake, one[:])
	}
}

// run is the loop's goroutine. It waits for its epoll set to be
// readable in Go's netpoller, as any socket's goroutine does, rather than
// blocking a thread in epoll_wait: a thread blocked in a system call
// keeps its P from every other goroutine until sysmon takes it back (up
// to 10ms), which with a loop per P starved the accept and dial paths.
// One wake-up serves every flow that has events. While the loop is
// packed, its goroutine waits for the first loop to give its work back.
func (l *loop) run() {
	defer close(l.done)
	defer l.close()
	rc, err := l.file.SyscallConn()
	if err != nil {
		l.g.log.Error("event loop cannot wait", "err", err)
		return
	}
	for !l.stopping {
		if l.packing {
			l.packing = false
			l.park()
			continue
		}
		if err := rc.Read(l.poll); err != nil {
			if !isTimeout(err) {
				l.g.log.Error("event loop cannot wait", "err", err)
				return
			}
			// A deadline is due: prepareRead refuses to call poll with
			// the deadline passed, so poll here, which runs what is due
			// and sets the next deadline.
			l.poll(0)
		}
	}
	l.spread() // the first loop's stop gives the others back their work
}

// busyPolls is how many more times poll takes the ready events, while
// each time finds some, before it parks: under request/response load a
// loop's next event often comes while it pumps the last, and taking it
// at once saves the park and the netpoller's wake-up (fewer context
// switches per round trip in every measured run, docs/benchmarks.md
// "How the loops wait"). An idle loop parks after one empty poll.
const busyPolls = 4

// poll is the loop's work, as a RawConn.Read callback: it takes the
// ready events without waiting, and does what step does for them, until
// it finds none, then runs what is due of the loops packed into this
// one. It reports true once the loop is stopped or to be packed; false
// waits for the epoll set to be readable again, which any event that
// arrived since epoll_wait has already made it.
func (l *loop) poll(uintptr) bool {
	start := int64(-1)
	polls := 0
	for {
		n := l.step()
		if start < 0 {
			start = l.now
		}
		if l.stopping || l.packing {
			return true
		}
		if n == len(l.events) {
			continue
		}
		// A backlog that accept may have left is polled for even past
		// busyPolls: no further edge announces it.
		if n > 0 && (polls < busyPolls || l.acceptMore) {
			polls++
			continue
		}
		break
	}
	l.runDue()
	l.weigh(start)
	l.arm()
	return false
}

// step takes the ready events once, without waiting, pumps the flows
// they concern, steps the packed loops that have events, then runs the
// commands and, when due, the idle sweep. It returns how many events it
// took; a stop command, or an epoll set that cannot be polled, sets
// l.stopping.
func (l *loop) step() int {
	n, err := rawEpollPoll(l.epfd, l.events)
	if err != nil && err != unix.EINTR {
		// Only a bad epfd fails here: nothing can be polled.
		l.g.log.Error("epoll_wait failed", "err", err)
		l.stopping = true
		return 0
	}
	l.now = int64(time.Since(l.base))
	woken := false
	l.acceptMore = false
	for _, ev := range l.events[:max(n, 0)] {
		fd := int(ev.Fd)
		if fd == l.wake {
			woken = true
			continue
		}
		switch ev.Pad {
		case padListener:
			if ln := l.listenerAt(fd); ln != nil {
				l.accept(ln)
			}
			continue
		case padLoop:
			l.stepPacked(fd)
			continue
		}
		s := l.sideAt(fd)
		if s == nil {
			// A new flow's first edge, or a stale event of a flow
			// ended earlier in this batch, which left nil at its
			// descriptors (a new flow that reuses one takes the
			// stale event's flags: a read or write that finds
			// nothing).
			l.adoptIncoming()
			if s = l.sideAt(fd); s == nil {
				continue
			}
		}
		// An event of another generation is stale: its socket was
		// closed earlier in this batch and s reuses its number.
		if s.gen == ev.Pad {
			l.ready(s, ev.Events)
		}
	}
	if woken && l.commands() {
		l.stopping = true
		return n
	}
	if l.sweepAt != 0 && l.now >= l.sweepAt {
		l.sweep()
	}
	at := l.sweepAt
	if len(l.flows) == 0 {
		at = 0
	}
	l.due = earliest(at, l.expireDials())
	return n
}

// arm sets the wait's deadline to the earliest of the loop's due, those
// of the loops packed into it and, in the first loop, the end of the
// load window while it may pack the others; or none.
func (l *loop) arm() {
	at := earliest(l.due, l.weighAt())
	for _, p := range l.packed {
		at = earliest(at, p.due)
	}
	if at == l.armed {
		return
	}
	l.armed = at
	var t time.Time
	if at != 0 {
		t = l.base.Add(time.Duration(at))
	}
	l.file.SetReadDeadline(t)
}

// commands runs the queued commands; it reports whether one was stop.
func (l *loop) commands() (stop bool) {
	var b [8]byte
	rawRead(l.wake, b[:])
	l.mu.Lock()
	cmds := l.cmds
	l.cmds, l.spare = l.spare[:0], cmds
	l.woken = false
	l.mu.Unlock()
	// An end may be for a flow registered since the last edge.
	l.adoptIncoming()
	for i, c := range cmds {
		switch {
		case c.stop:
			stop = true
		case c.listen != nil:
			l.listen(c.listen, c.fd)
		case c.unlisten != nil:
			l.unlisten(c.unlisten)
		case c.fn != nil:
			c.fn()
		case c.pack:
			l.packing = l != l.first
		case c.adopt != nil:
			l.adoptLoop(c.adopt)
		case c.f.lf != nil && !c.f.lf.done:
			l.finish(c.f.lf)
		}
		cmds[i] = command{}
	}
	if stop {
		// Shutdown released every flow before it stopped the loops;
		// anything left is reset rather than leaked.
		for len(l.flows) > 0 {
			lf := l.flows[0]
			lf.f.failed.Store(true)
			l.finish(lf)
		}
		for len(l.dials) > 0 {
			l.finish(l.dials[0])
		}
	}
	return stop
}

// sweepPeriod is how often the idle sweep runs for a shortest idle
// timeout of idle: a flow idles out between idle and idle plus this, as
// the goroutine engine's deadlines, renewed once per period, allowed.
func sweepPeriod(idle time.Duration) int64 {
	return int64(min(max(idle/4, time.Millisecond), time.Second))
}

// sweep ends the flows that moved no byte for their idle timeout or
// are as old as their route's MaxConnectionDuration (closed, not reset,
// as forward's abort closes them), and schedules the next sweep.
func (l *loop) sweep() {
	l.minIdle, l.sweepAt = 0, 0
	for i := 0; i < len(l.flows); {
		lf := l.flows[i]
		idle := lf.f.idle
		idled := idle > 0 && l.now-lf.last >= int64(idle)
		if idled || (lf.expires != 0 && l.now >= lf.expires) {
			if lf.f.ended.CompareAndSwap(false, true) {
				if idled {
					l.g.m.IdleClosed.Inc()
				} else {
					l.g.m.DurationClosed.Inc()
				}
			}
			l.finish(lf) // moves the last flow to i
			continue
		}
		l.schedule(lf)
		i++
	}
}

// schedule brings the next sweep forward for lf, a flow the sweep will
// look at: to its max duration, and to the next idle check if its idle
// timeout is the shortest. Scheduling each flow in turn gives what one
// pass over them all would, as a shorter idle timeout never checks later.
func (l *loop) schedule(lf *loopFlow) {
	if idle := lf.f.idle; idle > 0 && (l.minIdle == 0 || idle < l.minIdle) {
		l.minIdle = idle
		l.sweepAt = earliest(l.sweepAt, l.now+sweepPeriod(idle))
	}
	l.sweepAt = earliest(l.sweepAt, lf.expires)
}

// earliest returns the earlier of two deadlines on the loop's clock, 0
// being none.
func earliest(a, b int64) int64 {
	if a == 0 || (b != 0 && b < a) {
		return b
	}
	return a
}

// handover gives f, whose upstream is dialed, to an event loop if both
// its ends are sockets, and reports whether it did; otherwise, or if the
// loops are unavailable, the caller forwards it with goroutines.
func (g *Gateway) handover(f *flow) bool {
	if f.client.tcp == nil || f.up.tcp == nil {
		return false
	}
	l := g.loops.pick(g)
	if l == nil {
		return false
	}
	cfd, ok := sysfd(f.client.tcp)
	if !ok {
		return false
	}
	ufd, ok := sysfd(f.up.tcp)
	if !ok {
		return false
	}
	// Under g.mu, as Shutdown's cut: a flow Shutdown may already have
	// cut (its sockets closed) stays with forward, which sees them
	// closed; a later cut sees f.loop and asks the loop.
	g.mu.Lock()
	if g.cutting.Load() {
		g.mu.Unlock()
		return false
	}
	f.loop.Store(l)
	g.mu.Unlock()
	lf := &loopFlow{f: f, i: -1, expires: expiresAt(f, int64(time.Since(l.base)))}
	lf.side[0].lf, lf.side[0].fd = lf, cfd
	lf.side[1].lf, lf.side[1].fd = lf, ufd
	l.register(lf)
	return true
}

// sysfd returns c's descriptor, which stays open until c is closed.
func sysfd(c *net.TCPConn) (int, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	fd := -1
	if rc.Control(func(s uintptr) { fd = int(s) }) != nil || fd < 0 {
		return 0, false
	}
	return fd, true
}
