package admin

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ewgate/ewgate/metrics"
)

func TestHandler(t *testing.T) {
	var reg metrics.Registry
	reg.Counter("ewgate_test_total", "Test.").Add(7)
	var ready atomic.Bool
	srv := httptest.NewServer(Handler(Config{
		Metrics: &reg,
		Ready: func() error {
			if !ready.Load() {
				return errors.New("config not loaded")
			}
			return nil
		},
		Debug: map[string]func() any{"config": func() any { return map[string]int{"listeners": 2} }},
		Pprof: true,
	}))
	defer srv.Close()
	get := func(path string) (int, string, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	tests := []struct {
		path, body, ctype string
		code              int
		before            func()
	}{
		{path: "/healthz", code: 200, body: "ok"},
		{path: "/readyz", code: 503, body: "not ready: config not loaded"},
		{path: "/readyz", code: 200, body: "ready", before: func() { ready.Store(true) }},
		{path: "/metrics", code: 200, body: "ewgate_test_total 7", ctype: "text/plain; version=0.0.4"},
		{path: "/debug/config", code: 200, body: `"listeners": 2`, ctype: "application/json"},
		{path: "/debug/pprof/", code: 200, body: "goroutine"},
		{path: "/debug/nothing", code: 404},
	}
	for _, tt := range tests {
		if tt.before != nil {
			tt.before()
		}
		code, ctype, body := get(tt.path)
		if code != tt.code || !strings.Contains(body, tt.body) || !strings.HasPrefix(ctype, tt.ctype) {
			t.Errorf("GET %s = %d %q %q; want %d, body with %q, type %q", tt.path, code, ctype, body, tt.code, tt.body, tt.ctype)
		}
	}
}
