// Package tunnel carries TCP connections between gateways of different
// networks over QUIC, authenticated both ways with SPIFFE mTLS.
//
// Each gateway runs one [Endpoint]: one UDP socket (one quic.Transport)
// that accepts tunnel links from peer gateways and dials links to them,
// with ALPN [ALPN]. There is one QUIC connection per peer address, shared
// by every forwarded connection to that peer; each forwarded TCP connection
// is one bidirectional QUIC stream, a [Stream], which behaves like a
// net.Conn with TCP half-close and resets.
//
// Every stream starts with a [Header] naming the routing key the client
// asked for. The accepting Endpoint reads it and passes it, with the
// stream, to its [Handler]; the stream's PeerID is the dialing gateway's
// verified SPIFFE ID.
//
// A link is authorized on both sides: the peer's certificate by an
// identity.Authorizer during the TLS handshake, then, with
// [Config.Members], its binding to one gossip member. The dialer checks
// that a live member announcing the dialed address announces the SPIFFE
// ID the peer presented ([ErrWrongPeer] otherwise) and sends a hello
// naming its own member ([Config.Name]); the accepting side admits the
// link only if that live member announces exactly the ID the dialer
// presented, and within [Config.MaxLinksPerPeer]. Because a TLS 1.3
// client finishes its handshake before the server has checked the
// client's certificate, the accepting side then sends a verdict (ready or
// refused), and the dialer waits for it before it uses a new link. A
// refused gateway therefore gets a clear error wrapping [ErrRejected]
// from its first [Endpoint.Dial] rather than a stream that fails later.
// The hello travels with the dialer's TLS Finished, so this costs one
// extra half round trip per link, none per stream. The link setup is
// described in setup.go.
//
// Inbound links are bounded before they prove anything
// ([Config.MaxHandshakes]) and after ([Config.MaxLinksPerPeer],
// [Config.MaxIncomingStreams], [Config.MaxTCPLinkMemory]); accept errors
// are retried after a backoff.
//
// Where UDP is blocked, links run over TCP + TLS 1.3 on the same port
// number instead, with the same certificates, ALPN and stream header;
// yamux multiplexes the streams and a status byte after the handshake
// plays the part of the ready signal. [Config.Transport] picks QUIC, TCP,
// or (the default) auto: QUIC first, TCP when QUIC has not connected
// within [Config.FallbackAfter], and back to QUIC once a background probe
// every [Config.QUICRetryInterval] succeeds. A link that moves keeps its
// open streams on the old transport until they end.
package tunnel
