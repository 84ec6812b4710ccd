// Package e2e holds ewgate's multi-network end-to-end tests: real
// "ewgate run" processes in real Linux network namespaces, real TLS and
// QUIC, real packet captures. Run them as root (`go test ./e2e`); they skip
// with a message without root or without ip, nft and tcpdump.
//
// Topology (every namespace is named ewe2e-<pid>-<name>; bridges and veths
// live only inside the suite's namespaces, none in the root namespace):
//
//	            WAN 192.0.2.0/24 (bridge br0 in namespace "wan")
//	  +-----------+-----------+-----------+-----------+----------+-------------+
//	  |.1         |.2         |.3         |.4         |.5        |.6           |.100
//	gw-a        gw-b1       gw-b2       gw-c      gw-x-badkey gw-x-otherca    a-rc
//	  |.1         |.1         |.2         |.1     (wrong gossip  (SVID of       |.11
//	LAN A       LAN B 10.2.0.0/24       LAN C       key)      another CA)     LAN A
//	10.1.0.0/24   |                   10.3.0.0/24
//	  |.10        |.10                    |.10
//	a-wl        b-wl                    c-wl
//	(client)    b-echo-v1 :9080         c-echo-v1 :9080
//	            b-echo-v2 :9081
//
// Each LAN is a bridge in its own namespace (lan-a, lan-b, lan-c). Only
// gateways (and a-rc) are attached to the WAN; gateways run with
// net.ipv4.ip_forward=0, so a workload's default route to its gateway
// leads nowhere else. a-wl is network A's ordinary pod: it reaches only
// its own gateway ("local" mode, tunnelled over QUIC). a-rc is a pod of
// network A that can also reach other networks' gateways, as Istio's
// "remote" mode assumes: it resolves through A's gateway API and dials B's
// gateway on the WAN itself.
//
// Every gateway has its own SVID from one in-process dev CA (gw-x-otherca
// excepted), gossips on its WAN address with a shared keyring (gw-x-badkey
// excepted), advertises WAN:15443 for passthrough and WAN:15008 for
// tunnels, serves admin on 127.0.0.1:15000 inside its namespace and the
// mTLS gRPC API on LAN:15020. Workloads run in the test process: their
// sockets are created on an OS thread that has entered the namespace.
package e2e
