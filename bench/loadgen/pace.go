package main

import (
	"fmt"
	"os"
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

// wakeTimer puts one goroutine to sleep until a given time on a timerfd
// read through the runtime's network poller. time.Sleep would not do: when
// the process is idle, the runtime waits for its next timer in epoll_wait,
// whose timeout is in whole milliseconds, and the sleeps of a paced set
// (a few hundred µs to a few ms) end up to a millisecond late, all the
// connections' at the same tick: the requests would leave in bursts of
// several at once, the load the schedule is there to avoid. A timerfd is
// a high-resolution kernel timer whose expiry wakes epoll_wait at once
// (tens of µs late on this machine, not hundreds).
type wakeTimer struct {
	f   *os.File
	fd  int // f's descriptor, valid until Close
	buf [8]byte
}

// newWakeTimer creates the timerfd; Close releases it.
func newWakeTimer() (*wakeTimer, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd_create: %w", err)
	}
	// Non-blocking, so os.NewFile registers it with the poller and a
	// read parks the goroutine, not the thread.
	return &wakeTimer{f: os.NewFile(uintptr(fd), "timerfd"), fd: fd}, nil
}

// sleepUntil returns at t or, if t has passed, at once. It is not safe for
// concurrent use: one timer per goroutine.
func (w *wakeTimer) sleepUntil(t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return nil
	}
	// A relative expiry of d > 0 (a zero one would disarm the timer).
	its := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	if err := unix.TimerfdSettime(w.fd, 0, &its, nil); err != nil {
		return fmt.Errorf("timerfd_settime: %w", err)
	}
	// The expiry count, which a one-shot timer makes 1.
	if _, err := w.f.Read(w.buf[:]); err != nil {
		return fmt.Errorf("reading timerfd: %w", err)
	}
	return nil
}

// Close releases the timerfd.
func (w *wakeTimer) Close() error { return w.f.Close() }
