package discovery

import (
	"fmt"
	"strings"

	"github.com/ewgate/ewgate/sni"
)

// HostPattern is a Gateway server host: an optional namespace part and a host
// that may start with a "*" wildcard label.
type HostPattern struct {
	// Namespace is "*" for any namespace, "." for the Gateway's own, or a
	// namespace name. It is "*" when the host was written without "ns/".
	Namespace string
	// Host is a DNS name, "*" or "*.suffix", lower case.
	Host string
}

// ParseHostPattern parses Istio's "[namespace/]host" server host syntax.
func ParseHostPattern(s string) (HostPattern, error) {
	ns, host := "*", s
	if i := strings.IndexByte(s, '/'); i >= 0 {
		ns, host = s[:i], s[i+1:]
		if ns == "" {
			return HostPattern{}, fmt.Errorf("host %q: empty namespace before '/'", s)
		}
	}
	if ns != "*" && ns != "." {
		if err := checkLabel(ns); err != nil {
			return HostPattern{}, fmt.Errorf("host %q: namespace: %w", s, err)
		}
	}
	// The host part follows sni.ParseHost, the rule of routable hosts: a
	// pattern that no routable host could match is a mistake.
	switch {
	case host == "":
		return HostPattern{}, fmt.Errorf("host %q: empty host", s)
	case host == "*":
	case strings.HasPrefix(host, "*."):
		if strings.Contains(host[2:], "*") || len(host) == 2 {
			return HostPattern{}, fmt.Errorf("host %q: a wildcard may only be the whole first label", s)
		}
		suffix, err := sni.ParseHost(host[2:])
		if err != nil {
			return HostPattern{}, fmt.Errorf("host %q: %w", s, err)
		}
		host = "*." + suffix
	case strings.Contains(host, "*"):
		return HostPattern{}, fmt.Errorf("host %q: a wildcard may only be the whole first label", s)
	default:
		h, err := sni.ParseHost(host)
		switch {
		case err != nil && host == s:
			return HostPattern{}, err // it quotes s
		case err != nil:
			return HostPattern{}, fmt.Errorf("host %q: %w", s, err)
		}
		host = h
	}
	return HostPattern{Namespace: ns, Host: host}, nil
}

// parseHost parses a host written without a namespace part, as
// VirtualService hosts and sniHosts and DestinationRule hosts are: a DNS
// name, "*.suffix" or "*" (ParseHostPattern's rule of the host part). It
// returns the host in lower case; the error quotes s.
func parseHost(s string) (string, error) {
	h := strings.ToLower(s)
	if _, err := ParseHostPattern(h); err != nil || strings.Contains(h, "/") {
		return "", fmt.Errorf("%q is neither a DNS name nor a wildcard \"*.suffix\" or \"*\"", s)
	}
	return h, nil
}

// Matches reports whether the pattern admits a service with host h in
// namespace svcNS, for a Gateway in namespace gwNS. Unlike Istio, which
// ignores the namespace part of AUTO_PASSTHROUGH hosts, the namespace is
// enforced: "bookinfo/*.local" admits only services of namespace bookinfo.
func (p HostPattern) Matches(h, svcNS, gwNS string) bool {
	return p.admitsNamespace(svcNS, gwNS) && hostsOverlap(p.Host, h)
}

// admitsNamespace reports whether the pattern's namespace part admits
// namespace ns, for a Gateway in namespace gwNS: "*" every namespace, "."
// gwNS, a name itself. This is the one rule of a server host's namespace,
// for services (Matches) and VirtualServices (serverHostsMeet) alike.
func (p HostPattern) admitsNamespace(ns, gwNS string) bool {
	switch p.Namespace {
	case "*":
		return true
	case ".":
		return ns == gwNS
	}
	return ns == p.Namespace
}

// String returns the pattern in Istio's "namespace/host" syntax.
func (p HostPattern) String() string { return p.Namespace + "/" + p.Host }

// hostsOverlap is Istio's host.Name.Matches: equal names, or a wildcard
// ("*" or "*.suffix") that covers the other name or wildcard. Unlike
// Istio's, "*.local" does not cover ".local", which is no host.
func hostsOverlap(a, b string) bool {
	aw, bw := strings.HasPrefix(a, "*"), strings.HasPrefix(b, "*")
	switch {
	case aw && bw:
		if len(a) < len(b) {
			return strings.HasSuffix(b[1:], a[1:])
		}
		return strings.HasSuffix(a[1:], b[1:])
	case aw:
		return covers(a, b)
	case bw:
		return covers(b, a)
	}
	return a == b
}

// covers reports whether wildcard w ("*" or "*.suffix") covers host h: "*"
// every host, "*.local" those that end in ".local", not "local".
func covers(w, h string) bool {
	return len(h) >= len(w) && strings.HasSuffix(h, w[1:])
}
