package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseSettings(t *testing.T) {
	dir := t.TempDir()
	// file writes a --config file into dir and returns its path.
	file := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	config := file("node.yaml", `
network: from-file
nodeLabels: {istio: eastwestgateway, zone: a}
files: [/etc/a, /etc/b]
bindAddress: 10.0.0.1
drainTimeout: 45s
alpn: [istio]
`)
	bad := file("bad.yaml", "network: x\nnetwrok: y\n")
	tunnelConfig := file("tunnel.yaml", "network: n\nfiles: [x]\ntunnelTransport: quic\ngossipReconnectInterval: 30s\ngossipReconnectTimeout: 1h\n")
	statusOff := file("status-off.yaml", "network: n\nfiles: [x]\nstatusAddress: \"\"\ndrainDelay: 5s\n")
	badTransport := file("bad-transport.yaml", "tunnelTransport: QUIC\n")
	loopOff := file("loop-off.yaml", "network: n\nfiles: [x]\nloopAccept: false\n")
	locality := file("locality.yaml", "network: n\nfiles: [x]\nlocality: eu-west/eu-west-1a\n")
	oneLoop := file("one-loop.yaml", "network: n\nfiles: [x]\neventLoops: 1\n")
	spread := file("spread.yaml", "network: n\nfiles: [x]\nspreadLoops: true\n")
	badLocality := file("bad-locality.yaml", "network: n\nfiles: [x]\nlocality: eu/west/1a/rack7\n")

	tests := []struct {
		name    string
		args    []string
		check   func(s settings) bool
		wantErr string
	}{
		{"flags only", []string{"-f", "a.yaml", "-f", "dir", "--network", "n1", "--node-labels", "istio=eastwestgateway,x=y"},
			func(s settings) bool {
				return reflect.DeepEqual(s.Files, []string{"a.yaml", "dir"}) && s.Network == "n1" &&
					reflect.DeepEqual(s.NodeLabels, map[string]string{"istio": "eastwestgateway", "x": "y"}) &&
					s.AdminAddress == "127.0.0.1:15446" && s.BindAddress == "0.0.0.0" && time.Duration(s.DrainTimeout) == 30*time.Second
			}, ""},
		{"config file", []string{"--config", config},
			func(s settings) bool {
				return s.Network == "from-file" && reflect.DeepEqual(s.Files, []string{"/etc/a", "/etc/b"}) &&
					s.BindAddress == "10.0.0.1" && time.Duration(s.DrainTimeout) == 45*time.Second &&
					s.NodeLabels["zone"] == "a" && reflect.DeepEqual(s.ALPN, []string{"istio"})
			}, ""},
		{"flags win over the file, lists are replaced", []string{"--network", "from-flag", "--config", config, "-f", "/only", "--drain-timeout", "1s"},
			func(s settings) bool {
				return s.Network == "from-flag" && reflect.DeepEqual(s.Files, []string{"/only"}) &&
					time.Duration(s.DrainTimeout) == time.Second && s.BindAddress == "10.0.0.1"
			}, ""},
		{"unknown key in the file", []string{"--config", bad}, nil, `unknown field "netwrok"`},
		{"status address defaults to the bind address", []string{"-f", "x", "--network", "n", "--bind-address", "10.0.0.2"},
			func(s settings) bool { return s.statusAddress() == "10.0.0.2:15021" }, ""},
		{"status address of an IPv6 bind address", []string{"-f", "x", "--network", "n", "--bind-address", "fd00::2"},
			func(s settings) bool { return s.statusAddress() == "[fd00::2]:15021" }, ""},
		{"status address off", []string{"-f", "x", "--network", "n", "--status-address", ""},
			func(s settings) bool { return s.statusAddress() == "" }, ""},
		{"status address off in the file", []string{"--config", statusOff},
			func(s settings) bool { return s.statusAddress() == "" && time.Duration(s.DrainDelay) == 5*time.Second }, ""},
		{"status address without port", []string{"-f", "x", "--network", "n", "--status-address", "10.0.0.1"}, nil, "--status-address (statusAddress) \"10.0.0.1\""},
		{"negative drain delay", []string{"-f", "x", "--network", "n", "--drain-delay", "-1s"}, nil, "--drain-delay (drainDelay) -1s"},
		{"missing network", []string{"-f", "x"}, nil, "--network is required"},
		{"missing files", []string{"--network", "n"}, nil, "-f PATH is required"},
		{"bad duration", []string{"-f", "x", "--network", "n", "--idle-timeout", "soon"}, nil, "invalid value"},
		{"bad labels", []string{"-f", "x", "--network", "n", "--node-labels", "novalue"}, nil, "want key=value"},
		{"stray argument", []string{"-f", "x", "--network", "n", "extra"}, nil, "unexpected arguments"},
		{"tunnel and reconnect defaults", []string{"-f", "x", "--network", "n"},
			func(s settings) bool {
				return s.TunnelTransport == "auto" && time.Duration(s.TunnelIdleTimeout) == 5*time.Second &&
					time.Duration(s.GossipReconnectInterval) == 10*time.Second &&
					time.Duration(s.GossipReconnectTimeout) == 24*time.Hour
			}, ""},
		{"tunnel and reconnect flags", []string{"-f", "x", "--network", "n", "--tunnel-transport", "tcp", "--tunnel-idle-timeout", "20s",
			"--gossip-reconnect-interval", "0", "--gossip-reconnect-timeout", "72h"},
			func(s settings) bool {
				return s.TunnelTransport == "tcp" && time.Duration(s.TunnelIdleTimeout) == 20*time.Second && s.GossipReconnectInterval == 0 && time.Duration(s.GossipReconnectTimeout) == 72*time.Hour
			}, ""},
		{"tunnel and reconnect keys", []string{"--config", tunnelConfig},
			func(s settings) bool {
				return s.TunnelTransport == "quic" && time.Duration(s.GossipReconnectInterval) == 30*time.Second &&
					time.Duration(s.GossipReconnectTimeout) == time.Hour
			}, ""},
		{"bad tunnel transport", []string{"-f", "x", "--network", "n", "--tunnel-transport", "udp"}, nil,
			`--tunnel-transport (tunnelTransport): tunnel: unknown transport "udp" (want auto, quic or tcp)`},
		{"bad tunnel transport in the file", []string{"-f", "x", "--network", "n", "--config", badTransport}, nil, `unknown transport "QUIC"`},
		{"zero tunnel idle timeout", []string{"-f", "x", "--network", "n", "--tunnel-idle-timeout", "0"}, nil, "--tunnel-idle-timeout (tunnelIdleTimeout) 0s: want more than 0"},
		{"negative reconnect interval", []string{"-f", "x", "--network", "n", "--gossip-reconnect-interval", "-1s"}, nil, "want 0 (off) or more"},
		{"export and trust domain defaults", []string{"-f", "x", "--network", "n"},
			func(s settings) bool { return s.ExportDefault == "all" && s.TrustDomain == "" }, ""},
		{"export none", []string{"-f", "x", "--network", "n", "--export-default", "none", "--trust-domain", "prod.example"},
			func(s settings) bool { return s.ExportDefault == "none" && s.TrustDomain == "prod.example" }, ""},
		{"bad export default", []string{"-f", "x", "--network", "n", "--export-default", "some"}, nil, `--export-default (exportDefault) "some": want all or none`},
		{"bad trust domain", []string{"-f", "x", "--network", "n", "--trust-domain", "Prod/Example"}, nil, `--trust-domain (trustDomain) "Prod/Example"`},
		{"kubeconfig makes -f optional", []string{"--network", "n", "--kubeconfig", "/k", "--cluster-domain", "corp.example"},
			func(s settings) bool {
				return s.Kubeconfig == "/k" && s.ClusterDomain == "corp.example" && s.SystemNamespace == "istio-system" && len(s.Files) == 0
			}, ""},
		{"bad kubernetes mode", []string{"--network", "n", "-f", "x", "--kubernetes", "yes"}, nil, `--kubernetes (kubernetes) "yes": want auto, on or off`},
		{"zero reconnect timeout", []string{"-f", "x", "--network", "n", "--gossip-reconnect-timeout", "0"}, nil, "gossip-reconnect-timeout (gossipReconnectTimeout) 0s: want more than 0"},
		// The loops accept unless told not to (the default since de69a09;
		// gateway.Config's zero value is off), in a file without the key
		// too.
		{"loop accept on by default", []string{"-f", "x", "--network", "n"},
			func(s settings) bool { return s.LoopAccept }, ""},
		{"loop accept on with a file that does not name it", []string{"--config", config},
			func(s settings) bool { return s.LoopAccept }, ""},
		{"loop accept off by flag", []string{"-f", "x", "--network", "n", "--loop-accept=false"},
			func(s settings) bool { return !s.LoopAccept }, ""},
		{"loop accept off in the file", []string{"--config", loopOff},
			func(s settings) bool { return !s.LoopAccept }, ""},
		{"loop accept flag wins over the file", []string{"--config", loopOff, "--loop-accept"},
			func(s settings) bool { return s.LoopAccept }, ""},
		{"event loops per GOMAXPROCS by default", []string{"-f", "x", "--network", "n"},
			func(s settings) bool { return s.EventLoops == 0 }, ""},
		{"event loops by flag", []string{"-f", "x", "--network", "n", "--event-loops", "3"},
			func(s settings) bool { return s.EventLoops == 3 }, ""},
		{"event loops in the file", []string{"--config", oneLoop},
			func(s settings) bool { return s.EventLoops == 1 }, ""},
		{"loops pack at low load by default", []string{"-f", "x", "--network", "n"},
			func(s settings) bool { return !s.SpreadLoops }, ""},
		{"spread loops by flag", []string{"-f", "x", "--network", "n", "--spread-loops"},
			func(s settings) bool { return s.SpreadLoops }, ""},
		{"spread loops in the file", []string{"--config", spread},
			func(s settings) bool { return s.SpreadLoops }, ""},
		{"negative event loops", []string{"-f", "x", "--network", "n", "--event-loops", "-1"}, nil, "--event-loops (eventLoops) -1: want 0 (one per GOMAXPROCS) or more"},
		{"no locality by default", []string{"-f", "x", "--network", "n"},
			func(s settings) bool { return s.Locality == "" }, ""},
		{"locality region", []string{"-f", "x", "--network", "n", "--locality", "eu-west"},
			func(s settings) bool { return s.Locality == "eu-west" }, ""},
		{"locality region/zone/subzone", []string{"-f", "x", "--network", "n", "--locality", "eu-west/eu-west-1a/rack7"},
			func(s settings) bool { return s.Locality == "eu-west/eu-west-1a/rack7" }, ""},
		{"locality in the file", []string{"--config", locality},
			func(s settings) bool { return s.Locality == "eu-west/eu-west-1a" }, ""},
		{"locality of four parts", []string{"-f", "x", "--network", "n", "--locality", "eu/west/1a/rack7"}, nil,
			`--locality (locality) "eu/west/1a/rack7": want region[/zone[/subzone]]`},
		{"locality without a region", []string{"-f", "x", "--network", "n", "--locality", "/eu-west-1a"}, nil,
			`--locality (locality) "/eu-west-1a": want region[/zone[/subzone]]`},
		{"locality of four parts in the file", []string{"--config", badLocality}, nil,
			`--locality (locality) "eu/west/1a/rack7": want region[/zone[/subzone]]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := parseSettings(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(s) {
				t.Fatalf("settings: %+v", s)
			}
		})
	}
}

func TestHelpEverywhere(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"run", "--help"}, {"demo", "--help"}, {"sni", "--help"}, {"sni", "encode", "--help"},
		{"ca", "--help"}, {"ca", "init", "--help"}, {"ca", "issue", "--help"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var out bytes.Buffer
			err := dispatch(context.Background(), args, &out, &out)
			if err != nil && !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("err = %v", err)
			}
			if !strings.Contains(out.String(), "Usage") {
				t.Fatalf("no usage text:\n%s", out.String())
			}
		})
	}
}

func TestKubeMode(t *testing.T) {
	pod := kubeEnv{pod: true}
	for _, tt := range []struct {
		name string
		s    settings
		env  kubeEnv
		on   bool
		err  bool
	}{
		{"files only", settings{Kubernetes: "auto", Files: []string{"x"}}, kubeEnv{}, false, false},
		{"kubeconfig", settings{Kubernetes: "auto", Kubeconfig: "/k"}, kubeEnv{}, true, false},
		{"kubeconfig and files", settings{Kubernetes: "auto", Kubeconfig: "/k", Files: []string{"x"}}, pod, true, false},
		{"pod without files", settings{Kubernetes: "auto"}, pod, true, false},
		{"pod with files keeps to its files", settings{Kubernetes: "auto", Files: []string{"x"}}, pod, false, false},
		{"$KUBECONFIG alone does not turn it on", settings{Kubernetes: "auto", Files: []string{"x"}}, kubeEnv{kubeconfig: "/k"}, false, false},
		{"on in a pod with files", settings{Kubernetes: "on", Files: []string{"x"}}, pod, true, false},
		{"on with $KUBECONFIG", settings{Kubernetes: "on"}, kubeEnv{kubeconfig: "/k"}, true, false},
		{"on outside a pod without kubeconfig", settings{Kubernetes: "on"}, kubeEnv{}, false, true},
		{"off", settings{Kubernetes: "off"}, pod, false, false},
		{"off with kubeconfig", settings{Kubernetes: "off", Kubeconfig: "/k"}, kubeEnv{}, false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			on, err := kubeMode(tt.s, tt.env)
			if (err != nil) != tt.err || on != tt.on {
				t.Errorf("kubeMode = %v, %v; want %v, error %v", on, err, tt.on, tt.err)
			}
		})
	}
}
