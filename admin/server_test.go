package admin

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/conncount"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"github.com/ewgate/ewgate/metrics"
)

// TestPprofOff: without Config.Pprof, no profile is served.
func TestPprofOff(t *testing.T) {
	h := Handler(Config{Metrics: new(metrics.Registry)})
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/profile", "/debug/pprof/cmdline"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != http.StatusNotFound {
			t.Errorf("GET %s without Pprof: %d, want 404", path, rec.Code)
		}
	}
}

// TestServerConnectionCap: the server never holds more than
// MaxConnections connections; one over the cap is served once another
// closes.
func TestServerConnectionCap(t *testing.T) {
	leakcheck.Check(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Counted below the cap, where a connection is released before the
	// cap lets the next one in: the server's ConnState hooks run after
	// that and would race.
	cl := &conncount.Listener{Listener: ln}
	srv, lim := NewServer(Handler(Config{Metrics: new(metrics.Registry)}), cl)
	if srv.ReadHeaderTimeout == 0 || srv.ReadTimeout == 0 || srv.WriteTimeout == 0 || srv.IdleTimeout == 0 {
		t.Fatalf("server without timeouts: %+v", srv)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lim) }()
	defer func() {
		srv.Close()
		<-served
	}()

	// Fill the cap with connections that send half a request and stall.
	held := make([]net.Conn, MaxConnections)
	for i := range held {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /healthz HTTP/1.1\r\n")
		held[i] = c
	}
	await.True(t, 10*time.Second, "the stalled connections to be accepted", func() bool {
		return cl.Open() == MaxConnections
	})
	extra, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	io.WriteString(extra, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	held[0].Close()
	resp, err := http.ReadResponse(bufio.NewReader(extra), nil)
	if err != nil {
		t.Fatalf("the connection over the cap, once one closed: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if most := cl.Most(); most > MaxConnections {
		t.Fatalf("%d connections open at once, cap %d", most, MaxConnections)
	}
}
