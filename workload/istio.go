package workload

import (
	"fmt"
	"net"
	"strings"
)

// EchoHost is the service host IstioConfig gives the echo servers.
const EchoHost = "echo.demo.svc.cluster.local"

// EchoPort is the service port IstioConfig gives the echo servers.
const EchoPort = 9080

// EastWestGateway returns the YAML of Istio's cross-network-gateway (as
// in Istio's samples/multicluster/expose-services.yaml): a Gateway in
// istio-system selecting istio=eastwestgateway with an AUTO_PASSTHROUGH
// server for *.local on port.
func EastWestGateway(port int) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: cross-network-gateway, namespace: istio-system}
spec:
  selector: {istio: eastwestgateway}
  servers:
  - port: {number: %d, name: tls, protocol: TLS}
    tls: {mode: AUTO_PASSTHROUGH}
    hosts: ["*.local"]
`, port)
}

// IstioConfig returns the Istio YAML of a network serving echo servers
// through an east-west gateway: a Gateway selecting istio=eastwestgateway
// with an AUTO_PASSTHROUGH server for *.local on gatewayPort, the
// ServiceEntry EchoHost:EchoPort with one endpoint per server in network
// (labelled version=<name without "echo-">, tlsMode istio), and a
// DestinationRule with subsets v1 and v2.
func IstioConfig(network string, gatewayPort int, echoes ...*EchoServer) string {
	var eps strings.Builder
	for _, e := range echoes {
		host, port, _ := net.SplitHostPort(e.Addr())
		fmt.Fprintf(&eps, "  - address: %s\n    ports: {tcp-echo: %s}\n    network: %s\n    serviceAccount: %s\n    labels: {app: echo, version: %s, security.istio.io/tlsMode: istio}\n",
			host, port, network, e.Name(), strings.TrimPrefix(e.Name(), "echo-"))
	}
	return EastWestGateway(gatewayPort) + fmt.Sprintf(`---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: demo}
spec:
  hosts: [%s]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %d, name: tcp-echo, protocol: TCP}]
  endpoints:
%s---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: demo}
spec:
  host: %s
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`, EchoHost, EchoPort, eps.String(), EchoHost)
}
