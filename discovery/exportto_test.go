package discovery

import (
	"strings"
	"testing"
)

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

func TestCheckExportTo(t *testing.T) {
	tests := []struct {
		exportTo []string
		noneOK   bool   // a ServiceEntry's
		err      string // "" if the list is valid
	}{
		{nil, false, ""},
		{[]string{"*"}, false, ""},
		{[]string{"."}, false, ""},
		{[]string{".", "istio-system"}, false, ""},
		{[]string{"istio-system", "other"}, false, ""},
		{[]string{"~"}, true, ""},
		{[]string{"~"}, false, `exportTo[0]: "~" is for ServiceEntries only`},
		{[]string{"~", "istio-system"}, true, `exportTo: "*" and "~" cannot be combined`},
		{[]string{"*", "istio-system"}, false, `exportTo: "*" and "~" cannot be combined`},
		{[]string{"istio-system", "istio-system"}, false, `exportTo[1]: namespace "istio-system" is listed twice`},
		{[]string{".", "bookinfo"}, false, `exportTo[1]: namespace "bookinfo" is listed twice`},
		{[]string{"Istio-System"}, false, `exportTo[0]: "Istio-System" is neither`},
		{[]string{""}, false, `exportTo[0]: "" is neither`},
		{[]string{"a/b"}, false, `exportTo[0]: "a/b" is neither`},
	}
	for _, tt := range tests {
		err := checkExportTo(tt.exportTo, "bookinfo", tt.noneOK)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("exportTo %q: %v", tt.exportTo, err)
		case tt.err != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.err)):
			t.Errorf("exportTo %q: error %v, want %q...", tt.exportTo, err, tt.err)
		}
	}
}
