package gateway

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// rateLog logs at most one message per key per interval, so a flood of bad
// connections cannot flood the log; it reports how many it suppressed.
type rateLog struct {
	log *slog.Logger
	mu  sync.Mutex
	at  map[string]*rateState
}

type rateState struct {
	last       time.Time
	suppressed int
}

const rateLogInterval = time.Second

func (r *rateLog) warn(key, msg string, args ...any) {
	if !r.log.Enabled(context.Background(), slog.LevelWarn) {
		return
	}
	now := time.Now()
	r.mu.Lock()
	if r.at == nil {
		r.at = make(map[string]*rateState)
	}
	s, ok := r.at[key]
	if !ok {
		s = &rateState{}
		r.at[key] = s
	}
	if now.Sub(s.last) < rateLogInterval {
		s.suppressed++
		r.mu.Unlock()
		return
	}
	suppressed := s.suppressed
	s.last, s.suppressed = now, 0
	r.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "suppressed_since_last", suppressed)
	}
	r.log.Warn(msg, args...)
}
