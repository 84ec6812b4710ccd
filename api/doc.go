// Package api serves ewgate's gRPC API (package ewgate.v1, generated into
// github.com/ewgate/ewgate/api/ewgate/v1): network-aware resolution, with a
// coalescing watch, membership and network listings, and leased endpoint
// registration, plus the standard gRPC health and reflection services.
//
// A [Server] implements the API over three small interfaces, [Resolver],
// [Membership] and [Registry], that the binary wires to the catalog and
// gossip. [Leases] is the in-memory Registry: registrations with a lease,
// swept when they expire. [Server.ServeUnix] and [Server.Serve] serve
// plaintext on a unix socket or loopback; [Server.ServeTLS] serves SPIFFE
// mTLS (a configuration from identity.ServerTLSConfig) to remote callers.
// [Dial] is the client side, for "ewgate ctl".
//
// The generated code is committed; regenerate it after editing the .proto
// with generate.sh (see there) or go generate.
package api

//go:generate sh generate.sh
