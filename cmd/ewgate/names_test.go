package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/internal/await"
)

func TestDerivePassthrough(t *testing.T) {
	one := &discovery.View{Listeners: []*discovery.Listener{{Port: 15443}}}
	two := &discovery.View{Listeners: []*discovery.Listener{{Port: 15443}, {Port: 15444}}}
	tests := []struct {
		bind    string
		view    *discovery.View
		want    string
		wantErr string
	}{
		{"127.0.0.2", one, "127.0.0.2:15443", ""},
		{"2001:db8::1", one, "[2001:db8::1]:15443", ""},
		{"0.0.0.0", one, "", `--bind-address is "0.0.0.0"`},
		{"::", one, "", "--passthrough-advertise is required"},
		{"10.0.0.1", two, "", "exactly one AUTO_PASSTHROUGH port (it serves [15443 15444])"},
		{"10.0.0.1", &discovery.View{}, "", "exactly one"},
	}
	for _, tt := range tests {
		got, err := derivePassthrough(tt.bind, tt.view)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("derivePassthrough(%s, %d listeners) = %q, %v; want error with %q", tt.bind, len(tt.view.Listeners), got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("derivePassthrough(%s) = %q, %v; want %q", tt.bind, got, err, tt.want)
		}
	}
}

// Two gateways of two networks on one host, with neither --node-name nor
// --passthrough-advertise: they get distinct names, join, and advertise
// their listeners; then a config change moves B's listener and the
// advertised address follows.
func TestRunDefaultsOnOneHost(t *testing.T) {
	key := gossipKeyFile(t)
	wa := newWorld(t, "v1")
	wa.writeConfig("v1")
	wb := newWorld(t, "v2")
	wb.network = "network-b"
	wb.writeConfig("v2")
	addrA, addrB := loopbackAddr(t), loopbackAddr(t)
	sockA := filepath.Join(wa.dir, "..", "a.sock")
	pa := wa.run("--gossip-address", addrA, "--gossip-key-file", key, "--gossip-profile", "local", "--api-socket", sockA)
	pb := wb.run("--gossip-address", addrB, "--gossip-key-file", key, "--gossip-profile", "local", "--join", addrA)
	_, portB, _ := strings.Cut(addrB, ":")
	members := func() string { out, _ := runEwgate(t, "ctl", "--api", sockA, "members"); return out }
	await.True(t, 30*time.Second, "B alive in A's members under its default name, with its listener's address", func() bool {
		return strings.Contains(members(), "-network-b-"+portB) && hasRowContaining(members(), "network-b", wb.gwAddr(), "alive")
	})

	// B's Gateway moves to another port: the advertised address follows.
	newPort, err := testPorts.pick()
	if err != nil {
		t.Fatal(err)
	}
	wb.port = newPort
	wb.writeConfig("v2")
	await.True(t, 30*time.Second, "B's new passthrough address in A's members", func() bool {
		return hasRowContaining(members(), "network-b", fmt.Sprintf("127.0.0.1:%d", newPort), "alive")
	})
	for _, p := range []*proc{pa, pb} {
		if out := p.output(); strings.Contains(out, "Conflicting address") || strings.Contains(out, "unique --node-name") {
			t.Errorf("a gateway logged a name conflict:\n%s", out)
		}
	}
}

// Two gateways started under one --node-name: the later one fails
// /readyz with an error naming the flag; the first stays ready.
func TestRunSameNodeNameNotReady(t *testing.T) {
	key := gossipKeyFile(t)
	wa := newWorld(t, "v1")
	wa.writeConfig("v1")
	wb := newWorld(t, "v2")
	wb.network = "network-b"
	wb.writeConfig("v2")
	addrA, addrB := loopbackAddr(t), loopbackAddr(t)
	wa.run("--node-name", "gw", "--gossip-address", addrA, "--gossip-key-file", key, "--gossip-profile", "local")
	startEwgate(t, "run", "-f", wb.dir, "--network", wb.network, "--node-labels", "istio=eastwestgateway",
		"--bind-address", "127.0.0.1", "--admin-address", wb.admin, "--endpoint-allow-loopback", "--node-name", "gw",
		"--gossip-address", addrB, "--gossip-key-file", key, "--gossip-profile", "local", "--join", addrA)
	await.True(t, 30*time.Second, "the later gateway not ready, naming --node-name", func() bool {
		code, body, _ := httpGet("http://" + wb.admin + "/readyz")
		return code == 503 && strings.Contains(body, "--node-name") && strings.Contains(body, addrA)
	})
	if code, body, _ := httpGet("http://" + wa.admin + "/readyz"); code != 200 {
		t.Errorf("the first gateway: /readyz %d %q", code, body)
	}
}

// hasRowContaining reports whether a line of out contains every string.
func hasRowContaining(out string, parts ...string) bool {
	for line := range strings.SplitSeq(out, "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return true
		}
	}
	return false
}
