package api

import (
	"context"
	"errors"
	"github.com/ewgate/ewgate/internal/await"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/sni"
)

// waitTimeout bounds every wait of these tests; reaching it is a failure.
const waitTimeout = 10 * time.Second

// receive waits for a value on c, failing the test after waitTimeout.
func receive[T any](t *testing.T, what string, c <-chan T) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// fakeResolver is a Resolver test double: a table of answers the test
// edits, signalling Changed on every edit.
type fakeResolver struct {
	changed chan struct{}

	mu      sync.Mutex
	answers map[sni.Key][]discovery.ResolvedTarget
	err     error    // returned by every Resolve when set
	froms   []string // fromNetwork of every call
}

func newFakeResolver() *fakeResolver {
	return &fakeResolver{changed: make(chan struct{}, 1), answers: make(map[sni.Key][]discovery.ResolvedTarget)}
}

func (f *fakeResolver) Resolve(key sni.Key, from string) (*discovery.Resolution, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.froms = append(f.froms, from)
	if f.err != nil {
		return nil, f.err
	}
	ts, ok := f.answers[key]
	if !ok {
		return nil, &discovery.RouteError{Key: key, Reason: discovery.UnknownService}
	}
	return &discovery.Resolution{Key: key, SNI: key.SNI(), Targets: ts}, nil
}

func (f *fakeResolver) Changed() <-chan struct{} { return f.changed }

// set replaces the answer for key and signals a change.
func (f *fakeResolver) set(key sni.Key, ts ...discovery.ResolvedTarget) {
	f.mu.Lock()
	f.answers[key] = ts
	f.mu.Unlock()
	f.touch()
}

// touch signals a change that changes nothing.
func (f *fakeResolver) touch() {
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

func (f *fakeResolver) lastFrom() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.froms[len(f.froms)-1]
}

// fakeMembership is a Membership test double.
type fakeMembership struct {
	members  []Member
	networks []Network
	catalog  []CatalogEntry
}

func (f *fakeMembership) Members() []Member       { return append([]Member(nil), f.members...) }
func (f *fakeMembership) Networks() []Network     { return append([]Network(nil), f.networks...) }
func (f *fakeMembership) Catalog() []CatalogEntry { return append([]CatalogEntry(nil), f.catalog...) }

// fakeClock is a Clock that moves only when told to.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) At(t time.Time) (<-chan time.Time, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if !c.now.Before(t) {
		ch <- c.now
		return ch, func() {}
	}
	c.timers = append(c.timers, fakeTimer{at: t, c: ch})
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, tm := range c.timers {
			if tm.c == ch {
				c.timers = append(c.timers[:i], c.timers[i+1:]...)
				return
			}
		}
	}
}

// advance moves the clock forward by d, firing the timers due.
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, tm := range c.timers {
		if c.now.Before(tm.at) {
			kept = append(kept, tm)
			continue
		}
		tm.c <- c.now
	}
	c.timers = kept
}

// served is a Server running on a listener for the duration of a test.
type served struct {
	srv    *Server
	target string // for Dial
}

// serveUnix runs srv.ServeUnix on a socket in a temporary directory until
// the test ends, and checks that it stops cleanly.
func serveUnix(t *testing.T, cfg ServerConfig) served {
	t.Helper()
	return serveUnixOn(t, NewServer(cfg))
}

// serveUnixOn is serveUnix for a Server the test made, which may serve
// other listeners too.
func serveUnixOn(t *testing.T, srv *Server) served {
	t.Helper()
	path := filepath.Join(t.TempDir(), "api.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeUnix(ctx, path) }()
	t.Cleanup(func() {
		cancel()
		if err := receive(t, "ServeUnix to return", done); err != nil {
			t.Errorf("ServeUnix: %v", err)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s left behind: %v", path, err)
		}
	})
	// The socket accepts connections once the file has its final mode.
	await.True(t, waitTimeout, "the socket", func() bool {
		fi, err := os.Stat(path)
		return err == nil && fi.Mode().Perm() == DefaultSocketMode
	})
	return served{srv: srv, target: "unix://" + path}
}

// serveTCP runs serve (srv.Serve, or srv.ServeTLS in a closure) on a new
// loopback listener until the test ends, and returns the listener's
// address.
func serveTCP(t *testing.T, srv *Server, serve func(context.Context, net.Listener) error) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := receive(t, "Serve to return", done); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

// dial connects to target, closing the connection when the test ends.
func dial(t *testing.T, target string) ewgatev1.GatewayServiceClient {
	t.Helper()
	c, closer, err := Dial(context.Background(), target, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closer.Close() })
	return c
}

// wantStatus fails the test unless err has code and, if field is not
// empty, a BadRequest detail naming field.
func wantStatus(t *testing.T, err error, code codes.Code, field string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code {
		t.Fatalf("got %v, want code %v", err, code)
	}
	if field == "" {
		return
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetField() == field {
					return
				}
			}
		}
	}
	t.Fatalf("got %v (details %v), want a BadRequest naming field %q", err, st.Details(), field)
}
