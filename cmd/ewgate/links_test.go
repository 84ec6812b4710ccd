package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/peer"
)

func TestTunnelDepartures(t *testing.T) {
	member := func(name string, st peer.State, tunnel string) peer.Member {
		return peer.Member{Name: name, State: st, Meta: peer.Meta{TunnelAddr: tunnel}}
	}
	tests := []struct {
		name     string
		live     map[string]string
		members  []peer.Member
		wantLive map[string]string
		wantGone []linkDeparture
	}{
		{"nothing changes",
			map[string]string{"b": "10.0.0.2:15008"},
			[]peer.Member{member("a", peer.StateAlive, "10.0.0.1:15008"), member("b", peer.StateAlive, "10.0.0.2:15008")},
			map[string]string{"b": "10.0.0.2:15008"}, nil},
		{"a new member is not a departure",
			map[string]string{},
			[]peer.Member{member("a", peer.StateAlive, "10.0.0.1:15008"), member("b", peer.StateAlive, "10.0.0.2:15008")},
			map[string]string{"b": "10.0.0.2:15008"}, nil},
		{"dead, left and forgotten, in name order",
			map[string]string{"b": "10.0.0.2:15008", "c": "10.0.0.3:15008", "d": "10.0.0.4:15008"},
			[]peer.Member{member("a", peer.StateAlive, "10.0.0.1:15008"), member("c", peer.StateLeft, "10.0.0.3:15008"), member("d", peer.StateDead, "10.0.0.4:15008")},
			map[string]string{},
			[]linkDeparture{
				{"10.0.0.2:15008", "gossip: member b was forgotten"},
				{"10.0.0.3:15008", "gossip: member c is left"},
				{"10.0.0.4:15008", "gossip: member d is dead"},
			}},
		{"moved and no longer tunnelling",
			map[string]string{"b": "10.0.0.2:15008", "c": "10.0.0.3:15008"},
			[]peer.Member{member("b", peer.StateAlive, "10.0.0.9:15008"), member("c", peer.StateAlive, "")},
			map[string]string{"b": "10.0.0.9:15008"},
			[]linkDeparture{
				{"10.0.0.2:15008", "gossip: member b moved its tunnel to 10.0.0.9:15008"},
				{"10.0.0.3:15008", "gossip: member c no longer advertises a tunnel"},
			}},
		{"restarted under a new name on the same address",
			map[string]string{"b": "10.0.0.2:15008"},
			[]peer.Member{member("b", peer.StateDead, "10.0.0.2:15008"), member("b2", peer.StateAlive, "10.0.0.2:15008")},
			map[string]string{"b2": "10.0.0.2:15008"},
			[]linkDeparture{{"10.0.0.2:15008", "gossip: member b is dead"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			live, gone := tunnelDepartures(tt.live, tt.members, "a")
			if !reflect.DeepEqual(live, tt.wantLive) {
				t.Errorf("live = %v, want %v", live, tt.wantLive)
			}
			if !reflect.DeepEqual(gone, tt.wantGone) {
				t.Errorf("gone = %q, want %q", gone, tt.wantGone)
			}
		})
	}
}

func TestStatelessResetKey(t *testing.T) {
	k1 := []byte("0123456789abcdef")
	k2 := []byte("fedcba9876543210")
	a := statelessResetKey(k1, "gw-a")
	if b := statelessResetKey(k1, "gw-a"); *a != *b {
		t.Fatal("same gossip key and name gave different keys: a restart could not reset its predecessor's links")
	}
	for name, other := range map[string]*[32]byte{
		"another node":       statelessResetKey(k1, "gw-b"),
		"another gossip key": statelessResetKey(k2, "gw-a"),
		// The separator keeps (key, name) pairs from colliding by
		// shifting bytes between label and name.
		"a name prefix": statelessResetKey(k1, "gw-"),
	} {
		if *other == *a {
			t.Errorf("%s gave the same key", name)
		}
	}
	if bytes.Contains(a[:], k1) {
		t.Error("the reset key contains the gossip key")
	}
}

func TestPeerConfig(t *testing.T) {
	key := gossipKeyFile(t)
	base := func() settings {
		s := defaultSettings()
		s.Network = "n"
		s.GossipAddress = "127.0.0.1:7946"
		s.PassthroughAdvertise = "192.0.2.1:15443"
		s.GossipKeyFile = key
		s.TunnelAddress = "0.0.0.0:15008"
		return s
	}
	tests := []struct {
		name    string
		edit    func(*settings)
		check   func(peer.Config) bool
		wantErr string
	}{
		{"defaults", func(*settings) {}, func(c peer.Config) bool {
			return c.ReconnectInterval == peer.DefaultReconnectInterval && c.ReconnectTimeout == peer.DefaultReconnectTimeout &&
				c.BindAddr == "127.0.0.1" && c.BindPort == 7946 && c.TunnelAddr == "0.0.0.0:15008" && len(c.Keys) == 1
		}, ""},
		{"reconnect 0 is off", func(s *settings) { s.GossipReconnectInterval = 0 }, func(c peer.Config) bool {
			return c.ReconnectInterval < 0
		}, ""},
		{"reconnect settings", func(s *settings) {
			s.GossipReconnectInterval = duration(time.Minute)
			s.GossipReconnectTimeout = duration(72 * time.Hour)
		}, func(c peer.Config) bool {
			return c.ReconnectInterval == time.Minute && c.ReconnectTimeout == 72*time.Hour
		}, ""},
		{"tunnel advertise wins", func(s *settings) { s.TunnelAdvertise = "192.0.2.1:15008" }, func(c peer.Config) bool {
			return c.TunnelAddr == "192.0.2.1:15008"
		}, ""},
		{"missing key file", func(s *settings) { s.GossipKeyFile = filepath.Join(t.TempDir(), "none") }, nil, "--gossip-key-file: "},
		{"default node name", func(s *settings) { s.NodeName = "" }, func(c peer.Config) bool {
			h, _ := os.Hostname()
			return c.Name == h+"-n-7946"
		}, ""},
		{"bad gossip address", func(s *settings) { s.GossipAddress = "7946" }, nil, "--gossip-address: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := base()
			tt.edit(&s)
			c, err := peerConfig(s, nil)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Fatalf("config: %+v", c)
			}
		})
	}
}
