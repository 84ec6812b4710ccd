package discovery

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watcher reloads a catalog from files when they change. Its zero value is
// not usable: set Paths and Apply.
type Watcher struct {
	// Paths are the files and directories given to LoadFilesFor.
	Paths []string
	// Node, if set, is the node the catalog is for: Gateways that do not
	// select it are ignored (see Resources.Node).
	Node *Node
	// Apply receives every catalog that loaded and differs from the last
	// one; an error rejects it, and the caller keeps the last good config.
	Apply func(*Catalog) error
	// Result, if set, is told the outcome of every reload attempt, for
	// metrics: nil for a catalog applied.
	Result func(error)
	// Debounce coalesces bursts of file events (editors write several times);
	// default 100ms.
	Debounce time.Duration
	// Rescan is the interval of a full check that catches changes file
	// events miss (network filesystems, some ConfigMap updates); default 1s.
	Rescan time.Duration
	// Logger receives reload outcomes; nil discards them.
	Logger *slog.Logger

	// loaded is the fingerprint of the files Load read, so that Run also
	// picks up changes made between Load and Run.
	loaded [sha256.Size]byte
}

// Load reads the files once, applies them and remembers their contents so
// that Run reloads only on a change. Call it before Run.
func (w *Watcher) Load() error {
	var err error
	w.loaded, err = w.reload([sha256.Size]byte{})
	return err
}

// Run watches the files until ctx is done. A change is loaded and applied;
// a change that fails to load or apply is logged and reported, and the last
// good catalog stays in force.
func (w *Watcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch config: %w", err)
	}
	defer fw.Close()
	for _, p := range w.Paths {
		// Watching the parent catches files replaced by rename, which is how
		// editors and Kubernetes update them.
		dir := p
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			dir = filepath.Dir(p)
		}
		if err := fw.Add(dir); err != nil {
			return fmt.Errorf("watch config %s: %w", dir, err)
		}
	}
	debounce := cmpOr(w.Debounce, 100*time.Millisecond)
	rescan := time.NewTicker(cmpOr(w.Rescan, time.Second))
	defer rescan.Stop()
	pending := time.NewTimer(time.Hour)
	pending.Stop()
	last := w.loaded
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return nil
			}
			if ev.Op != fsnotify.Chmod {
				pending.Reset(debounce)
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return nil
			}
			w.log().Warn("config watch error", "err", err)
		case <-pending.C:
			last, _ = w.reload(last)
		case <-rescan.C:
			last, _ = w.reload(last)
		}
	}
}

// reload loads and applies the files if their contents differ from last,
// and returns the fingerprint now in force.
func (w *Watcher) reload(last [sha256.Size]byte) ([sha256.Size]byte, error) {
	fp := w.fingerprint()
	if fp == last {
		return last, nil
	}
	c, err := LoadFilesFor(w.Paths, w.Node, w.Logger)
	if err == nil {
		err = w.Apply(c)
	}
	if w.Result != nil {
		w.Result(err)
	}
	if err != nil {
		w.log().Error("config rejected; the last good config stays in force", "err", err)
		// Remember the bad contents so they are not retried, and logged,
		// every rescan; the next edit changes the fingerprint.
		return fp, err
	}
	w.log().Info("config applied", "gateways", len(c.Gateways), "services", len(c.Services))
	return fp, nil
}

// fingerprint hashes the names and contents of the config files, so that
// events that change nothing (touch, chmod, rewrites with equal bytes) do
// not reload.
func (w *Watcher) fingerprint() [sha256.Size]byte {
	h := sha256.New()
	files, err := expandPaths(w.Paths)
	if err != nil {
		fmt.Fprintf(h, "error %v", err)
	}
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00", f)
		if fh, err := os.Open(f); err == nil {
			io.Copy(h, fh)
			fh.Close()
		}
		h.Write([]byte{0})
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

func (w *Watcher) log() *slog.Logger {
	if w.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return w.Logger
}

func cmpOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
