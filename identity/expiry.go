package identity

import (
	"context"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// DefaultExpiryCheckInterval is how often [WatchExpiry] checks the SVID when
// ExpiryConfig.Interval is zero.
const DefaultExpiryCheckInterval = time.Minute

// ExpiryConfig configures [WatchExpiry].
type ExpiryConfig struct {
	// Threshold is the remaining validity under which a warning is logged.
	// Zero means one third of the SVID's total lifetime (SPIRE rotates at
	// one half, so a warning means rotation is overdue).
	Threshold time.Duration
	// Interval is the time between checks. Zero means
	// DefaultExpiryCheckInterval.
	Interval time.Duration
	// Logger receives the warnings. Nil discards them.
	Logger *slog.Logger
}

// WatchExpiry checks src's SVID at once and then every cfg.Interval, and
// logs a warning when its remaining validity falls under the threshold and
// an error when it has expired; each at most once per SVID (by serial
// number), so a rotated SVID starts afresh. It blocks until ctx is done and
// returns ctx.Err(); run it in a goroutine bound to the component's context.
func WatchExpiry(ctx context.Context, src x509svid.Source, cfg ExpiryConfig) error {
	interval := cfg.Interval
	if interval <= 0 {
		interval = DefaultExpiryCheckInterval
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var w expiryWarner
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		w.check(log, src, cfg.Threshold, time.Now())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}

// expiryWarner remembers which warnings it already gave.
type expiryWarner struct {
	warned  string // serial of the SVID last warned about
	expired string // serial of the SVID last reported expired
	failing bool   // the source is failing; logged once until it recovers
}

func (w *expiryWarner) check(log *slog.Logger, src x509svid.Source, threshold time.Duration, now time.Time) {
	svid, err := src.GetX509SVID()
	if err != nil || len(svid.Certificates) == 0 {
		if !w.failing {
			log.Error("cannot check SVID expiry", "err", err)
		}
		w.failing = true
		return
	}
	w.failing = false
	leaf := svid.Certificates[0]
	serial := leaf.SerialNumber.Text(16)
	remaining := leaf.NotAfter.Sub(now)
	if threshold <= 0 {
		threshold = leaf.NotAfter.Sub(leaf.NotBefore) / 3
	}
	attrs := []any{"spiffe_id", svid.ID.String(), "serial", serial, "expires", leaf.NotAfter,
		"remaining", remaining.Round(time.Second).String()}
	switch {
	case remaining <= 0:
		if w.expired != serial {
			w.expired = serial
			log.Error("SVID has expired; peers reject this gateway until it is renewed", attrs...)
		}
	case remaining < threshold:
		if w.warned != serial {
			w.warned = serial
			log.Warn("SVID expires soon and has not been rotated", append(attrs, "threshold", threshold.String())...)
		}
	}
}
