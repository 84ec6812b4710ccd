package ratelog

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// timeless returns a text logger to w whose lines carry no time, so
// that tests can compare them.
func timeless(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}}))
}

// testClock is a clock the test moves.
type testClock struct{ t time.Time }

func (c *testClock) now() time.Time { return c.t }

func TestWarn(t *testing.T) {
	type step struct {
		advance time.Duration // before the call
		key     string
		want    string // the line logged, "" for none
	}
	tests := []struct {
		name     string
		interval time.Duration
		steps    []step
	}{
		{"first line of a key is logged", 0, []step{
			{0, "a", `level=WARN msg=m key=a`},
		}},
		{"within the interval: counted, then reported", 0, []step{
			{0, "a", `level=WARN msg=m key=a`},
			{100 * time.Millisecond, "a", ""},
			{100 * time.Millisecond, "a", ""},
			{800 * time.Millisecond, "a", `level=WARN msg=m key=a suppressed_since_last=2`},
			{time.Second, "a", `level=WARN msg=m key=a`},
		}},
		{"keys are independent", 0, []step{
			{0, "a", `level=WARN msg=m key=a`},
			{0, "b", `level=WARN msg=m key=b`},
			{0, "a", ""},
		}},
		{"interval", 10 * time.Second, []step{
			{0, "a", `level=WARN msg=m key=a`},
			{9 * time.Second, "a", ""},
			{time.Second, "a", `level=WARN msg=m key=a suppressed_since_last=1`},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &testClock{t: time.Unix(1e9, 0)}
			l := &Logger{Interval: tt.interval, now: clock.now}
			for i, s := range tt.steps {
				clock.t = clock.t.Add(s.advance)
				var buf bytes.Buffer
				log := timeless(&buf)
				l.Warn(log, s.key, "m", "key", s.key)
				if got := strings.TrimSpace(buf.String()); got != s.want {
					t.Errorf("step %d: logged %q, want %q", i, got, s.want)
				}
			}
		})
	}
}

// A logger that does not enable warnings gets nothing, and nothing is
// counted against a logger that does.
func TestWarnDisabled(t *testing.T) {
	var l Logger
	var buf bytes.Buffer
	quiet := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError}))
	l.Warn(quiet, "a", "m")
	l.Warn(quiet, "a", "m")
	if buf.Len() != 0 {
		t.Errorf("logged below its level: %s", buf.String())
	}
	loud := slog.New(slog.NewTextHandler(&buf, nil))
	l.Warn(loud, "a", "m")
	if out := buf.String(); !strings.Contains(out, "msg=m") || strings.Contains(out, SuppressedKey) {
		t.Errorf("logged %q, want the line without a count", out)
	}
}

// Concurrent lines of one key within an interval: exactly one is logged.
func TestWarnConcurrent(t *testing.T) {
	l := &Logger{Interval: time.Hour}
	var buf bytes.Buffer
	// The handler serializes its writes (slog.TextHandler.Handle).
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				l.Warn(log, "a", "m")
			}
		}()
	}
	wg.Wait()
	if n := strings.Count(buf.String(), "msg=m"); n != 1 {
		t.Errorf("%d lines logged, want 1", n)
	}
}

// WarnFunc builds a line's attributes only for a line it logs, and logs
// them as Warn would.
func TestWarnFunc(t *testing.T) {
	l := &Logger{Interval: time.Hour}
	var buf bytes.Buffer
	log := timeless(&buf)
	built := 0
	args := func() []any { built++; return []any{"peer", "p"} }
	for range 3 {
		l.WarnFunc(log, "a", "m", args)
	}
	if got, want := strings.TrimSpace(buf.String()), `level=WARN msg=m peer=p`; got != want || built != 1 {
		t.Errorf("logged %q, attributes built %d times; want %q, once", got, built, want)
	}
	quiet := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError}))
	l.WarnFunc(quiet, "b", "m", args)
	if built != 1 {
		t.Errorf("attributes built for a logger that does not enable warnings")
	}
}
