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
// serve. Its zero value is ready to use; it is safe for concurrent use.
type Warned struct {
	mu   sync.Mutex
	seen map[string]bool
}

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
		if w.seen == nil {
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
