package admin

import (
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"
)

// Limits of the server [NewServer] returns.
const (
	// MaxConnections caps the admin connections open at once; more wait
	// in the listen backlog. Scrapers, probes and an operator need a few.
	MaxConnections = 64
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout = 10 * time.Second
	// ReadTimeout bounds reading a whole request (they have no body).
	ReadTimeout = 30 * time.Second
	// WriteTimeout bounds writing a response; a CPU profile or trace must
	// ask for fewer seconds than this.
	WriteTimeout = time.Minute
	// IdleTimeout closes keep-alive connections idle this long.
	IdleTimeout = 2 * time.Minute
)

// NewServer returns an http.Server for h with the timeouts above, and ln
// wrapped to hold at most MaxConnections connections at once, so that a
// client that opens connections and stalls cannot exhaust the gateway's
// file descriptors or goroutines through this port.
func NewServer(h http.Handler, ln net.Listener) (*http.Server, net.Listener) {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
	}, netutil.LimitListener(ln, MaxConnections)
}
