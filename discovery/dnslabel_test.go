package discovery

import (
	"strings"
	"testing"
)

func TestCheckLabel(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"bookinfo", true},
		{"istio-system", true},
		{"a", true},
		{"0", true},
		{"123", true},
		{"a1-b2", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"-a", false},
		{"a-", false},
		{"Bookinfo", false},
		{"a.b", false},
		{"a_b", false},
		{"*", false},
		{".", false},
	}
	for _, tt := range tests {
		if err := checkLabel(tt.in); (err == nil) != tt.ok {
			t.Errorf("checkLabel(%q) = %v, want ok %v", tt.in, err, tt.ok)
		}
	}
}
