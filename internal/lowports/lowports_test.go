package lowports

import (
	"net"
	"strconv"
	"testing"
)

func TestRangeHalvesBelowEphemeral(t *testing.T) {
	lo0, hi0, err := Range(0)
	if err != nil {
		t.Skip(err) // a custom ephemeral range: nothing to check
	}
	lo1, hi1, err := Range(1)
	if err != nil {
		t.Fatal(err)
	}
	if lo0 != 10000 || hi0 != lo1 || hi1 != ephemeralLow() || lo0 >= hi0 || lo1 >= hi1 {
		t.Errorf("halves [%d, %d) and [%d, %d), ephemeral range from %d", lo0, hi0, lo1, hi1, ephemeralLow())
	}
}

// TestPick: the port is in range, free on TCP and UDP, and not one skip
// refuses; a range whose every port is taken fails.
func TestPick(t *testing.T) {
	lo, hi, err := Range(1)
	if err != nil {
		t.Skip(err)
	}
	given := make(map[int]bool)
	for range 20 {
		p, err := Pick(lo, hi, func(p int) bool { return given[p] })
		if err != nil {
			t.Fatal(err)
		}
		if p < lo || p >= hi || given[p] {
			t.Fatalf("picked %d: out of [%d, %d) or given before", p, lo, hi)
		}
		given[p] = true
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("picked %d, not free on TCP: %v", p, err)
		}
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			t.Errorf("picked %d, not free on UDP: %v", p, err)
		} else {
			pc.Close()
		}
		ln.Close()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := ln.Addr().(*net.TCPAddr).Port
	if p, err := Pick(taken, taken+1, nil); err == nil {
		t.Errorf("picked %d, which a listener holds", p)
	}
}
