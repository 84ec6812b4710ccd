package api

import (
	"context"
	"fmt"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
	"github.com/ewgate/ewgate/discovery"
)

func watchReviews(t *testing.T, ctx context.Context, c ewgatev1.GatewayServiceClient) ewgatev1.GatewayService_WatchResolveClient {
	t.Helper()
	stream, err := c.WatchResolve(ctx, &ewgatev1.WatchResolveRequest{
		Target:      &ewgatev1.WatchResolveRequest_Sni{Sni: reviews.SNI()},
		FromNetwork: "net-c",
	})
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

func recv(t *testing.T, stream ewgatev1.GatewayService_WatchResolveClient) *ewgatev1.WatchResolveResponse {
	t.Helper()
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return resp
}

// gatewayTarget is a target whose locality carries a version, so that tests
// can tell answers apart.
func gatewayTarget(version int) discovery.ResolvedTarget {
	return discovery.ResolvedTarget{Address: "192.0.2.10:15443", Weight: 1, Network: "net-b",
		Locality: fmt.Sprintf("v%d", version), Via: discovery.ViaGateway, Gateway: "gw-b1"}
}

func TestWatchResolveSendsUpdates(t *testing.T) {
	leakcheck.Check(t)
	res := newFakeResolver()
	s := serveUnix(t, ServerConfig{Resolver: res})
	c := dial(t, s.target)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// A key no network offers yet is answered, not refused.
	stream := watchReviews(t, ctx, c)
	first := recv(t, stream)
	if first.GetFound() || len(first.GetTargets()) != 0 || first.GetSni() != reviews.SNI() {
		t.Fatalf("initial answer %v, want not found", first)
	}

	res.set(reviews, reviewsTargets...)
	got := recv(t, stream)
	wantProto(t, got, &ewgatev1.WatchResolveResponse{Sni: reviewsProto.Sni, Service: reviewsProto.Service, Found: true, Targets: reviewsProto.Targets})

	// A change notification that changes nothing sends nothing: the next
	// message is the next real change.
	res.touch()
	res.touch()
	res.set(reviews, gatewayTarget(7))
	if got := recv(t, stream); got.GetTargets()[0].GetLocality() != "v7" || len(got.GetTargets()) != 1 {
		t.Fatalf("after a no-op and a change got %v, want the change", got)
	}

	// Resolution that fails for another reason than an unknown key ends
	// the watch.
	res.mu.Lock()
	res.err = fmt.Errorf("catalog broken")
	res.mu.Unlock()
	res.touch()
	_, err := stream.Recv()
	wantStatus(t, err, codes.Internal, "")
}

// TestWatchResolveOnEveryListener watches through the unix socket and
// loopback TCP of one Server, as ewgate's --api-socket and --api-address
// do: every change reaches the watchers of both listeners. With a relay per
// listener, the two took turns receiving the Resolver's one channel, and a
// change woke only one listener's watchers.
func TestWatchResolveOnEveryListener(t *testing.T) {
	leakcheck.Check(t)
	res := newFakeResolver()
	res.set(reviews, gatewayTarget(0))
	srv := NewServer(ServerConfig{Resolver: res})
	unix := serveUnixOn(t, srv)
	tcp := serveTCP(t, srv, srv.Serve)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	listeners := map[string]string{"unix socket": unix.target, "loopback TCP": tcp}
	var streams []ewgatev1.GatewayService_WatchResolveClient
	var names []string
	for name, target := range listeners {
		c := dial(t, target)
		for range 2 {
			stream := watchReviews(t, ctx, c)
			if v := recv(t, stream).GetTargets()[0].GetLocality(); v != "v0" {
				t.Fatalf("%s: initial answer %s, want v0", name, v)
			}
			streams = append(streams, stream)
			names = append(names, name)
		}
	}
	for v := 1; v <= 5; v++ {
		res.set(reviews, gatewayTarget(v))
		want := fmt.Sprintf("v%d", v)
		for i, stream := range streams {
			got := make(chan string, 1)
			go func() {
				resp, err := stream.Recv()
				if err != nil {
					got <- err.Error()
					return
				}
				got <- resp.GetTargets()[0].GetLocality()
			}()
			if g := receive(t, fmt.Sprintf("change %d on the %s", v, names[i]), got); g != want {
				t.Fatalf("%s: got %s after change %d, want %s", names[i], g, v, want)
			}
		}
	}
}

func TestWatchResolveRejectsBadQuery(t *testing.T) {
	leakcheck.Check(t)
	s := serveUnix(t, ServerConfig{Resolver: newFakeResolver(), Network: "net-a"})
	c := dial(t, s.target)
	stream, err := c.WatchResolve(context.Background(), &ewgatev1.WatchResolveRequest{
		Target: &ewgatev1.WatchResolveRequest_Sni{Sni: "outbound_.0_._.reviews"},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantStatus(t, err, codes.InvalidArgument, "sni")
	if n := s.srv.Watchers(); n != 0 {
		t.Errorf("%d watchers after a refused watch", n)
	}
}

// TestWatchResolveCoalesces stops reading a watch while the answer changes
// 100 times: when it reads again, it gets a few answers the transport had
// buffered and then the latest, not 100.
func TestWatchResolveCoalesces(t *testing.T) {
	leakcheck.Check(t)
	res := newFakeResolver()
	s := serveUnix(t, ServerConfig{Resolver: res})

	// Answers of about 60 KB, and HTTP/2 windows fixed at 64 KB (which
	// turns off dynamic window growth), so that the transport buffers only
	// a few answers and Send blocks behind the reader.
	big := func(version int) []discovery.ResolvedTarget {
		ts := make([]discovery.ResolvedTarget, 1000)
		for i := range ts {
			ts[i] = gatewayTarget(version)
			ts[i].Address = fmt.Sprintf("gw-%04d.net-b.example:15443", i)
		}
		return ts
	}
	conn, err := grpc.NewClient(s.target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	res.set(reviews, big(0)...)
	stream := watchReviews(t, ctx, ewgatev1.NewGatewayServiceClient(conn))
	if v := recv(t, stream).GetTargets()[0].GetLocality(); v != "v0" {
		t.Fatalf("initial answer is %s, want v0", v)
	}

	const changes = 100
	for v := 1; v <= changes; v++ {
		res.set(reviews, big(v)...)
	}
	var seen []string
	for {
		v := recv(t, stream).GetTargets()[0].GetLocality()
		seen = append(seen, v)
		if v == fmt.Sprintf("v%d", changes) {
			break
		}
	}
	t.Logf("after %d changes the reader got %d answers: %v", changes, len(seen), seen)
	if len(seen) > 10 {
		t.Errorf("reader got %d answers for %d changes, want the few buffered and the latest", len(seen), changes)
	}

	// Nothing stale is queued behind the latest answer.
	res.set(reviews, big(changes+1)...)
	if v := recv(t, stream).GetTargets()[0].GetLocality(); v != fmt.Sprintf("v%d", changes+1) {
		t.Errorf("next answer is %s, want v%d", v, changes+1)
	}
}

func TestWatchResolveEndsOnClientCancel(t *testing.T) {
	leakcheck.Check(t)
	res := newFakeResolver()
	res.set(reviews, reviewsTargets...)
	s := serveUnix(t, ServerConfig{Resolver: res})
	c := dial(t, s.target)

	ctx, cancel := context.WithCancel(context.Background())
	streams := make([]ewgatev1.GatewayService_WatchResolveClient, 5)
	for i := range streams {
		streams[i] = watchReviews(t, ctx, c)
		recv(t, streams[i])
	}
	if n := s.srv.Watchers(); n != len(streams) {
		t.Fatalf("%d watchers, want %d", n, len(streams))
	}
	cancel()
	for _, stream := range streams {
		if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
			t.Errorf("Recv after cancel: %v, want Canceled", err)
		}
	}
	await.True(t, waitTimeout, "watchers to end", func() bool { return s.srv.Watchers() == 0 })
	// checkGoroutines verifies that nothing else is left once the server
	// and the connection are closed.
}

func TestWatchResolveEndsOnServerStop(t *testing.T) {
	leakcheck.Check(t)
	res := newFakeResolver()
	res.set(reviews, reviewsTargets...)
	// A drain timeout longer than the test: watches must end by
	// themselves, not be cut by it.
	srv := NewServer(ServerConfig{Resolver: res, DrainTimeout: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	lisCtx, stop := context.WithCancel(ctx)
	go func() { done <- srv.Serve(lisCtx, lis) }()
	c := dial(t, lis.Addr().String())
	stream := watchReviews(t, ctx, c)
	recv(t, stream)

	stop()
	_, err = stream.Recv()
	wantStatus(t, err, codes.Unavailable, "")
	if err := receive(t, "Serve to return", done); err != nil {
		t.Fatal(err)
	}
}

func TestWatchResolveLimit(t *testing.T) {
	leakcheck.Check(t)
	res := newFakeResolver()
	res.set(reviews, reviewsTargets...)
	s := serveUnix(t, ServerConfig{Resolver: res, MaxWatchers: 1})
	c := dial(t, s.target)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	recv(t, watchReviews(t, ctx, c))
	_, err := watchReviews(t, ctx, c).Recv()
	wantStatus(t, err, codes.ResourceExhausted, "")
}
