package discovery

import (
	"fmt"

	"github.com/ewgate/ewgate/sni"
)

// checkLabel reports why s is not a DNS-1123 label, as Kubernetes requires
// of namespace names: 1 to 63 lower-case letters, digits and inner
// hyphens (sni.IsDNSLabel). It is the rule of every namespace a config
// names (server host namespaces, exportTo lists).
func checkLabel(s string) error {
	switch {
	case s == "" || len(s) > 63:
		return fmt.Errorf("label %q must be 1-63 characters", s)
	case !sni.IsDNSLabel(s):
		return fmt.Errorf("label %q: only a-z, 0-9 and inner '-' are allowed", s)
	}
	return nil
}
