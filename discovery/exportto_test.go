package discovery

import "testing"

func TestExportVisibility(t *testing.T) {
	tests := []struct {
		exportTo []string
		from     string // the resource is in namespace bookinfo
		want     visibility
	}{
		{nil, "bookinfo", public},
		{nil, "istio-system", public},
		{[]string{}, "istio-system", public},
		{[]string{"*"}, "istio-system", public},
		{[]string{"a", "*"}, "other", public},
		{[]string{"~", "*"}, "other", public}, // "*" wins, as in Istio
		{[]string{"."}, "bookinfo", private},
		{[]string{"bookinfo"}, "bookinfo", private},
		{[]string{"."}, "istio-system", hidden},
		{[]string{"~"}, "bookinfo", hidden},
		{[]string{"~"}, "istio-system", hidden},
		{[]string{"~", "istio-system"}, "istio-system", hidden}, // "~" hides, as in Istio
		{[]string{"~", "."}, "bookinfo", hidden},
		{[]string{"istio-system"}, "istio-system", named},
		{[]string{"istio-system"}, "bookinfo", hidden},
		{[]string{"a", "istio-system"}, "istio-system", named},
		{[]string{".", "istio-system"}, "bookinfo", private},
		{[]string{".", "istio-system"}, "istio-system", named},
		{[]string{".", "istio-system"}, "other", hidden},
		{[]string{"Istio-System"}, "istio-system", hidden},
	}
	for _, tt := range tests {
		if got := exportVisibility(tt.exportTo, "bookinfo", tt.from); got != tt.want {
			t.Errorf("exportTo %q of namespace bookinfo, from %q: %v, want %v", tt.exportTo, tt.from, got, tt.want)
		}
	}
}
