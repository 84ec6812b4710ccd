package discovery

import (
	"context"
	"github.com/ewgate/ewgate/internal/await"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const waitFor = 5 * time.Second

// recorder is a Watcher's Apply and Result, logging every call in order.
type recorder struct {
	mu     sync.Mutex
	events []event
	// viewCheck makes Apply do what cmd/ewgate does: build the View for
	// ewNode and return its error.
	viewCheck bool
}

type event struct {
	applied *Catalog // set for an Apply call
	result  error    // for a Result call
	isApply bool
}

func (r *recorder) apply(c *Catalog) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, event{applied: c, isApply: true})
	if r.viewCheck {
		_, err := c.View(ewNode)
		return err
	}
	return nil
}

func (r *recorder) result(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, event{result: err})
}

func (r *recorder) snapshot() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// lastGood returns the last catalog that Apply accepted: an Apply followed by
// Result(nil).
func (r *recorder) lastGood() *Catalog {
	ev := r.snapshot()
	for i := len(ev) - 1; i > 0; i-- {
		if !ev[i].isApply && ev[i].result == nil && ev[i-1].isApply {
			return ev[i-1].applied
		}
	}
	return nil
}

// lastResult returns the last Result call's error and whether there was one.
func (r *recorder) lastResult() (error, bool) {
	ev := r.snapshot()
	for i := len(ev) - 1; i >= 0; i-- {
		if !ev[i].isApply {
			return ev[i].result, true
		}
	}
	return nil, false
}

func (r *recorder) watcher(paths ...string) *Watcher {
	return &Watcher{Paths: paths, Apply: r.apply, Result: r.result, Debounce: 10 * time.Millisecond, Rescan: time.Hour}
}

func hasGateway(c *Catalog, name string) bool {
	return c != nil && slices.Contains(gatewayNames(c), "istio-system/"+name)
}

// replaceFile writes content to path atomically, by renaming a temporary
// file over it, as editors and Kubernetes do.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	writeFile(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// startRun runs w until the test ends and checks that Run returns nil once
// its context is cancelled. It returns the cancel function and a channel
// closed when Run returned.
func startRun(t *testing.T, w *Watcher) (context.CancelFunc, <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := w.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Errorf("Run did not return %v after its context was cancelled", waitFor)
		}
	})
	return cancel, done
}

// waitWatching makes sure Run's file watch is in place before the test
// relies on file events: it rewrites a probe file, each time with new
// contents, until a reload shows it. Rescan is an hour, so only a file event
// can trigger that reload.
func waitWatching(t *testing.T, r *recorder, w *Watcher, dir string) {
	t.Helper()
	probe := filepath.Join(dir, "probe.yaml")
	n := 0
	var written time.Time
	await.True(t, waitFor, "Run to watch "+dir, func() bool {
		if hasGateway(r.lastGood(), "probe-"+strconv.Itoa(n)) {
			return true
		}
		// Not at every poll: each write restarts the debounce timer.
		if time.Since(written) > 20*w.Debounce {
			n++
			writeFile(t, probe, ewGatewayOn("probe-"+strconv.Itoa(n), 20000))
			written = time.Now()
		}
		return false
	})
}

// ewGatewayOn is a Gateway on its own port, so that several can coexist.
func ewGatewayOn(name string, port int) string {
	return doc("Gateway", "istio-system", name, strings.Replace(`{selector: {istio: eastwestgateway}, servers: [`+ewServer+`]}`, "15443", strconv.Itoa(port), 1))
}

func TestWatcherLoad(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "gw.yaml"), ewGateway("ew"))
	r := new(recorder)
	w := r.watcher(dir)
	if err := w.Load(); err != nil {
		t.Fatalf("Load: %v", err)
	}
	ev := r.snapshot()
	if len(ev) != 2 || !ev[0].isApply || ev[1].isApply || ev[1].result != nil {
		t.Fatalf("events after Load = %+v, want Apply then Result(nil)", ev)
	}
	if !hasGateway(ev[0].applied, "ew") {
		t.Errorf("applied catalog = %q", gatewayNames(ev[0].applied))
	}
}

func TestWatcherLoadInvalid(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "gw.yaml")
	writeFile(t, bad, doc("Gateway", "istio-system", "ew", `{servers: [{port: {number: 1, protocol: TLS}, hosts: ["*"], tls: {mode: SIMPLE}}]}`))
	r := new(recorder)
	err := r.watcher(dir).Load()
	wantErrContains(t, err, bad, "spec.servers[0].tls.mode")
	ev := r.snapshot()
	if len(ev) != 1 || ev[0].isApply || ev[0].result == nil {
		t.Errorf("events = %+v, want only Result(err)", ev)
	}

	// Apply's error is Load's error.
	writeFile(t, bad, ewGateway("a")+"---\n"+doc("Gateway", "istio-system", "b", `{servers: [`+ewServer+`]}`))
	r = &recorder{viewCheck: true}
	err = r.watcher(dir).Load()
	wantErrContains(t, err, "port 15443 is already served")
	if res, ok := r.lastResult(); !ok || res == nil || res.Error() != err.Error() {
		t.Errorf("Result = %v, want %v", res, err)
	}
}

func TestWatcherRun(t *testing.T) {
	dir := t.TempDir()
	gw := filepath.Join(dir, "gw.yaml")
	writeFile(t, gw, ewGateway("ew"))
	writeFile(t, filepath.Join(dir, "services.yaml"), serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local", ""))
	goroutines := runtime.NumGoroutine()

	r := &recorder{viewCheck: true}
	w := r.watcher(dir)
	if err := w.Load(); err != nil {
		t.Fatalf("Load: %v", err)
	}
	cancel, done := startRun(t, w)
	waitWatching(t, r, w, dir)

	// A new file in the directory.
	writeFile(t, filepath.Join(dir, "extra.yaml"), ewGatewayOn("extra", 15000))
	await.True(t, waitFor, "the new file to apply", func() bool { return hasGateway(r.lastGood(), "extra") })

	// An existing file replaced by rename.
	replaceFile(t, gw, ewGateway("renamed"))
	await.True(t, waitFor, "the replaced file to apply", func() bool {
		c := r.lastGood()
		return hasGateway(c, "renamed") && !hasGateway(c, "ew") && hasGateway(c, "extra")
	})
	good := r.lastGood()

	// A change that does not load: reported, not applied.
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, doc("Gateway", "istio-system", "bad", `{servers: [{port: {number: 1, protocol: TLS}, hosts: ["*"], tls: {mode: SIMPLE}}]}`))
	await.True(t, waitFor, "the invalid file to be reported", func() bool {
		err, ok := r.lastResult()
		return ok && err != nil && strings.Contains(err.Error(), bad)
	})
	ev := r.snapshot()
	for i, e := range ev {
		if e.isApply && hasGateway(e.applied, "bad") {
			t.Errorf("event %d: Apply called with the invalid config", i)
		}
		if !e.isApply && e.result != nil && i > 0 && ev[i-1].isApply {
			t.Errorf("event %d: Result(%v) after an Apply: want loading errors reported without Apply", i, e.result)
		}
	}
	wantErrContains(t, func() error { err, _ := r.lastResult(); return err }(), "Gateway istio-system/bad: spec.servers[0].tls.mode: SIMPLE")
	if r.lastGood() != good {
		t.Error("the last good catalog changed after an invalid change")
	}

	// A change that loads but that Apply rejects (two Gateways on one
	// port): reported, and the last good config stays.
	if err := os.Remove(bad); err != nil {
		t.Fatal(err)
	}
	conflict := filepath.Join(dir, "conflict.yaml")
	writeFile(t, conflict, ewGateway("conflict"))
	await.True(t, waitFor, "Apply's error to be reported", func() bool {
		err, ok := r.lastResult()
		return ok && err != nil && strings.Contains(err.Error(), "already served")
	})
	if r.lastGood() != good {
		t.Error("the last good catalog changed after Apply rejected one")
	}

	// Fixing it applies again.
	writeFile(t, conflict, ewGatewayOn("conflict", 15001))
	await.True(t, waitFor, "the fix to apply", func() bool { return hasGateway(r.lastGood(), "conflict") })

	cancel()
	select {
	case <-done:
	case <-time.After(waitFor):
		t.Fatal("Run did not return after cancel")
	}
	// fsnotify's goroutines are gone too.
	await.True(t, waitFor, "goroutines to end", func() bool { return runtime.NumGoroutine() <= goroutines })
}

func TestWatcherRunWatchesFile(t *testing.T) {
	dir := t.TempDir()
	gw := filepath.Join(dir, "gw.yaml")
	writeFile(t, gw, ewGateway("ew"))
	// Both files are watched through their directory.
	probe := filepath.Join(dir, "probe.yaml")
	r := new(recorder)
	w := r.watcher(gw, probe)
	writeFile(t, probe, ewGatewayOn("probe-start", 20000))
	if err := w.Load(); err != nil {
		t.Fatalf("Load: %v", err)
	}
	startRun(t, w)
	waitWatching(t, r, w, dir)

	replaceFile(t, gw, ewGateway("renamed"))
	await.True(t, waitFor, "the replaced file to apply", func() bool { return hasGateway(r.lastGood(), "renamed") })
	writeFile(t, gw, ewGateway("rewritten"))
	await.True(t, waitFor, "the rewritten file to apply", func() bool { return hasGateway(r.lastGood(), "rewritten") })
}

// Regression: Load did not remember what it read, and Run only compared with
// the files as they were when Run started, so a change made in between was
// never applied.
func TestWatcherChangeBetweenLoadAndRun(t *testing.T) {
	dir := t.TempDir()
	gw := filepath.Join(dir, "gw.yaml")
	writeFile(t, gw, ewGateway("before"))
	r := new(recorder)
	w := r.watcher(dir)
	w.Rescan = 20 * time.Millisecond // no event: only the rescan can see it
	if err := w.Load(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, gw, ewGateway("after"))
	startRun(t, w)
	await.True(t, waitFor, "the change made before Run to apply", func() bool { return hasGateway(r.lastGood(), "after") })
}

func TestWatcherReloadOnlyOnChange(t *testing.T) {
	dir := t.TempDir()
	gw := filepath.Join(dir, "gw.yaml")
	content := ewGateway("ew")
	writeFile(t, gw, content)
	r := new(recorder)
	w := r.watcher(dir)
	if err := w.Load(); err != nil {
		t.Fatal(err)
	}
	n := len(r.snapshot())
	last := w.loaded

	// Identical bytes, written in place, by rename, or touched.
	writeFile(t, gw, content)
	replaceFile(t, gw, content)
	if err := os.Chtimes(gw, time.Now().Add(time.Hour), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "ignored.txt"), "not config")
	if fp, err := w.reload(last); err != nil || fp != last {
		t.Errorf("reload after identical rewrite = %x, %v; want the same fingerprint, nil", fp, err)
	}
	if got := len(r.snapshot()); got != n {
		t.Errorf("identical rewrite caused %d Apply/Result calls", got-n)
	}

	// A different file name is a change, even with the same contents.
	if err := os.Rename(gw, filepath.Join(dir, "gateway.yaml")); err != nil {
		t.Fatal(err)
	}
	fp, err := w.reload(last)
	if err != nil || fp == last {
		t.Errorf("reload after rename = %x, %v; want a new fingerprint", fp, err)
	}
	if got := len(r.snapshot()); got != n+2 {
		t.Errorf("rename caused %d Apply/Result calls, want 2", got-n)
	}
	last = fp

	// Invalid contents are reported once, not at every rescan.
	writeFile(t, filepath.Join(dir, "gateway.yaml"), "a: [\n")
	fp, err = w.reload(last)
	if err == nil || fp == last {
		t.Fatalf("reload of invalid contents = %x, %v", fp, err)
	}
	n = len(r.snapshot())
	if fp2, err := w.reload(fp); err != nil || fp2 != fp {
		t.Errorf("second reload of the same invalid contents = %v", err)
	}
	if got := len(r.snapshot()); got != n {
		t.Errorf("unchanged invalid contents reported again")
	}
}

func TestWatcherRunErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	r := new(recorder)
	err := r.watcher(missing).Run(context.Background())
	wantErrContains(t, err, missing)

	// A context already cancelled stops Run at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.watcher(t.TempDir()).Run(ctx); err != nil {
		t.Errorf("Run with a cancelled context: %v", err)
	}
	if ev := r.snapshot(); len(ev) != 0 {
		t.Errorf("events = %+v, want none", ev)
	}
}
