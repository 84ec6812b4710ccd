package sni

import "errors"

// Errors returned by [Peeker.Peek], [ParseClientHello] and [ParseName]. They
// are wrapped with detail, so test for them with [errors.Is]; [Reason] gives
// each one a stable label for metrics.
var (
	// ErrNotTLS means the connection does not start with a TLS handshake
	// record: the first byte is not 22 (handshake) or the record's major
	// version is not 3. Plain-text protocols such as HTTP/1 get this.
	ErrNotTLS = errors.New("sni: not a TLS handshake")

	// ErrSSLv2 means the connection starts with an SSL 2.0 compatible
	// ClientHello, which carries no extensions and hence no server name.
	ErrSSLv2 = errors.New("sni: SSLv2-compatible ClientHello")

	// ErrNotClientHello means the first handshake message is not a
	// ClientHello.
	ErrNotClientHello = errors.New("sni: first handshake message is not a ClientHello")

	// ErrMalformed means the records or the ClientHello break the TLS
	// encoding rules: impossible lengths, duplicate extensions, a record of
	// another type before the ClientHello is complete, and the like.
	ErrMalformed = errors.New("sni: malformed ClientHello")

	// ErrTruncated means the connection ended, or a read from it failed,
	// before the ClientHello was complete. The read error is wrapped too, so
	// a connection closed before sending anything satisfies both
	// errors.Is(err, ErrTruncated) and errors.Is(err, io.EOF), with an empty
	// Hello.Raw.
	ErrTruncated = errors.New("sni: connection ended before the ClientHello was complete")

	// ErrTooLarge means the ClientHello does not fit in [Peeker.MaxBytes].
	ErrTooLarge = errors.New("sni: ClientHello exceeds the size limit")

	// ErrTimeout means [Peeker.Timeout] passed before the ClientHello was
	// complete. The read error (usually [os.ErrDeadlineExceeded]) is wrapped
	// too.
	ErrTimeout = errors.New("sni: timed out waiting for the ClientHello")

	// ErrOverBudget means the ClientHello needed more memory than the
	// [Budget] shared by all Peeks had left: the gateway holds too many
	// partial hellos at once.
	ErrOverBudget = errors.New("sni: ClientHello memory budget exhausted")

	// ErrBadName means a string is not a valid Istio SNI or cluster name, or
	// names an address rather than a DNS host.
	ErrBadName = errors.New("sni: bad Istio name")
)

// PeekReasons returns the labels [Reason] gives the errors of
// [Peeker.Peek], in a stable order, for pre-registering metric labels:
// "not_tls", "sslv2", "not_client_hello", "malformed", "truncated",
// "too_large", "timeout" and "over_budget".
func PeekReasons() []string {
	return []string{
		Reason(ErrNotTLS), Reason(ErrSSLv2), Reason(ErrNotClientHello), Reason(ErrMalformed),
		Reason(ErrTruncated), Reason(ErrTooLarge), Reason(ErrTimeout), Reason(ErrOverBudget),
	}
}

// Reason returns a short label for err that is stable across releases and
// safe to use as a metric label: "not_tls", "sslv2", "not_client_hello",
// "malformed", "truncated", "too_large", "timeout", "over_budget" or
// "bad_name" for errors
// wrapping the matching sentinel, "" for a nil error and "other" for any
// other error.
func Reason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrNotTLS):
		return "not_tls"
	case errors.Is(err, ErrSSLv2):
		return "sslv2"
	case errors.Is(err, ErrNotClientHello):
		return "not_client_hello"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrTruncated):
		return "truncated"
	case errors.Is(err, ErrTooLarge):
		return "too_large"
	case errors.Is(err, ErrTimeout):
		return "timeout"
	case errors.Is(err, ErrOverBudget):
		return "over_budget"
	case errors.Is(err, ErrBadName):
		return "bad_name"
	}
	return "other"
}
