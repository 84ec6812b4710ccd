package discovery

import (
	"strings"
	"testing"
)

func TestParseHostPattern(t *testing.T) {
	tests := []struct {
		in      string
		want    HostPattern
		wantErr string
	}{
		{in: "*", want: HostPattern{"*", "*"}},
		{in: "*.local", want: HostPattern{"*", "*.local"}},
		{in: "*.LOCAL", want: HostPattern{"*", "*.local"}},
		{in: "reviews.bookinfo.svc.cluster.local", want: HostPattern{"*", "reviews.bookinfo.svc.cluster.local"}},
		{in: "*/x.ns.svc.cluster.local", want: HostPattern{"*", "x.ns.svc.cluster.local"}},
		{in: "./*", want: HostPattern{".", "*"}},
		{in: "bookinfo/*.local", want: HostPattern{"bookinfo", "*.local"}},
		{in: "", wantErr: "empty host"},
		{in: "ns/", wantErr: "empty host"},
		{in: "/x", wantErr: "empty namespace"},
		{in: "/", wantErr: "empty namespace"},
		{in: "*foo.local", wantErr: "wildcard"},
		{in: "a.*.local", wantErr: "wildcard"},
		{in: "*.*.local", wantErr: "wildcard"},
		{in: "**", wantErr: "wildcard"},
		{in: "*.", wantErr: "wildcard"},
		{in: "*..local", wantErr: "empty label"},
		{in: "a..local", wantErr: "empty label"},
		{in: "a/b/c", wantErr: `host "a/b/c"`},
		{in: "foo bar", wantErr: `host "foo bar"`},
		{in: "Bad_NS/x.local", wantErr: "namespace"},
		{in: "~/x.local", wantErr: "namespace"},
		{in: "10.0.0.1", wantErr: "IP address"},
		// The SNI parser's host rule: no client could send these.
		{in: "reviews.123", wantErr: "IP address"},
		{in: "*.0x1f", wantErr: "IP address"},
		{in: "bookinfo/10.1", wantErr: "IP address"},
	}
	for _, tt := range tests {
		got, err := ParseHostPattern(tt.in)
		if tt.wantErr != "" {
			if err == nil {
				t.Errorf("ParseHostPattern(%q) = %+v, want error containing %q", tt.in, got, tt.wantErr)
			} else if !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), `"`+tt.in+`"`) {
				t.Errorf("ParseHostPattern(%q) error %q, want it to quote the input and contain %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseHostPattern(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestHostPatternMatches(t *testing.T) {
	const gwNS = "istio-system"
	tests := []struct {
		pattern string
		host    string
		svcNS   string
		want    bool
	}{
		{"*", "reviews.bookinfo.svc.cluster.local", "bookinfo", true},
		{"*", "api.example.com", "ext", true},
		{"*.local", "reviews.bookinfo.svc.cluster.local", "bookinfo", true},
		{"*.local", "a.local", "bookinfo", true},
		{"*.local", "local", "bookinfo", false},
		{"*.local", ".local", "bookinfo", false},
		{"*.local", "notlocal", "bookinfo", false},
		{"*.local", "a.local.com", "bookinfo", false},
		{"*.local", "api.example.com", "ext", false},
		{"*.svc.cluster.local", "reviews.bookinfo.svc.cluster.local", "bookinfo", true},
		{"*.svc.cluster.local", "svc.cluster.local", "bookinfo", false},
		{"*/x.ns.svc.cluster.local", "x.ns.svc.cluster.local", "ns", true},
		{"*/x.ns.svc.cluster.local", "x.ns.svc.cluster.local", "other", true},
		{"*/x.ns.svc.cluster.local", "y.ns.svc.cluster.local", "ns", false},
		{"*/x.ns.svc.cluster.local", "a.x.ns.svc.cluster.local", "ns", false},
		{"./*", "a.local", gwNS, true},
		{"./*", "a.local", "bookinfo", false},
		{"./*.local", "a.local", gwNS, true},
		{"bookinfo/*.local", "reviews.bookinfo.svc.cluster.local", "bookinfo", true},
		// Stricter than Istio, deliberately: the namespace is enforced.
		{"bookinfo/*.local", "reviews.other.svc.cluster.local", "other", false},
		{"bookinfo/*.local", "reviews.bookinfo.svc.cluster.local", "other", false},
		{"bookinfo/*", "api.example.com", "bookinfo", true},
		{"bookinfo/*", "api.example.com", "ext", false},
		{"reviews.bookinfo.svc.cluster.local", "reviews.bookinfo.svc.cluster.local", "bookinfo", true},
		{"reviews.bookinfo.svc.cluster.local", "reviews.bookinfo.svc.cluster.loca", "bookinfo", false},
		{"reviews.bookinfo.svc.cluster.local", "v1.reviews.bookinfo.svc.cluster.local", "bookinfo", false},
	}
	for _, tt := range tests {
		p, err := ParseHostPattern(tt.pattern)
		if err != nil {
			t.Fatalf("ParseHostPattern(%q): %v", tt.pattern, err)
		}
		if got := p.Matches(tt.host, tt.svcNS, gwNS); got != tt.want {
			t.Errorf("%q.Matches(%q, ns %q, gateway ns %q) = %v, want %v", tt.pattern, tt.host, tt.svcNS, gwNS, got, tt.want)
		}
	}
}

func TestHostPatternString(t *testing.T) {
	for in, want := range map[string]string{"*.local": "*/*.local", "./*": "./*", "bookinfo/a.local": "bookinfo/a.local"} {
		p, err := ParseHostPattern(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.String(); got != want {
			t.Errorf("ParseHostPattern(%q).String() = %q, want %q", in, got, want)
		}
		if q, err := ParseHostPattern(p.String()); err != nil || q != p {
			t.Errorf("round trip of %q = %+v, %v", in, q, err)
		}
	}
}

func TestHostPatternAdmitsNamespace(t *testing.T) {
	tests := []struct {
		namespace string // the pattern's; the Gateway is in istio-system
		ns        string
		want      bool
	}{
		{"*", "bookinfo", true},
		{"*", "istio-system", true},
		{".", "istio-system", true},
		{".", "bookinfo", false},
		{"bookinfo", "bookinfo", true},
		{"bookinfo", "istio-system", false},
		{"bookinfo", "bookinfo2", false},
	}
	for _, tt := range tests {
		p := HostPattern{Namespace: tt.namespace, Host: "*"}
		if got := p.admitsNamespace(tt.ns, "istio-system"); got != tt.want {
			t.Errorf("namespace part %q, namespace %q: %v, want %v", tt.namespace, tt.ns, got, tt.want)
		}
	}
}

func TestHostsOverlap(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"a.example.com", "a.example.com", true},
		{"a.example.com", "b.example.com", false},
		{"*", "a.example.com", true},
		{"*", "*.example.com", true},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "a.b.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", ".example.com", false},
		{"*.example.com", "aexample.com", false},
		{"*.example.com", "*.b.example.com", true},
		{"*.example.com", "*.example.org", false},
		{"*.b.example.com", "*.example.com", true},
	}
	for _, tt := range tests {
		// The relation is symmetric: a VirtualService host meets a server
		// host whichever of the two is the wildcard.
		for _, p := range [][2]string{{tt.a, tt.b}, {tt.b, tt.a}} {
			if got := hostsOverlap(p[0], p[1]); got != tt.want {
				t.Errorf("hostsOverlap(%q, %q) = %v, want %v", p[0], p[1], got, tt.want)
			}
		}
	}
}

func TestParseHost(t *testing.T) {
	tests := []struct {
		in, want string // want "": refused
	}{
		{"Reviews.Example.COM", "reviews.example.com"},
		{"*", "*"},
		{"*.Example.com", "*.example.com"},
		{"*foo.example.com", ""},
		{"a.*.example.com", ""},
		{"ns/a.example.com", ""},
		{"*/a.example.com", ""},
		{"", ""},
		{"10.0.0.1", ""},
		{"a_b.example.com", ""},
	}
	for _, tt := range tests {
		got, err := parseHost(tt.in)
		switch {
		case tt.want == "" && err == nil:
			t.Errorf("parseHost(%q) = %q, want an error", tt.in, got)
		case tt.want == "" && !strings.Contains(err.Error(), `"`+tt.in+`"`):
			t.Errorf("parseHost(%q): error %q does not quote the host", tt.in, err)
		case tt.want != "" && (err != nil || got != tt.want):
			t.Errorf("parseHost(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}
