package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestWorkloadTrustDomain(t *testing.T) {
	tests := []struct {
		name, flag, svid string
		want             string // "": discovery's DefaultTrustDomain
		warn             bool
	}{
		{"neither", "", "", "", false},
		{"the SVID's", "", "corp.example", "corp.example", false},
		{"the flag without an SVID", "corp.example", "", "corp.example", false},
		{"the flag, the same as the SVID's", "corp.example", "corp.example", "corp.example", false},
		{"the flag beats the SVID's, warned", "workloads.example", "corp.example", "workloads.example", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			got := workloadTrustDomain(tt.flag, tt.svid, slog.New(slog.NewTextHandler(&buf, nil)))
			if got != tt.want {
				t.Errorf("trust domain %q, want %q", got, tt.want)
			}
			if warned := strings.Contains(buf.String(), "level=WARN"); warned != tt.warn {
				t.Errorf("warned %v, want %v: %s", warned, tt.warn, buf.String())
			}
		})
	}
}
