package sni

import (
	"errors"
	"strings"
	"testing"
	"unsafe"
)

func TestParseName(t *testing.T) {
	const host = "reviews.bookinfo.svc.cluster.local"
	v1 := Key{Host: host, Port: 9080, Subset: "v1"}
	all := Key{Host: host, Port: 9080}
	tests := []struct {
		in   string
		want Key
	}{
		{"outbound_.9080_.v1_." + host, v1},
		{"outbound|9080|v1|" + host, v1},
		{"outbound_.9080_._." + host, all},
		{"outbound|9080||" + host, all},
		{"outbound_.1_.a_.x", Key{Host: "x", Port: 1, Subset: "a"}},
		{"outbound_.65535_.v-2_.a-b.c0.d", Key{Host: "a-b.c0.d", Port: 65535, Subset: "v-2"}},
		{"outbound_.9080_.v1_.Reviews.BookInfo.SVC.cluster.local", v1},
		{"outbound|9080|v1|REVIEWS.bookinfo.svc.cluster.local", v1},
		{"outbound_.80_._.1.2.3.example", Key{Host: "1.2.3.example", Port: 80}},
		{"outbound_.80_._.0x1.example", Key{Host: "0x1.example", Port: 80}},
		{"outbound_.80_._.host.x0a", Key{Host: "host.x0a", Port: 80}},
		{"outbound_.80_._." + strings.Repeat("a", 63), Key{Host: strings.Repeat("a", 63), Port: 80}},
		{"outbound_.80_._." + longHost(253), Key{Host: longHost(253), Port: 80}},
		{"outbound_.80_." + strings.Repeat("s", 63) + "_.h", Key{Host: "h", Port: 80, Subset: strings.Repeat("s", 63)}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			k, err := ParseName(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if k != tt.want {
				t.Fatalf("got %+v, want %+v", k, tt.want)
			}
			for _, name := range []string{k.SNI(), k.ClusterName(), k.String()} {
				if k2, err := ParseName(name); err != nil || k2 != k {
					t.Errorf("ParseName(%q) = %+v, %v; want %+v", name, k2, err, k)
				}
			}
		})
	}
}

// longHost returns a valid host name of n bytes.
func longHost(n int) string {
	label := strings.Repeat("a", 63) + "."
	s := strings.Repeat(label, n/len(label))
	if rest := n - len(s); rest > 0 {
		s += strings.Repeat("b", rest)
	} else {
		s = s[:len(s)-1] + "b"
	}
	return s
}

func TestParseNameErrors(t *testing.T) {
	const host = "reviews.bookinfo.svc.cluster.local"
	tests := []struct {
		in   string
		part string // which part the error must name
	}{
		{"", "name"},
		{"inbound_.9080_.v1_." + host, "name"},
		{"inbound|9080|v1|" + host, "name"},
		{"Outbound_.9080_.v1_." + host, "name"},
		{"outbound.9080.v1." + host, "name"},
		{"outbound_.9080_.v1", "name"},
		{"outbound_.9080", "name"},
		{"outbound|9080|v1", "name"},
		{"outbound|9080", "name"},
		{"outbound_.", "name"},
		{"outbound|", "name"},

		{"outbound_.0_.v1_." + host, "port"},
		{"outbound_.65536_.v1_." + host, "port"},
		{"outbound_.99999_.v1_." + host, "port"},
		{"outbound_.123456_.v1_." + host, "port"},
		{"outbound_.-1_.v1_." + host, "port"},
		{"outbound_.+80_.v1_." + host, "port"},
		{"outbound_. 80_.v1_." + host, "port"},
		{"outbound_.80 _.v1_." + host, "port"},
		{"outbound_.80a_.v1_." + host, "port"},
		{"outbound_.0080_.v1_." + host, "port"},
		{"outbound_._.v1_." + host, "port"},
		{"outbound||v1|" + host, "port"},
		{"outbound|0x50|v1|" + host, "port"},

		{"outbound_.9080_.V1_." + host, "subset"},
		{"outbound_.9080_.-v1_." + host, "subset"},
		{"outbound_.9080_.v1-_." + host, "subset"},
		{"outbound_.9080_.v.1_." + host, "subset"},
		{"outbound_.9080_.v_1_." + host, "subset"},
		{"outbound|9080|v_1|" + host, "subset"},
		{"outbound|9080|v.1|" + host, "subset"},
		{"outbound_.9080_." + strings.Repeat("s", 64) + "_." + host, "subset"},

		{"outbound_.9080_.v1_.", "host"},
		{"outbound|9080|v1|", "host"},
		{"outbound_.9080_.v1_.reviews_.x", "host"},
		{"outbound_.9080_.v1_.rev iews", "host"},
		{"outbound_.9080_.v1_.réviews", "host"},
		{"outbound_.9080_.v1_.reviews/x", "host"},
		{"outbound|9080|v1|a|b", "host"},
		{"outbound_.9080_.v1_.reviews.", "host"},
		{"outbound_.9080_.v1_..reviews", "host"},
		{"outbound_.9080_.v1_.a..b", "host"},
		{"outbound_.9080_.v1_.-a.b", "host"},
		{"outbound_.9080_.v1_.a-.b", "host"},
		{"outbound_.9080_.v1_." + strings.Repeat("a", 64), "host"},
		{"outbound_.9080_.v1_." + longHost(254), "host"},
		{"outbound_.9080_.v1_.*", "host"},
		{"outbound_.9080_.v1_.*.bookinfo.svc.cluster.local", "host"},
		{"outbound|9080|v1|*.local", "host"},
		{"outbound_.9080_.v1_.10.0.0.1", "host"},
		{"outbound|9080|v1|127.0.0.1", "host"},
		{"outbound_.9080_.v1_.10.1", "host"},
		{"outbound_.9080_.v1_.167772161", "host"},
		{"outbound_.9080_.v1_.0x0a000001", "host"},
		{"outbound_.9080_.v1_.0xa.0.0.1", "host"},
		{"outbound_.9080_.v1_.1.2.3.0X4", "host"},
		{"outbound_.9080_.v1_.010.0.0.1", "host"},
		{"outbound_.9080_.v1_.::1", "host"},
		{"outbound_.9080_.v1_.[::1]", "host"},
		{"outbound_.9080_.v1_.fe80::1%eth0", "host"},
		{"outbound_.9080_.v1_.::ffff:10.0.0.1", "host"},
		{"outbound_.9080_.v1_.2001:db8::1", "host"},
		{"outbound|9080|v1|::1", "host"},
		{"outbound_.9080_.v1_." + host + "\x00", "host"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			k, err := ParseName(tt.in)
			if !errors.Is(err, ErrBadName) {
				t.Fatalf("got %+v, %v; want ErrBadName", k, err)
			}
			if k != (Key{}) {
				t.Errorf("got key %+v with error", k)
			}
			if prefix := "sni: bad Istio name: " + tt.part + " "; !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error %q does not start with %q", err, prefix)
			}
			if Reason(err) != "bad_name" {
				t.Errorf("Reason = %q", Reason(err))
			}
		})
	}
}

// TestParseNameErrorIsShort checks that a huge name does not make a huge
// error message.
func TestParseNameErrorIsShort(t *testing.T) {
	_, err := ParseName("outbound_.80_._." + strings.Repeat("a", 1<<16) + "*")
	if err == nil || len(err.Error()) > 200 {
		t.Fatalf("error of %d bytes: %v", len(err.Error()), err)
	}
}

func TestKeyNames(t *testing.T) {
	tests := []struct {
		k            Key
		sni, cluster string
	}{
		{Key{"reviews.bookinfo.svc.cluster.local", 9080, "v1"}, "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local", "outbound|9080|v1|reviews.bookinfo.svc.cluster.local"},
		{Key{"reviews.bookinfo.svc.cluster.local", 9080, ""}, "outbound_.9080_._.reviews.bookinfo.svc.cluster.local", "outbound|9080||reviews.bookinfo.svc.cluster.local"},
		{Key{"a", 65535, "b"}, "outbound_.65535_.b_.a", "outbound|65535|b|a"},
	}
	for _, tt := range tests {
		if got := tt.k.SNI(); got != tt.sni {
			t.Errorf("%+v.SNI() = %q, want %q", tt.k, got, tt.sni)
		}
		if got := tt.k.String(); got != tt.sni {
			t.Errorf("%+v.String() = %q, want %q", tt.k, got, tt.sni)
		}
		if got := tt.k.ClusterName(); got != tt.cluster {
			t.Errorf("%+v.ClusterName() = %q, want %q", tt.k, got, tt.cluster)
		}
	}
}

func TestParseNameAllocs(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("instrumentation allocates")
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := ParseName("outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local"); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("ParseName of a lower-case name allocates %v times, want 0", allocs)
	}
}

// TestParseHost checks that ParseHost is the host rule of ParseName: a host
// passes exactly when a name carrying it parses, with the same host.
func TestParseHost(t *testing.T) {
	for _, h := range []string{
		"reviews.bookinfo.svc.cluster.local", "Reviews.BookInfo.svc.cluster.local", "a", "a-b.c0.d",
		"1.2.3.example", "0x1.example", "host.x0a", longHost(253), strings.Repeat("a", 63),
		"", "reviews.123", "reviews.0x1f", "10.1", "167772161", "10.0.0.1", "::1", "[::1]",
		"*.local", "*", "a..b", "-a.b", "a-.b", "reviews.", longHost(254), strings.Repeat("a", 64),
		"rev iews", "réviews", "reviews_.x", "a|b", "reviews\x00",
	} {
		got, err := ParseHost(h)
		k, kerr := ParseName(Key{Host: h, Port: 1}.SNI())
		if (err == nil) != (kerr == nil) || got != k.Host {
			t.Errorf("ParseHost(%q) = %q, %v; but ParseName of its SNI name gives host %q, %v", h, got, err, k.Host, kerr)
		}
		if err != nil && !errors.Is(err, ErrBadName) {
			t.Errorf("ParseHost(%q): error %v does not wrap ErrBadName", h, err)
		}
	}
}

// TestCheckSubset checks that CheckSubset is the subset rule of ParseName.
func TestCheckSubset(t *testing.T) {
	for _, s := range []string{"v1", "v-2", strings.Repeat("s", 63), "", "V1", "-v1", "v1-", "v.1", "v_1", strings.Repeat("s", 64)} {
		err := CheckSubset(s)
		_, kerr := ParseName(Key{Host: "h", Port: 1, Subset: s}.ClusterName())
		if s == "" {
			// No subset is a valid key, but not a valid subset name.
			if err == nil {
				t.Errorf("CheckSubset(%q) = nil, want an error", s)
			}
			continue
		}
		if (err == nil) != (kerr == nil) {
			t.Errorf("CheckSubset(%q) = %v, but ParseName of a name with it gives %v", s, err, kerr)
		}
	}
}

// TestKeyClone: a clone equals the key and shares no bytes with the name
// it was parsed from.
func TestKeyClone(t *testing.T) {
	name := []byte("outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local")
	k, err := ParseName(string(name))
	if err != nil {
		t.Fatal(err)
	}
	c := k.Clone()
	if c != k {
		t.Fatalf("Clone() = %+v, want %+v", c, k)
	}
	if unsafe.StringData(c.Host) == unsafe.StringData(k.Host) || unsafe.StringData(c.Subset) == unsafe.StringData(k.Subset) {
		t.Fatal("the clone shares the key's bytes")
	}
}

func TestIsDNSLabel(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{"reviews", true},
		{"a", true},
		{"v1-2", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"-a", false},
		{"a-", false},
		{"Reviews", false},
		{"a_b", false},
		{"a.b", false},
	} {
		if got := IsDNSLabel(tc.s); got != tc.want {
			t.Errorf("IsDNSLabel(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}
