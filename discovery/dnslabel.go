package discovery

import "fmt"

// checkLabel reports why s is not a DNS-1123 label, as Kubernetes requires
// of namespace names: 1 to 63 lower-case letters, digits and inner
// hyphens. It is the rule of every namespace a config names (server host
// namespaces, exportTo lists).
func checkLabel(s string) error {
	if s == "" || len(s) > 63 {
		return fmt.Errorf("label %q must be 1-63 characters", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return fmt.Errorf("label %q: only a-z, 0-9 and inner '-' are allowed", s)
		}
	}
	return nil
}
