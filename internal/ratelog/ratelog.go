// Package ratelog logs warnings at most once per key per interval, so that
// a flood of bad connections (refusals, failed connects, ejections) cannot
// flood the log: the next line of a key says how many it left out.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// DefaultInterval is Logger.Interval's default.
const DefaultInterval = time.Second

// SuppressedKey is the attribute that carries how many lines of the key
// were left out since the last one logged.
const SuppressedKey = "suppressed_since_last"

// Logger writes at most one warning per key per Interval. The zero value
// is ready to use; a Logger is safe for concurrent use and must not be
// copied after first use. It holds one entry per key ever used, so keys
// must come from a small fixed set (reasons, kinds of failure), never
// from what a peer sends.
type Logger struct {
	// Interval is the least time between two lines of one key; 0 means
	// DefaultInterval.
	Interval time.Duration

	now  func() time.Time // time.Now; a test's clock
	mu   sync.Mutex
	keys map[string]*keyState
}

type keyState struct {
	last       time.Time // when the last line was logged
	suppressed int       // lines left out since
}

// Warn logs msg with args on log at warn level, unless a line of key was
// logged less than Interval ago: then it only counts it, and the next
// line of key it logs carries the count as SuppressedKey. When log does
// not enable warn level, Warn neither logs nor counts.
func (l *Logger) Warn(log *slog.Logger, key, msg string, args ...any) {
	if suppressed, ok := l.allow(log, key); ok {
		logWarn(log, msg, args, suppressed)
	}
}

// WarnFunc is Warn with the line's attributes built by args, which it
// calls only for a line it logs: a suppressed line builds nothing (no
// String of an address, no boxing into the variadic slice), so that a
// flood it keeps out of the log costs no allocations either.
func (l *Logger) WarnFunc(log *slog.Logger, key, msg string, args func() []any) {
	if suppressed, ok := l.allow(log, key); ok {
		logWarn(log, msg, args(), suppressed)
	}
}

// allow tells whether a line of key is to be logged now, and how many
// were left out since the last; it counts one left out.
func (l *Logger) allow(log *slog.Logger, key string) (suppressed int, ok bool) {
	if !log.Enabled(context.Background(), slog.LevelWarn) {
		return 0, false
	}
	now := time.Now()
	if l.now != nil {
		now = l.now()
	}
	interval := l.Interval
	if interval == 0 {
		interval = DefaultInterval
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keys == nil {
		l.keys = make(map[string]*keyState)
	}
	s, seen := l.keys[key]
	if !seen {
		s = &keyState{}
		l.keys[key] = s
	}
	if seen && now.Sub(s.last) < interval {
		s.suppressed++
		return 0, false
	}
	suppressed = s.suppressed
	s.last, s.suppressed = now, 0
	return suppressed, true
}

func logWarn(log *slog.Logger, msg string, args []any, suppressed int) {
	if suppressed > 0 {
		args = append(args, SuppressedKey, suppressed)
	}
	log.Warn(msg, args...)
}
