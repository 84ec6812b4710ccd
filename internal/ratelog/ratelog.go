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
	if !log.Enabled(context.Background(), slog.LevelWarn) {
		return
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
	if l.keys == nil {
		l.keys = make(map[string]*keyState)
	}
	s, ok := l.keys[key]
	if !ok {
		s = &keyState{}
		l.keys[key] = s
	}
	if ok && now.Sub(s.last) < interval {
		s.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := s.suppressed
	s.last, s.suppressed = now, 0
	l.mu.Unlock()
	if suppressed > 0 {
		args = append(args, SuppressedKey, suppressed)
	}
	log.Warn(msg, args...)
}
