// Package sni reads TLS ClientHellos without terminating TLS and encodes and
// decodes Istio's SNI and cluster names.
//
// A gateway in Istio's AUTO_PASSTHROUGH mode routes a connection on the server
// name of its ClientHello alone: it never holds a key that could read the
// session. [Peeker] reads just enough of a connection to see the whole
// ClientHello, however the client split it into TCP segments and TLS records,
// and returns the bytes it read so that they can be replayed to the chosen
// upstream unchanged. [ParseName] turns a server name such as
//
//	outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local
//
// into a [Key] (service host, service port, subset) and refuses every name
// that could make the gateway dial an address a client chose. Its rules for
// the parts of a key, [ParseHost] and [CheckSubset], are the rules of
// service hosts and subset names wherever they are defined, so that every
// service the gateway accepts is one a client can name.
//
// Errors wrap one of the package's sentinel errors; [Reason] maps an error to
// a short, stable label for metrics.
package sni
