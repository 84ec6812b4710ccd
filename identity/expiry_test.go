package identity

import (
	"context"
	"errors"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"testing"
	"time"
)

// TestExpiryWarner checks when warnings are logged, with fixed clocks.
func TestExpiryWarner(t *testing.T) {
	ca := mustCA(t, "cluster.local")
	start := time.Now().Truncate(time.Second)
	src := mustSource(t, ca, gatewayID, IssueOptions{NotBefore: start, TTL: 3 * time.Hour})

	tests := []struct {
		name      string
		threshold time.Duration
		now       time.Time
		want      string // the log line expected, or "" for none
	}{
		{"fresh", 0, start.Add(time.Hour), ""},
		{"under a third of the lifetime", 0, start.Add(2*time.Hour + time.Minute), "WARN SVID expires soon"},
		{"over an explicit threshold", 30 * time.Minute, start.Add(2 * time.Hour), ""},
		{"under an explicit threshold", 30 * time.Minute, start.Add(2*time.Hour + 31*time.Minute), "WARN SVID expires soon"},
		{"expired", 0, start.Add(4 * time.Hour), "ERROR SVID has expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logger, logs := newLogRecorder()
			var w expiryWarner
			for range 3 { // repeated checks log once per SVID
				w.check(logger, src, tt.threshold, tt.now)
			}
			want := 0
			if tt.want != "" {
				want = 1
			}
			if n := logs.count(tt.want, "spiffe_id="+gatewayID); tt.want != "" && n != 1 || tt.want == "" && logs.String() != "" {
				t.Fatalf("want %d line(s) %q, got:\n%s", want, tt.want, logs)
			}
		})
	}

	t.Run("rotated SVID warns again", func(t *testing.T) {
		logger, logs := newLogRecorder()
		var w expiryWarner
		now := start.Add(2*time.Hour + time.Minute)
		w.check(logger, src, 0, now)
		rotated, err := ca.Issue(mustID(t, gatewayID), IssueOptions{NotBefore: start, TTL: 3 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		other := NewMemorySource(rotated, ca.Bundle())
		w.check(logger, other, 0, now)
		if n := logs.count("WARN SVID expires soon"); n != 2 {
			t.Fatalf("want a warning per SVID, got:\n%s", logs)
		}
	})
}

// TestWatchExpiry runs the watcher on a nearly expired SVID until its
// context is cancelled.
func TestWatchExpiry(t *testing.T) {
	leakcheck.Check(t)
	ca := mustCA(t, "cluster.local")
	src := mustSource(t, ca, gatewayID, IssueOptions{NotBefore: time.Now().Add(-50 * time.Minute), TTL: time.Hour})
	expiry, err := Expiry(src)
	if err != nil {
		t.Fatal(err)
	}
	svid, _ := src.GetX509SVID()
	if !expiry.Equal(svid.Certificates[0].NotAfter) {
		t.Fatalf("Expiry %s, want %s", expiry, svid.Certificates[0].NotAfter)
	}

	logger, logs := newLogRecorder()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- WatchExpiry(ctx, src, ExpiryConfig{Logger: logger}) }()
	waitUntil(t, "the expiry warning", func() bool { return logs.count("WARN SVID expires soon", "spiffe_id="+gatewayID) == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("WatchExpiry returned %v, want context.Canceled", err)
	}
}
