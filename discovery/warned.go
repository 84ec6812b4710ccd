package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
)

// Warned remembers the warnings logged for one version of a config, so
// that rebuilding it (a merge with another source's change) does not log
// them again: the operator hears once about what the gateway does not
// serve. It remembers at most maxWarned warnings, so that a long-lived
// source whose resources churn (a cluster) cannot grow it without bound:
// past that, it forgets and a warning may be logged again. Its zero value
// is ready to use; it is safe for concurrent use.
type Warned struct {
	mu   sync.Mutex
	seen map[string]bool
}

// maxWarned bounds the warnings a Warned remembers.
const maxWarned = 4096

// log logs msg with args at level on l unless w (nil: never) has logged
// the same message with the same arguments before.
func (w *Warned) log(l *slog.Logger, level slog.Level, msg string, args ...any) {
	if l == nil {
		return
	}
	if w != nil {
		key := fmt.Sprint(level, msg, args)
		w.mu.Lock()
		dup := w.seen[key]
		if w.seen == nil || len(w.seen) >= maxWarned {
			w.seen = make(map[string]bool)
		}
		w.seen[key] = true
		w.mu.Unlock()
		if dup {
			return
		}
	}
	l.Log(context.Background(), level, msg, args...)
}
