package api

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/sni"
)

// Limits of registered values, in bytes.
const (
	maxRegistrarLen  = 253
	maxNameLen       = 63  // port names, network names
	maxLabelKeyLen   = 317 // Kubernetes: a 253-byte prefix, "/", a 63-byte name
	maxLabelValueLen = 63
	maxLocalityLen   = 253
	maxAccountLen    = 253 // a Kubernetes service account name
	maxShownValue    = 64  // longest value quoted in an error
)

// FieldError reports an invalid field of a request and is returned by
// [Leases.Register]. The server answers it with INVALID_ARGUMENT and a
// google.rpc.BadRequest detail naming the field.
type FieldError struct {
	// Field is the field's path in the RegisterEndpointsRequest, e.g.
	// "lease_seconds", "endpoints[2].address" or `endpoints[0].ports["http"]`.
	Field string
	// Reason says what is wrong with it.
	Reason string
}

// Error returns "invalid <field>: <reason>".
func (e *FieldError) Error() string {
	return "invalid " + e.Field + ": " + e.Reason
}

func fieldErrorf(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// quote quotes a value from the network for an error, shortened.
func quote(s string) string {
	if len(s) > maxShownValue {
		return fmt.Sprintf("%q...", s[:maxShownValue])
	}
	return fmt.Sprintf("%q", s)
}

// checkRegistrar checks a registrar name: 1 to 253 printable ASCII
// characters, no spaces.
func checkRegistrar(s string) error {
	switch {
	case s == "":
		return fieldErrorf("registrar", "is empty")
	case len(s) > maxRegistrarLen:
		return fieldErrorf("registrar", "is longer than %d bytes", maxRegistrarLen)
	case !isToken(s):
		return fieldErrorf("registrar", "%s must be printable ASCII without spaces", quote(s))
	}
	return nil
}

// isToken reports whether s is printable ASCII without spaces.
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// normalizeEndpoint checks the i-th endpoint of a registration and returns
// a deep copy in canonical form: host names in lower case, IPv4-mapped
// IPv6 addresses as IPv4.
func normalizeEndpoint(i int, re RegisteredEndpoint) (RegisteredEndpoint, error) {
	field := func(name string) string { return fmt.Sprintf("endpoints[%d].%s", i, name) }
	// sni's rule, so that every registered service host is routable.
	host, err := sni.ParseHost(re.ServiceHost)
	if err != nil {
		return RegisteredEndpoint{}, &FieldError{Field: field("service_host"), Reason: err.Error()}
	}
	addr, err := endpointAddress(re.Endpoint.Address)
	if err != nil {
		return RegisteredEndpoint{}, &FieldError{Field: field("address"), Reason: err.Error()}
	}
	ep := re.Endpoint
	for _, name := range slices.Sorted(maps.Keys(ep.Ports)) {
		f := fmt.Sprintf("endpoints[%d].ports[%q]", i, name)
		if !sni.IsDNSLabel(name) {
			return RegisteredEndpoint{}, fieldErrorf(f, "port name must be a lower-case DNS label of at most %d bytes", maxNameLen)
		}
		if p := ep.Ports[name]; p < 1 || p > 65535 {
			return RegisteredEndpoint{}, fieldErrorf(f, "port %d is not in 1..65535", p)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(ep.Labels)) {
		v := ep.Labels[k]
		switch {
		case k == "" || len(k) > maxLabelKeyLen || !isToken(k):
			return RegisteredEndpoint{}, fieldErrorf(field("labels"), "key %s must be 1 to %d printable bytes without spaces", quote(k), maxLabelKeyLen)
		case len(v) > maxLabelValueLen || (v != "" && !isToken(v)):
			return RegisteredEndpoint{}, fieldErrorf(fmt.Sprintf("endpoints[%d].labels[%q]", i, k), "value must be at most %d printable bytes without spaces", maxLabelValueLen)
		}
	}
	if ep.Locality != "" && (len(ep.Locality) > maxLocalityLen || !isToken(ep.Locality) || strings.Count(ep.Locality, "/") > 2) {
		return RegisteredEndpoint{}, fieldErrorf(field("locality"), "%s must be region/zone/subzone in printable ASCII", quote(ep.Locality))
	}
	if ep.Network != "" && (len(ep.Network) > maxNameLen || !isToken(ep.Network)) {
		return RegisteredEndpoint{}, fieldErrorf(field("network"), "%s must be at most %d printable bytes without spaces", quote(ep.Network), maxNameLen)
	}
	if ep.ServiceAccount != "" && (len(ep.ServiceAccount) > maxAccountLen || !isToken(ep.ServiceAccount)) {
		return RegisteredEndpoint{}, fieldErrorf(field("service_account"), "%s must be printable ASCII without spaces", quote(ep.ServiceAccount))
	}
	ep.Address = addr
	ep.Ports = maps.Clone(ep.Ports)
	ep.Labels = maps.Clone(ep.Labels)
	return RegisteredEndpoint{ServiceHost: host, Endpoint: ep}, nil
}

// endpointAddress checks that s is an IP address, never a DNS name (it
// would be resolved later, past every check), with a port, a scheme
// ("unix:") or a zone, and returns it in canonical form: IPv4-mapped IPv6
// addresses as IPv4. Which IPs are allowed is LeaseConfig.Addresses' rule.
func endpointAddress(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("is empty")
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return "", fmt.Errorf("%s must be an IP address, without port or scheme: registrations carry no DNS names", quote(s))
	}
	if ip.Zone() != "" {
		return "", fmt.Errorf("%s has an IPv6 zone", quote(s))
	}
	return ip.Unmap().String(), nil
}

// sameEndpoints reports whether two normalized registrations are equal.
func sameEndpoints(a, b []RegisteredEndpoint) bool {
	return slices.EqualFunc(a, b, func(x, y RegisteredEndpoint) bool {
		return x.ServiceHost == y.ServiceHost && sameEndpoint(x.Endpoint, y.Endpoint)
	})
}

func sameEndpoint(x, y discovery.Endpoint) bool {
	return x.Address == y.Address && x.Network == y.Network && x.Locality == y.Locality &&
		x.Weight == y.Weight && x.ServiceAccount == y.ServiceAccount &&
		maps.Equal(x.Ports, y.Ports) && maps.Equal(x.Labels, y.Labels)
}
