package admin

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

func TestStatusHandler(t *testing.T) {
	var ready atomic.Bool
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, ln := NewServer(StatusHandler(ready.Load), ln)
	go srv.Serve(ln)
	defer srv.Close()
	base := "http://" + ln.Addr().String()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(StatusPath); code != 503 || body != "not ready\n" {
		t.Errorf("before ready: %d %q", code, body)
	}
	ready.Store(true)
	if code, body := get(StatusPath); code != 200 || body != "ready\n" {
		t.Errorf("ready: %d %q", code, body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	// The exposed port serves nothing of the admin server.
	for _, p := range []string{"/readyz", "/metrics", "/debug/config", "/debug/pprof/", "/"} {
		if code, _ := get(p); code != 404 {
			t.Errorf("%s: %d, want 404", p, code)
		}
	}
	if code, _ := get(StatusPath + "/x"); code != 404 {
		t.Errorf("sub-path served: %d", code)
	}
	rec := httptest.NewRecorder()
	StatusHandler(nil).ServeHTTP(rec, httptest.NewRequest("GET", StatusPath, nil))
	if rec.Code != 503 {
		t.Errorf("nil ready func: %d, want 503", rec.Code)
	}
}
