package discovery

import "testing"

func TestLocalityFromLabels(t *testing.T) {
	node := map[string]string{RegionLabel: "eu", ZoneLabel: "eu-1", SubzoneLabel: "rack9"}
	tests := []struct {
		name      string
		pod, node map[string]string
		want      string
	}{
		{"node topology", nil, node, "eu/eu-1/rack9"},
		{"no subzone", nil, map[string]string{RegionLabel: "eu", ZoneLabel: "eu-1"}, "eu/eu-1"},
		{"region only", nil, map[string]string{RegionLabel: "eu"}, "eu"},
		// Istio keeps the parts it has: a zone without a region is still
		// a locality.
		{"zone only", nil, map[string]string{ZoneLabel: "eu-1"}, "/eu-1"},
		{"subzone only", nil, map[string]string{SubzoneLabel: "rack9"}, "//rack9"},
		{"none", nil, nil, ""},
		{"other labels", map[string]string{"app": "a"}, map[string]string{"kubernetes.io/hostname": "n1"}, ""},
		{"pod label beats the node", map[string]string{LocalityLabel: "us.us-2.r1"}, node, "us/us-2/r1"},
		{"pod label without subzone", map[string]string{LocalityLabel: "us.us-2"}, node, "us/us-2"},
		{"pod label with empty trailing parts", map[string]string{LocalityLabel: "us.."}, node, "us"},
		{"empty pod label", map[string]string{LocalityLabel: ""}, node, "eu/eu-1/rack9"},
	}
	for _, tt := range tests {
		if got := LocalityFromLabels(tt.pod, tt.node); got != tt.want {
			t.Errorf("%s: LocalityFromLabels(%v, %v) = %q, want %q", tt.name, tt.pod, tt.node, got, tt.want)
		}
	}
}
