package peer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// The scale the catalog must hold (issue 12): 10,000 services with 3
// ports and 2 subsets each in every one of 8 networks, 16 gateways per
// network (128 in all).
const (
	scaleServices = 10000
	scaleNetworks = 8
	scaleGateways = 128
)

var scaleWords = []string{"reviews", "ratings", "details", "product", "cart", "checkout", "payment", "catalog",
	"search", "auth", "users", "orders", "billing", "ledger", "inventory", "shipping", "email", "ads", "recs", "media"}

// scaleSummary is network's summary of n services: host names from
// words, a random suffix and a namespace, as real clusters have; ports
// 80, 443 and 9080-9999 with names and protocols; subsets v1, v2 defined
// by a version label, health for them and the whole port in one locality;
// namespace and one service account, as definitions carry them.
func scaleSummary(network string, n int, seed uint64) Summary {
	rng := rand.New(rand.NewPCG(seed, 1))
	s := Summary{Network: network}
	seen := make(map[string]bool, n)
	loc := fmt.Sprintf("region-%d/zone-%d", seed%4, seed%3)
	for len(s.Services) < n {
		host := fmt.Sprintf("%s-%s-%x.team-%02d.svc.cluster.local",
			scaleWords[rng.IntN(len(scaleWords))], scaleWords[rng.IntN(len(scaleWords))], rng.Uint32()&0xffffff, rng.IntN(60))
		if seen[host] {
			continue
		}
		seen[host] = true
		ns := strings.Split(host, ".")[1]
		app := strings.Split(host, ".")[0]
		svc := ServiceSummary{Host: host, Namespace: ns,
			ServiceAccounts: []string{"spiffe://cluster.local/ns/" + ns + "/sa/" + app},
			Subsets: []SubsetDefinition{{Name: "v1", Labels: map[string]string{"version": "v1"}},
				{Name: "v2", Labels: map[string]string{"version": "v2"}}}}
		for i, p := range []uint16{80, 443, uint16(9080 + rng.IntN(900))} {
			ps := PortSummary{Port: p, Name: []string{"http", "https", "grpc"}[i], Protocol: []string{"HTTP", "TLS", "GRPC"}[i]}
			for _, sub := range []string{"", "v1", "v2"} {
				ps.Subsets = append(ps.Subsets, SubsetSummary{Name: sub, Healthy: []LocalityCount{{Locality: loc, Count: uint32(1 + rng.IntN(5))}}})
			}
			svc.Ports = append(svc.Ports, ps)
		}
		s.Services = append(s.Services, svc)
	}
	if err := canonicalize(&s); err != nil {
		panic(err)
	}
	return s
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkScaleSummary measures one gateway's summary at full scale:
// its encoded and compressed size, the time to decode it and the heap a
// decoded summary holds (what each gateway keeps per summary it holds).
//
//	go test -run='^$' -bench=ScaleSummary -benchtime=5x ./peer/
func BenchmarkScaleSummary(b *testing.B) {
	s := scaleSummary("network-0", scaleServices, 0)
	wire := newEntry("gw-0-00", Version{Epoch: 1, Seq: 1}, s, time.Time{}).wire()
	msg := encodeMessage(kindEntry, wire)
	before := heapInUse()
	e, err := decodeEntry(slices.Clone(wire))
	if err != nil {
		b.Fatal(err)
	}
	held := heapInUse() - before
	runtime.KeepAlive(e)
	b.ResetTimer()
	for range b.N {
		if _, err := decodeEntry(wire); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(wire)), "entry-bytes")
	b.ReportMetric(float64(len(msg)), "compressed-bytes")
	b.ReportMetric(float64(held), "heap-bytes/summary")
}

// BenchmarkScalePushPull measures the push/pull state of a node that holds
// every summary at full scale (128 gateways; the 16 of one network hold
// the same services) and whether a peer accepts it.
//
//	go test -run='^$' -bench=ScalePushPull -benchtime=1x ./peer/
func BenchmarkScalePushPull(b *testing.B) {
	n, err := Start(context.Background(), Config{Name: "probe", Network: "network-0", BindAddr: "127.0.0.1", Insecure: true, Profile: ProfileLocal})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Shutdown()
	per := scaleGateways / scaleNetworks
	var entries []*entry
	for nw := range scaleNetworks {
		s := scaleSummary(fmt.Sprintf("network-%d", nw), scaleServices, uint64(nw))
		for g := range per {
			origin := fmt.Sprintf("gw-%d-%02d", nw, g)
			v := Version{Epoch: 1, Seq: 1}
			entries = append(entries, newEntry(origin, v, s, time.Now()))
		}
	}
	n.mu.Lock()
	for _, e := range entries {
		n.store.merge(e)
		n.members[e.origin] = &member{state: StateAlive, meta: Meta{Network: e.summary.Network}}
	}
	n.gen++
	n.mu.Unlock()
	var raw int
	for _, e := range entries {
		raw += e.size()
	}
	d := (*delegate)(n)
	b.ResetTimer()
	var state []byte
	for range b.N {
		n.mu.Lock()
		n.gen++ // defeat the cache: time the build
		n.mu.Unlock()
		state = d.LocalState(false)
	}
	b.StopTimer()
	peer, err := Start(context.Background(), Config{Name: "peer", Network: "network-1", BindAddr: "127.0.0.1", Insecure: true, Profile: ProfileLocal})
	if err != nil {
		b.Fatal(err)
	}
	defer peer.Shutdown()
	pd := (*delegate)(peer)
	_, body, err := decodeMessage(state, 1<<30)
	if err != nil {
		b.Fatal(err)
	}
	stateBody := len(body)
	heap0 := heapInUse()
	start := time.Now()
	pd.MergeRemoteState(state, false)
	merge := time.Since(start)
	b.ReportMetric(float64(heapInUse()-heap0), "peer-heap-bytes")
	st := peer.Stats()
	b.ReportMetric(float64(raw), "entries-bytes")
	b.ReportMetric(float64(stateBody), "state-bytes")
	b.ReportMetric(float64(len(state)), "compressed-bytes")
	b.ReportMetric(float64(st.PushPulls), "accepted")
	b.ReportMetric(float64(st.Rejected[RejectStateTooLarge]), "refused-too-large")
	b.ReportMetric(merge.Seconds()*1000, "merge-ms")
}

// BenchmarkScaleCluster runs 128 real memberlist nodes on loopback
// (127.0.0.1-30, lan profile, encrypted) in 8 networks, each publishing
// a summary of services services of the scale shape, and measures gossip
// bytes per node per second at rest (over 95 s, more than one push/pull
// interval: lan's 30 s, which memberlist triples for 128 nodes) and while one service is added on one gateway
// every op, and the time until that service is held by every node (what
// routing from every network needs). The full 10,000 services per
// network do not fit 128 nodes in one process (see docs/benchmarks.md).
//
//	go test -run='^$' -bench=ScaleCluster -benchtime=10x -timeout=30m ./peer/
func BenchmarkScaleCluster(b *testing.B) {
	for _, services := range []int{20} {
		b.Run(fmt.Sprintf("gateways=%d/services=%d", scaleGateways, services), func(b *testing.B) {
			sums := make([]Summary, scaleNetworks)
			for nw := range sums {
				sums[nw] = scaleSummary(fmt.Sprintf("network-%d", nw), services, uint64(nw))
			}
			var nodes []*Node
			for i := range scaleGateways {
				nw := i % scaleNetworks
				name := fmt.Sprintf("gw-%d-%02d", nw, i/scaleNetworks)
				cfg := testConfig(name, sums[nw].Network)
				cfg.Profile = ProfileLAN
				cfg.Logger = nil
				cfg.BindAddr = fmt.Sprintf("127.0.0.%d", i%30+1)
				for j := max(0, i-3); j < i; j++ {
					cfg.Join = append(cfg.Join, nodes[j].Addr().String())
				}
				n := startNode(b, cfg)
				if err := n.Publish(sums[nw]); err != nil {
					b.Fatal(err)
				}
				nodes = append(nodes, n)
			}
			waitWithin(b, 10*time.Minute, "every node holds every summary", func() error {
				for _, n := range nodes {
					ss := n.Summaries()
					if len(ss) != scaleGateways {
						return fmt.Errorf("%s holds %d summaries", n.Name(), len(ss))
					}
					for _, s := range ss {
						if len(s.Summary.Services) != services {
							return fmt.Errorf("%s holds %d services of %s", n.Name(), len(s.Summary.Services), s.Node)
						}
					}
				}
				return nil
			})
			bytesOut := func() uint64 {
				var t uint64
				for _, n := range nodes {
					t += n.Stats().BytesOut
				}
				return t
			}
			// At rest.
			b0, t0 := bytesOut(), time.Now()
			// A measuring window, not synchronisation: memberlist scales the
			// push/pull interval with the cluster (30 s x 3 for 128 lan
			// nodes), and the window spans one.
			time.Sleep(95 * time.Second)
			rest := float64(bytesOut()-b0) / float64(len(nodes)) / time.Since(t0).Seconds()

			deltaStats := func() (sent, applied, misses uint64) {
				for _, n := range nodes {
					st := n.Stats()
					sent += st.DeltasSent
					applied += st.DeltasApplied
					misses += st.DeltaMisses
				}
				return
			}
			sent0, applied0, misses0 := deltaStats()
			origin := nodes[0]
			s := sums[0]
			var took []time.Duration
			b1, t1 := bytesOut(), time.Now()
			b.ResetTimer()
			for i := range b.N {
				extra := scaleSummary("network-0", 1, uint64(1000+i)).Services[0]
				s.Services = append(slices.Clone(s.Services), extra)
				if err := canonicalize(&s); err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				if err := origin.Publish(s); err != nil {
					b.Fatal(err)
				}
				// Poll every node until each holds the new service; the
				// time is when the last one did.
				pending := slices.Clone(nodes)
				deadline := time.Now().Add(time.Minute)
				for len(pending) > 0 {
					pending = slices.DeleteFunc(pending, func(n *Node) bool {
						got, _ := summaryFrom(n, origin.Name())
						_, ok := slices.BinarySearchFunc(got.Summary.Services, extra.Host, byHost)
						return ok
					})
					if time.Now().After(deadline) {
						b.Fatalf("%d nodes lack the new service after a minute", len(pending))
					}
					time.Sleep(time.Millisecond) // polling interval
				}
				took = append(took, time.Since(start))
			}
			b.StopTimer()
			changing := float64(bytesOut()-b1) / float64(len(nodes)) / time.Since(t1).Seconds()
			slices.Sort(took)
			sent1, applied1, misses1 := deltaStats()
			b.ReportMetric(rest, "rest-bytes/node/s")
			b.ReportMetric(changing, "changing-bytes/node/s")
			b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "p50-ms/everywhere")
			b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "max-ms/everywhere")
			b.ReportMetric(float64(sent1-sent0), "deltas-sent")
			b.ReportMetric(float64(applied1-applied0), "deltas-applied")
			b.ReportMetric(float64(misses1-misses0), "delta-misses")
		})
	}
}
