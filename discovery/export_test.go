package discovery

import (
	"strings"
	"testing"

	"github.com/ewgate/ewgate/sni"
)

func TestExportLabel(t *testing.T) {
	entry := func(meta string) string {
		return strings.Replace(serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local", ""),
			"  namespace: bookinfo\n", "  namespace: bookinfo\n"+meta, 1)
	}
	for _, tt := range []struct {
		meta    string
		want    Export
		wantErr string
	}{
		{"", ExportUnset, ""},
		{"  labels: {app: reviews}\n", ExportUnset, ""},
		{"  labels: {ewgate.io/export: \"true\"}\n", ExportYes, ""},
		{"  labels: {ewgate.io/export: \"false\"}\n", ExportNo, ""},
		{"  labels: {ewgate.io/export: \"yes\"}\n", 0, `ServiceEntry bookinfo/reviews: metadata.labels[ewgate.io/export]: "yes": want "true" or "false"`},
		{"  annotations: {ewgate.io/export: \"true\"}\n", 0, "metadata.annotations[ewgate.io/export]: ewgate reads it as a label"},
	} {
		c, err := Parse("test.yaml", []byte(entry(tt.meta)), nil)
		if tt.wantErr != "" {
			wantErrContains(t, err, tt.wantErr)
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", tt.meta, err)
		}
		if got := c.Services[0].Export; got != tt.want {
			t.Errorf("%q: Export = %d, want %d", tt.meta, got, tt.want)
		}
	}
	if _, err := ParseExportDefault("some"); err == nil {
		t.Error("ParseExportDefault accepted \"some\"")
	}
}

// A service that is not exported keeps its endpoints for resolution in
// its own network, but the gateway may not forward to them.
func TestRouteExported(t *testing.T) {
	c := mustParse(t, ewGateway("gw"), serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local",
		`[{address: 10.0.0.1, labels: {security.istio.io/tlsMode: istio}}]`))
	key := sni.Key{Host: "reviews.bookinfo.svc.cluster.local", Port: 9080}
	for def, want := range map[ExportDefault]bool{ExportAll: true, ExportNone: false} {
		v, err := c.View(Node{Network: "network-a", Labels: map[string]string{"istio": "eastwestgateway"}, ExportDefault: def})
		if err != nil {
			t.Fatal(err)
		}
		r, err := v.Route(0, key)
		if err != nil {
			t.Fatal(err)
		}
		if r.Exported != want || len(r.Targets) != 1 {
			t.Errorf("export default %s: Exported = %v with %d targets, want %v with 1", def, r.Exported, len(r.Targets), want)
		}
	}
}
