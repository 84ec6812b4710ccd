// Package identity provides the SPIFFE identity of a gateway: its X.509 SVID
// and the trust bundles it verifies peers against, and mutual-TLS
// configurations that authenticate and authorize gateway-to-gateway links
// the way Istio's ISTIO_MUTUAL does.
//
// A [Source] supplies the current SVID and bundles. Three implementations
// exist: [WorkloadAPISource] (a SPIRE agent or any SPIFFE Workload API
// server), [FileSource] (PEM files, reloaded when they change) and
// [MemorySource] (in-memory values, typically issued by a [DevCA]).
//
// [ServerTLSConfig] and [ClientTLSConfig] build tls.Config values that fetch
// the current SVID on every handshake, so a rotated SVID is used by new
// connections while established connections continue, and that verify the
// peer against the bundle of the peer's own trust domain before an
// [Authorizer] applies the configured [Policy]. Rejections are returned as
// *[RejectError], counted by [Reason] and logged.
//
// [WatchExpiry] logs a warning when the SVID nears the end of its validity;
// [Expiry] reports it for metrics.
package identity
