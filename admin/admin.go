// Package admin serves a gateway's operator endpoints over HTTP: health,
// readiness, Prometheus metrics, JSON debug views and pprof.
package admin

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/pprof"

	"github.com/ewgate/ewgate/metrics"
)

// Config says what the admin server exposes.
type Config struct {
	// Metrics is written at /metrics.
	Metrics *metrics.Registry
	// Ready backs /readyz: 200 when it returns nil, else 503 with the
	// error's text, which should say what to do. Nil Ready: never ready.
	Ready func() error
	// Detail, if set, adds lines to the /readyz body after the verdict:
	// state worth reading that does not decide readiness, such as a
	// source serving its last known state.
	Detail func() []string
	// Debug maps names to JSON views served at /debug/<name>; each
	// function is called per request.
	Debug map[string]func() any
	// Pprof serves net/http/pprof under /debug/pprof/. Off by default:
	// profiles cost CPU on demand and reveal memory contents, such as
	// addresses the catalog holds.
	Pprof bool
}

// Handler returns the admin HTTP handler.
func Handler(cfg Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		var detail []string
		if cfg.Detail != nil {
			detail = cfg.Detail()
		}
		body := "ready\n"
		err := errors.New("no readiness check")
		if cfg.Ready != nil {
			err = cfg.Ready()
		}
		if err != nil {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(http.StatusServiceUnavailable)
			body = "not ready: " + err.Error() + "\n"
		}
		for _, d := range detail {
			body += d + "\n"
		}
		w.Write([]byte(body))
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", metrics.ContentType)
		cfg.Metrics.WriteTo(w)
	})
	for name, view := range cfg.Debug {
		mux.HandleFunc("GET /debug/"+name, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			enc.Encode(view())
		})
	}
	if cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}
