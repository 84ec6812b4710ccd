package api

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"

	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
)

// Dial connects to a gateway's API and checks, within ctx, that it is up:
// its health service must report the API SERVING. target is
// "unix:///path/to/socket" (or an absolute path) or "host:port". With
// tlsCfg nil the connection is plaintext, which Dial allows only to a unix
// socket or a loopback address; otherwise tlsCfg (from
// identity.ClientTLSConfig, for SPIFFE mTLS) secures it. Close the
// returned Closer when done with the client.
func Dial(ctx context.Context, target string, tlsCfg *tls.Config) (ewgatev1.GatewayServiceClient, io.Closer, error) {
	if strings.HasPrefix(target, "/") {
		target = "unix://" + target
	}
	creds := insecure.NewCredentials()
	if tlsCfg != nil {
		creds = credentials.NewTLS(tlsCfg)
	} else if err := checkLocalTarget(target); err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, nil, fmt.Errorf("api: dial %s: %w", target, err)
	}
	resp, err := healthgrpc.NewHealthClient(conn).Check(ctx,
		&healthgrpc.HealthCheckRequest{Service: ewgatev1.GatewayService_ServiceDesc.ServiceName})
	if err == nil && resp.GetStatus() != healthgrpc.HealthCheckResponse_SERVING {
		err = fmt.Errorf("API is %s", resp.GetStatus())
	}
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("api: dial %s: %w", target, err)
	}
	return ewgatev1.NewGatewayServiceClient(conn), conn, nil
}

// checkLocalTarget refuses plaintext to anything but a unix socket or a
// loopback host.
func checkLocalTarget(target string) error {
	if strings.HasPrefix(target, "unix:") || strings.HasPrefix(target, "unix-abstract:") {
		return nil
	}
	host, _, err := net.SplitHostPort(strings.TrimPrefix(target, "dns:///"))
	if err != nil {
		return fmt.Errorf("api: dial %s: want unix:///path or host:port: %w", target, err)
	}
	if ip, err := netip.ParseAddr(host); (err == nil && ip.IsLoopback()) || host == "localhost" {
		return nil
	}
	return fmt.Errorf("api: dial %s: plaintext only to a unix socket or loopback; give a TLS configuration", target)
}
