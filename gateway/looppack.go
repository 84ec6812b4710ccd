package gateway

import (
	"time"

	"golang.org/x/sys/unix"
)

// Packing: while the loops are lightly loaded, the first loop's
// goroutine does the work of all of them, and the others' goroutines
// wait. Each loop keeps its flows, listening socket and deadlines; only
// the goroutine that polls them changes. The first loop polls a packed
// loop's epoll set as one more descriptor of its own (nested,
// level-triggered, so that no event is taken from it), and steps that
// loop when it is readable or due.
//
// Why: with a loop per P, two loops that become ready at once make Go's
// scheduler wake a second thread for the second one, which on a node
// whose cores are shared preempts the first and costs a context switch
// per wake-up (docs/benchmarks.md, "ewgate's threads preempt each
// other"). One goroutine costs none of that while one core is enough,
// and the loops spread again as soon as it is not.

// padLoop tags a packed loop's epoll set in the first loop's
// (EpollEvent.Pad).
const padLoop = -2

// The first loop weighs the load every packWindow. Spread, the loops
// pack after packCalm windows in a row in which the process used less
// than packBelow of a core (getrusage: everything the gateway does,
// which bounds what the loops do). Packed, they spread after spreadHot
// windows in a row in which the first loop's goroutine spent at least
// spreadAbove of the wall time polling: it is close to not keeping up.
// Packed loops cost less CPU for the same work (8-14 % less per round
// trip under request/response load, docs/benchmarks.md "Packing the
// loops"), so a load that packed stays packed, and one that spread
// needs to fall before it packs again.
const (
	packWindow  = int64(25 * time.Millisecond)
	packCalm    = 8
	packBelow   = 0.85
	spreadHot   = 2
	spreadAbove = 0.95
)

// packState is a loop's part in packing.
type packState struct {
	// first is the gateway's first loop, the one the others pack into;
	// peers, in the first loop only, are the others.
	first *loop
	peers []*loop
	// packed, in the first loop only, are the loops whose work its
	// goroutine does now; wantPacked that it asked the peers to pack
	// and has not spread them since.
	packed     []*loop
	wantPacked bool
	// packing: a pack command came; the loop's goroutine hands its work
	// to the first loop once the poll that ran the command returns.
	packing bool
	// resume gives a packed loop's work back to its goroutine; done is
	// closed when the loop's goroutine has returned.
	resume, done chan struct{}
	// busy, in the first loop only, is the wall time in nanoseconds
	// that its goroutine has spent in poll.
	busy int64
	// The first loop's window: when it began, busy and the process's
	// CPU time then, and how many windows in a row were calm or hot.
	winStart, winBusy, winCPU int64
	calm, hot                 int
}

// park hands the loop's work to the first loop and waits until it is
// given back, or the first loop has stopped.
func (l *loop) park() {
	l.first.send(command{adopt: l})
	select {
	case <-l.resume:
	case <-l.first.done:
		// Never adopted, or given back by the first loop's return.
		select {
		case <-l.resume:
		default:
		}
	}
	l.armed = -1 // the deadline set before packing may have passed
}

// adoptLoop takes p's work into this loop's goroutine, or gives it back
// at once if the loops are to spread or this one is stopping.
func (l *loop) adoptLoop(p *loop) {
	if !l.wantPacked || l.stopping {
		p.resume <- struct{}{}
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(p.epfd), Pad: padLoop}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, p.epfd, &ev); err != nil {
		l.g.log.Warn("event loop not packed", "err", err)
		p.resume <- struct{}{}
		return
	}
	l.packed = append(l.packed, p)
	l.g.m.LoopsPacked.Set(int64(len(l.packed)))
}

// stepPacked steps the packed loop whose epoll set is epfd.
func (l *loop) stepPacked(epfd int) {
	for i, p := range l.packed {
		if p.epfd == epfd {
			l.stepLoop(i, p)
			return
		}
	}
}

// stepLoop steps p, the packed loop at index i, and gives it back to
// its goroutine if it stopped, for that goroutine to return.
func (l *loop) stepLoop(i int, p *loop) {
	p.step()
	p.packing = false // a pack command it ran now is already done
	if p.stopping {
		l.release(i)
	}
}

// runDue steps the packed loops whose deadline has come.
func (l *loop) runDue() {
	for i := len(l.packed) - 1; i >= 0; i-- {
		if p := l.packed[i]; p.due != 0 && l.now >= p.due {
			l.stepLoop(i, p)
		}
	}
}

// release gives the packed loop at index i back to its goroutine.
func (l *loop) release(i int) {
	p := l.packed[i]
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, p.epfd, nil); err != nil {
		// Left in the set, its events would make this loop spin.
		l.g.log.Error("event loop cannot unpack", "err", err)
	}
	l.packed = append(l.packed[:i], l.packed[i+1:]...)
	l.g.m.LoopsPacked.Set(int64(len(l.packed)))
	p.resume <- struct{}{}
}

// spread gives every packed loop back to its goroutine.
func (l *loop) spread() {
	l.wantPacked = false
	for len(l.packed) > 0 {
		l.release(len(l.packed) - 1)
	}
}

// pack asks the peers to pack into this loop.
func (l *loop) pack() {
	l.wantPacked = true
	for _, p := range l.peers {
		p.send(command{pack: true})
	}
}

// weigh, in the first loop, counts the poll that began at start as
// busy time, ends the load window if it is over, and packs or spreads
// the loops as the window's load says.
func (l *loop) weigh(start int64) {
	if len(l.peers) == 0 || l.g.cfg.SpreadLoops {
		return
	}
	now := int64(time.Since(l.base))
	l.busy += now - start
	if now-l.winStart < packWindow {
		return
	}
	cpu := processCPU()
	wall := float64(now - l.winStart)
	busy, used := float64(l.busy-l.winBusy)/wall, float64(cpu-l.winCPU)/wall
	l.winStart, l.winBusy, l.winCPU = now, l.busy, cpu
	switch pack, spread := l.judge(busy, used); {
	case pack:
		l.g.log.Debug("event loops packed", "cpu", used)
		l.pack()
	case spread:
		l.g.log.Debug("event loops spread", "busy", busy)
		l.spread()
	}
}

// weighAt is when the first loop must wake to weigh the load, if no
// event wakes it first: the end of the window while the loops could
// pack and the gateway holds connections, which may all be the other
// loops'; 0 otherwise. An idle gateway is not woken, and packed loops
// wake the first for every event.
func (l *loop) weighAt() int64 {
	if len(l.peers) == 0 || l.wantPacked || l.g.cfg.SpreadLoops || l.g.Active() == 0 {
		return 0
	}
	return l.winStart + packWindow
}

// judge takes a window's load, busy the share of it that the first
// loop's goroutine spent polling and used the process's CPU over it in
// cores, and says whether to pack the loops or spread them now.
func (p *packState) judge(busy, used float64) (pack, spread bool) {
	if p.wantPacked {
		p.calm = 0
		return false, streak(&p.hot, busy >= spreadAbove, spreadHot)
	}
	p.hot = 0
	return streak(&p.calm, used < packBelow, packCalm), false
}

// streak counts in *n the windows in a row for which held was true, and
// reports true, starting the count again, at the need-th.
func streak(n *int, held bool, need int) bool {
	if !held {
		*n = 0
		return false
	}
	if *n++; *n < need {
		return false
	}
	*n = 0
	return true
}

// processCPU is the CPU time, user and system, that the process has
// used, in nanoseconds; 0 if getrusage fails.
func processCPU() int64 {
	var ru unix.Rusage
	if err := rawGetrusage(&ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
