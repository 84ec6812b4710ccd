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
// excepted), advertises WAN:15443 for passthrough and WAN:15444 for
// tunnels, serves admin on 127.0.0.1:15446 inside its namespace and the
// mTLS gRPC API on LAN:15020. Workloads run in the test process: their
// sockets are created on an OS thread that has entered the namespace.
//
// TestMultiNetwork builds this once (about a second) and runs, in order:
// isolation, local mode, remote mode, subset routing, no plaintext on the
// WAN (tcpdump), one of B's gateways SIGKILLed and restarted under its
// name (with a long-lived connection through the other one), both of B's
// gateways killed and restarted, a wrong gossip key, an SVID of another
// CA, C's WAN link cut and restored, and every UDP packet dropped on the
// WAN links of B's gateways (nftables): tunnels from A to B fall back to
// TCP + TLS while gossip holds over TCP, a long-lived connection to C
// keeps going, and the links move back to QUIC once UDP passes again;
// last, an endpoint dies: b-echo-v1 is stopped while A's clients call B's
// echo service in local mode (without a subset the other endpoint
// answers, B's gateways eject the dead one, subset v1 is refused, and A's
// view of B's v1 drops once one of B's gateways ejects it and stays out:
// the health rule of docs/gossip.md, asserted), then restarted on the
// same address until v1 answers again.
// Each subtest undoes its fault.
// Measured times are logged as "e2e-figure:" lines (go test -v).
//
// Environment: E2E_GOSSIP_PROFILE (default "local") sets the gateways'
// --gossip-profile; E2E_LOG_LEVEL (default "info") their --log-level;
// E2E_KEEP=1 keeps the run directory (gateway logs, configs, SVIDs, the
// WAN capture). Gateway logs are printed when a test fails.
//
// Cleanup: namespaces and processes are removed at the end, on SIGINT and
// SIGTERM, and, for a run that was killed outright, by the next run (names
// whose pid no longer runs a test binary).
package e2e
