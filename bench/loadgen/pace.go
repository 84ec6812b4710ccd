package main

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// schedule is when one connection of a paced rr set sends: its k-th
// request of a turn at start + first + k×every. For connection i of conns
// at rate round trips per second in all, every is conns/rate and first is
// i/rate: the set's requests are spread evenly over the interval, one
// connection after another, instead of all connections sending at once.
type schedule struct {
	first, every time.Duration
}

// newSchedule returns connection i's schedule (0 <= i < conns, rate > 0).
func newSchedule(i, conns int, rate float64) schedule {
	return schedule{
		first: time.Duration(float64(i) * 1e9 / rate),
		every: time.Duration(float64(conns) * 1e9 / rate),
	}
}

// at is the time of request k of a turn that started at start.
func (s schedule) at(start time.Time, k int) time.Time {
	return start.Add(s.first + time.Duration(k)*s.every)
}

// pacedTurn runs one turn of a paced set, which started at start, until
// end, on the calling goroutine locked to its thread: request k of the
// turn of each connection leaves at its time on the schedule if the
// connection's last echo is in by then, else as soon as it is (late if by
// more than an interval). A connection stops at end with the requests it
// owes unsent, so a turn lasts its length; its echo in flight is read
// first. A connection fails at its first error, which is counted, and
// leaves the poller; one whose echo is not back 10 s after end fails too.
//
// The round trip is timed from the write, not from the request's time on
// the schedule, and that hides no queueing (coordinated omission) here: a
// connection has one request outstanding, and its interval (connections
// / rate, 3.2 ms at compare.sh's 32 and 10,000/s) is many times a round
// trip (about 0.1 ms), so it is almost always waiting on its time, not on
// an echo, when its next request is due. The rare request that a stall
// made late is counted, so a run that could not hold the rate shows it;
// timing from the schedule would add the client's own wake-up to every
// sample.
func (s *rrSet) pacedTurn(start, end time.Time) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for _, p := range s.pingers {
		p.k, p.due, p.out1, p.done = 0, p.sched.at(start, 0), false, p.failed
	}
	giveUp := end.Add(10 * time.Second)
	for {
		now := time.Now()
		var next time.Time // the earliest time a connection is due
		out := 0
		for _, p := range s.pingers {
			switch {
			case p.done:
			case p.out1:
				out++
			case !now.Before(end) || !p.due.Before(end):
				p.done = true
			case p.due.After(now):
				if next.IsZero() || p.due.Before(next) {
					next = p.due
				}
			default:
				if s.send(p, now) {
					out++
				}
			}
		}
		if out == 0 && next.IsZero() {
			return
		}
		if out > 0 && !now.Before(giveUp) {
			for _, p := range s.pingers {
				if p.out1 {
					s.fail(p, errRead, fmt.Errorf("echo of request %d not back 10 s after the turn's end", p.seq))
				}
			}
			return
		}
		wait := giveUp.Sub(now)
		if !next.IsZero() {
			wait = max(next.Sub(now), 0)
		}
		evs, err := s.poller.wait(wait)
		if err != nil {
			for _, p := range s.pingers {
				if !p.done {
					s.fail(p, errPace, err)
				}
			}
			return
		}
		now = time.Now()
		for _, ev := range evs {
			s.receive(s.pingers[ev.Fd], start, now)
		}
	}
}

// send writes p's next request at now.
func (s *rrSet) send(p *pinger, now time.Time) bool {
	stamp(p.out, p.seq)
	if now.Sub(p.due) > p.sched.every {
		p.late++
	}
	n, err := unix.Write(p.fd, p.out)
	if err == nil && n < len(p.out) {
		// A socket with room for less than one request: the
		// proxy is not reading.
		err = fmt.Errorf("wrote %d of %d bytes", n, len(p.out))
	}
	if err != nil {
		s.fail(p, errWrite, err)
		return false
	}
	p.sent, p.got, p.out1 = now, 0, true
	return true
}

// receive reads what p's socket has of its echo, which is complete at now
// if it is all in, in a turn that started at start.
func (s *rrSet) receive(p *pinger, start, now time.Time) {
	if !p.out1 {
		// Bytes that no request asked for, or the peer's close.
		s.fail(p, errMismatch, fmt.Errorf("data or close with no request out after request %d", p.seq))
		return
	}
	n, err := unix.Read(p.fd, p.in[p.got:])
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return
	case err != nil:
		s.fail(p, errRead, err)
		return
	case n == 0:
		s.fail(p, errRead, fmt.Errorf("echo of request %d: %w", p.seq, io.ErrUnexpectedEOF))
		return
	}
	if p.got += n; p.got < len(p.in) {
		return
	}
	p.samples = append(p.samples, now.Sub(p.sent))
	p.out1 = false
	if !bytes.Equal(p.in, p.out) {
		s.fail(p, errMismatch, fmt.Errorf("echo of request %d differs from it", p.seq))
		return
	}
	p.seq++
	p.k++
	p.due = p.sched.at(start, p.k)
}

// fail counts p's failure and takes it out of the poller and the turns.
func (s *rrSet) fail(p *pinger, k errKind, err error) {
	p.fail(&s.errs, k, err)
	p.out1, p.done = false, true
	s.poller.remove(p.fd)
}
