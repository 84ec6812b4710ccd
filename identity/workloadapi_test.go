package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// fakeAgent serves the SPIFFE Workload API's FetchX509SVID stream over gRPC
// the way a SPIRE agent does: it requires the security header, sends the
// current X.509 context at once and again after every push.
type fakeAgent struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	mu      sync.Mutex
	resp    *workload.X509SVIDResponse
	changed chan struct{} // closed and replaced by every push
}

// startAgent serves a fakeAgent on a unix socket in a temporary directory
// until the test ends, and returns it with the socket path.
func startAgent(t *testing.T) (*fakeAgent, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	agent := &fakeAgent{changed: make(chan struct{})}
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, agent)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return agent, path
}

// push makes svid, its trust domain's bundle and federated bundles the
// current X.509 context and wakes every stream.
func (a *fakeAgent) push(t *testing.T, svid *x509svid.SVID, bundle *x509bundle.Bundle, federated ...*x509bundle.Bundle) {
	t.Helper()
	chain, key, err := svid.MarshalRaw()
	if err != nil {
		t.Fatal(err)
	}
	resp := &workload.X509SVIDResponse{
		Svids: []*workload.X509SVID{{
			SpiffeId:    svid.ID.String(),
			X509Svid:    chain,
			X509SvidKey: key,
			Bundle:      concatDER(bundle.X509Authorities()),
		}},
		FederatedBundles: map[string][]byte{},
	}
	for _, b := range federated {
		resp.FederatedBundles[b.TrustDomain().IDString()] = concatDER(b.X509Authorities())
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.resp = resp
	close(a.changed)
	a.changed = make(chan struct{})
}

func concatDER(certs []*x509.Certificate) []byte {
	var der []byte
	for _, c := range certs {
		der = append(der, c.Raw...)
	}
	return der
}

// FetchX509SVID implements the Workload API stream.
func (a *fakeAgent) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	for {
		a.mu.Lock()
		resp, changed := a.resp, a.changed
		a.mu.Unlock()
		if resp != nil {
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// TestWorkloadAPISourceRotation feeds a WorkloadAPISource from a real gRPC
// Workload API server, pushes a rotated SVID, and shows the next handshake
// uses it while a connection opened before keeps working.
func TestWorkloadAPISourceRotation(t *testing.T) {
	leakcheck.Check(t)
	local := mustCA(t, "cluster.local")
	remote := mustCA(t, "remote.example")
	agent, path := startAgent(t)
	first, err := local.Issue(mustID(t, gatewayID), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agent.push(t, first, local.Bundle(), remote.Bundle())

	logger, logs := newLogRecorder()
	src, err := NewWorkloadAPISource(t.Context(), WorkloadAPIConfig{Socket: "unix://" + path, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := src.Close(); err != nil {
			t.Error(err)
		}
	})
	if n := logs.count("SPIFFE Workload API source started", "spiffe_id="+gatewayID); n != 1 {
		t.Errorf("want a start-up log line, got:\n%s", logs)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("remote.example")); err != nil {
		t.Errorf("federated bundle: %v", err)
	}

	srv := startEchoServer(t, ServerTLSConfig(src, nil))
	client := mustSource(t, local, peerID, IssueOptions{})
	before, err := dial(t, srv.addr(), ClientTLSConfig(client, nil))
	if err != nil {
		t.Fatal(err)
	}
	if res := srv.result(t); res.err != nil || res.peer.String() != peerID {
		t.Fatalf("server saw %+v", res)
	}
	if got := serverSerial(before); got.Cmp(first.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("server presented serial %x, want %x", got, first.Certificates[0].SerialNumber)
	}

	rotated, err := local.Issue(mustID(t, gatewayID), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agent.push(t, rotated, local.Bundle(), remote.Bundle())
	want := rotated.Certificates[0].SerialNumber
	waitUntil(t, "the source to serve the rotated SVID", func() bool {
		svid, err := src.GetX509SVID()
		return err == nil && svid.Certificates[0].SerialNumber.Cmp(want) == 0
	})

	after, err := dial(t, srv.addr(), ClientTLSConfig(client, nil))
	if err != nil {
		t.Fatal(err)
	}
	srv.result(t)
	if got := serverSerial(after); got.Cmp(want) != 0 {
		t.Errorf("handshake after rotation: server presented serial %x, want the rotated %x", got, want)
	}
	if err := echo(before, "after rotation"); err != nil {
		t.Errorf("connection opened before the rotation: %v", err)
	}
}

// TestWorkloadAPISourceAddress checks the accepted address forms.
func TestWorkloadAPISourceAddress(t *testing.T) {
	leakcheck.Check(t)
	ca := mustCA(t, "cluster.local")
	agent, path := startAgent(t)
	svid, err := ca.Issue(mustID(t, gatewayID), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agent.push(t, svid, ca.Bundle())

	tests := []struct {
		name   string
		socket string
		env    string
	}{
		{"unix URL", "unix://" + path, ""},
		{"bare path", path, ""},
		{"SPIFFE_ENDPOINT_SOCKET", "", "unix://" + path},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SPIFFE_ENDPOINT_SOCKET", tt.env)
			src, err := NewWorkloadAPISource(t.Context(), WorkloadAPIConfig{Socket: tt.socket})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			if src.Addr() != "unix://"+path {
				t.Errorf("Addr() = %q, want %q", src.Addr(), "unix://"+path)
			}
			got, err := src.GetX509SVID()
			if err != nil || got.ID.String() != gatewayID {
				t.Errorf("SVID %v, %v", got, err)
			}
		})
	}
}

// TestWorkloadAPISourceStartErrors checks the errors when nothing answers
// or no address is configured.
func TestWorkloadAPISourceStartErrors(t *testing.T) {
	leakcheck.Check(t)
	missing := filepath.Join(t.TempDir(), "nothing.sock")
	tests := []struct {
		name     string
		cfg      WorkloadAPIConfig
		wantErr  []string
		wantWrap error
	}{{
		name: "nothing listening",
		cfg:  WorkloadAPIConfig{Socket: "unix://" + missing, StartTimeout: 300 * time.Millisecond},
		wantErr: []string{"no SPIFFE Workload API answered on unix://" + missing + " within 300ms",
			"no such file or directory"},
		wantWrap: context.DeadlineExceeded,
	}, {
		name:    "no address",
		cfg:     WorkloadAPIConfig{},
		wantErr: []string{"--spiffe-socket", "SPIFFE_ENDPOINT_SOCKET"},
	}, {
		name:    "bad address",
		cfg:     WorkloadAPIConfig{Socket: "http://agent"},
		wantErr: []string{`SPIFFE Workload API address "http://agent"`},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
			src, err := NewWorkloadAPISource(t.Context(), tt.cfg)
			if err == nil {
				src.Close()
				t.Fatal("started without a Workload API")
			}
			t.Logf("error: %v", err)
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q\ndoes not contain %q", err, want)
				}
			}
			if tt.wantWrap != nil && !errors.Is(err, tt.wantWrap) {
				t.Errorf("error %v does not wrap %v", err, tt.wantWrap)
			}
		})
	}
}

// TestFakeAgentRequiresSecurityHeader shows that the test server enforces
// the Workload API's security header like SPIRE does.
func TestFakeAgentRequiresSecurityHeader(t *testing.T) {
	leakcheck.Check(t)
	_, path := startAgent(t)
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(t.Context(), &workload.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("without the header: %v, want InvalidArgument", err)
	}
}
