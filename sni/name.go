package sni

import (
	"fmt"
	"strconv"
	"strings"
)

const (
	sniPrefix     = "outbound_."
	sniSep        = "_."
	clusterPrefix = "outbound|"
	clusterSep    = "|"

	maxHostLen  = 253 // RFC 1035 section 2.3.4, without the trailing dot
	maxLabelLen = 63
)

// Key is an Istio routing key: the service a client wants and, optionally,
// the DestinationRule subset of its endpoints. Istio spells it as an SNI
// name, outbound_.<port>_.<subset>_.<host>, or as a cluster name,
// outbound|<port>|<subset>|<host>. Keys are comparable and may be used as map
// keys.
type Key struct {
	// Host is the service's fully qualified DNS name, in lower case.
	Host string

	// Port is the service port (not the endpoint's target port).
	Port uint16

	// Subset is the DestinationRule subset, or "" for all endpoints.
	Subset string
}

// Clone returns k with its strings copied, for a key parsed from bytes
// that will be reused, such as a [Hello]'s server name.
func (k Key) Clone() Key {
	return Key{Host: strings.Clone(k.Host), Port: k.Port, Subset: strings.Clone(k.Subset)}
}

// ParseName parses an Istio SNI name or cluster name, such as
//
//	outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local
//	outbound_.9080_._.reviews.bookinfo.svc.cluster.local (no subset)
//	outbound|9080|v1|reviews.bookinfo.svc.cluster.local
//	outbound|9080||reviews.bookinfo.svc.cluster.local    (no subset)
//
// The direction must be outbound. The port must be a decimal number from 1 to
// 65535 without sign or leading zeros, as Istio writes it, so that each Key
// has exactly one spelling. The subset, if any, must be a DNS-1123 label
// (lower-case letters, digits and inner hyphens, at most 63 bytes), as Istio
// requires of subset names; it is case-sensitive. The host, everything after
// the third separator, must be a DNS name of letters, digits and hyphens, is
// returned in lower case, and may not be a wildcard or an IP address in any
// form, including those like "10.1" or "0x0a000001" that some resolvers read
// as one: a client must never choose the address the gateway dials.
//
// ParseName allocates only to fold an upper-case host to lower case: the
// key's strings are otherwise substrings of s (see [Key.Clone]). Errors
// wrap [ErrBadName] and say which part is wrong.
func ParseName(s string) (Key, error) {
	var port, subset, host string
	var ok bool
	switch {
	case strings.HasPrefix(s, sniPrefix):
		port, host, ok = strings.Cut(s[len(sniPrefix):], sniSep)
		if ok {
			// Subsets hold no '_', so the first separator ends the subset.
			subset, host, ok = strings.Cut(host, sniSep)
		}
	case strings.HasPrefix(s, clusterPrefix):
		port, host, ok = strings.Cut(s[len(clusterPrefix):], clusterSep)
		if ok {
			subset, host, ok = strings.Cut(host, clusterSep)
		}
	default:
		return Key{}, badName("name", s, `must start with "outbound_." or "outbound|"`)
	}
	if !ok {
		return Key{}, badName("name", s, "needs a port, a subset and a host")
	}
	p, ok := parsePort(port)
	if !ok {
		return Key{}, badName("port", port, "must be a decimal number from 1 to 65535 without leading zeros")
	}
	if subset != "" {
		if err := CheckSubset(subset); err != nil {
			return Key{}, fmt.Errorf("%w: %w", ErrBadName, err)
		}
	}
	host, err := ParseHost(host)
	if err != nil {
		return Key{}, fmt.Errorf("%w: %w", ErrBadName, err)
	}
	return Key{Host: host, Port: p, Subset: subset}, nil
}

// ParseHost checks that s may be the host of a [Key], by the rule ParseName
// applies to the host of a name: a DNS name of letters, digits and
// hyphens, at most 253 bytes in labels of 1 to 63 that neither start nor
// end with a hyphen, and not a wildcard or an IP address in any form
// (including "10.1", "167772161" or "reviews.0x1f", which resolvers may
// read as one). It returns s in lower case, allocating only if s has
// upper-case letters. This is the one rule for service hosts: whatever
// defines a service (a config file, the Kubernetes API, the registration
// API) refuses a host that fails it, since no client could ever reach
// that service through a gateway. Errors satisfy errors.Is(err,
// [ErrBadName]) and say what is wrong with the host, as in
// `host "reviews.123" is an IP address; a DNS name is required`.
func ParseHost(s string) (string, error) {
	switch {
	case s == "":
		return "", badPart("host", s, "is empty")
	case len(s) > maxHostLen:
		return "", badPart("host", s, "is longer than 253 bytes")
	case strings.ContainsAny(s, ":[]"):
		return "", badPart("host", s, "is an IP address; a DNS name is required")
	case strings.Contains(s, "*"):
		return "", badPart("host", s, "is a wildcard; a DNS name is required")
	}
	upper := false
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			switch c := s[i]; {
			case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-':
			case 'A' <= c && c <= 'Z':
				upper = true
			default:
				return "", badPart("host", s, fmt.Sprintf("has invalid character %q", c))
			}
			continue
		}
		label := s[start:i]
		switch {
		case label == "":
			return "", badPart("host", s, "has an empty label")
		case len(label) > maxLabelLen:
			return "", badPart("host", s, "has a label longer than 63 bytes")
		case label[0] == '-' || label[len(label)-1] == '-':
			return "", badPart("host", s, "has a label that starts or ends with a hyphen")
		}
		if i == len(s) && isNumeric(label) {
			// No top-level domain is numeric (RFC 3696 section 2), but
			// inet_aton and browsers read such names as IPv4 addresses:
			// "10.0.0.1", "10.1", "167772161", "0xa.0.0.1".
			return "", badPart("host", s, "is an IP address; a DNS name is required")
		}
		start = i + 1
	}
	if upper {
		s = strings.ToLower(s)
	}
	return s, nil
}

// CheckSubset checks that s may be the subset of a [Key], by the rule
// ParseName applies: a lower-case DNS-1123 label of at most 63 bytes, as
// Istio requires of DestinationRule subset names. Errors satisfy
// errors.Is(err, [ErrBadName]) and say what is wrong with the subset.
func CheckSubset(s string) error {
	if !IsDNSLabel(s) {
		return badPart("subset", s, "must be a lower-case DNS-1123 label of at most 63 bytes")
	}
	return nil
}

// SNI returns k as Istio's SNI name, outbound_.<port>_.<subset>_.<host>; an
// empty subset gives outbound_.<port>_._.<host>. It does not check k: the
// names of the keys that ParseName returns parse back to the same key.
func (k Key) SNI() string {
	return k.format(sniPrefix, sniSep)
}

// ClusterName returns k as Istio's cluster name,
// outbound|<port>|<subset>|<host>. It does not check k: the names of the keys
// that ParseName returns parse back to the same key.
func (k Key) ClusterName() string {
	return k.format(clusterPrefix, clusterSep)
}

// String returns k.SNI().
func (k Key) String() string {
	return k.SNI()
}

func (k Key) format(prefix, sep string) string {
	var port [5]byte
	p := strconv.AppendUint(port[:0], uint64(k.Port), 10)
	var b strings.Builder
	b.Grow(len(prefix) + len(p) + len(k.Subset) + len(k.Host) + 2*len(sep))
	b.WriteString(prefix)
	b.Write(p)
	b.WriteString(sep)
	b.WriteString(k.Subset)
	b.WriteString(sep)
	b.WriteString(k.Host)
	return b.String()
}

// parsePort parses a port in canonical decimal form.
func parsePort(s string) (uint16, bool) {
	if len(s) == 0 || len(s) > 5 || s[0] == '0' {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// IsDNSLabel reports whether s is a lower-case RFC 1123 label: 1 to 63
// bytes of a-z, 0-9 and '-', neither first nor last. It is the one label
// rule of the project: server names' labels here, namespaces, port and
// Kubernetes names in discovery and api.
func IsDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > maxLabelLen || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// isNumeric reports whether a label reads as a number in decimal, octal or
// hexadecimal notation (as in "0x1f", or just "0x").
func isNumeric(label string) bool {
	digits := "0123456789"
	if len(label) >= 2 && label[0] == '0' && (label[1] == 'x' || label[1] == 'X') {
		label = label[2:]
		digits = "0123456789abcdefABCDEF"
	}
	for i := 0; i < len(label); i++ {
		if strings.IndexByte(digits, label[i]) < 0 {
			return false
		}
	}
	return true
}

// badName returns an ErrBadName error about one part of a name.
func badName(part, value, why string) error {
	return fmt.Errorf("%w: %w", ErrBadName, badPart(part, value, why))
}

// badPart returns an error about one part of a name that satisfies
// errors.Is(err, ErrBadName) without saying so in its message, for the
// checks of a part alone (ParseHost, CheckSubset). It quotes and shortens
// the part, which comes from the network, so that the error is safe and
// small in a log line.
func badPart(part, value, why string) error {
	const maxShown = 64
	if len(value) > maxShown {
		return &partError{fmt.Sprintf("%s %q... %s", part, value[:maxShown], why)}
	}
	return &partError{fmt.Sprintf("%s %q %s", part, value, why)}
}

// partError is badPart's error.
type partError struct{ msg string }

func (e *partError) Error() string { return e.msg }

// Is makes a part's error an ErrBadName, as the name's would be.
func (e *partError) Is(target error) bool { return target == ErrBadName }
