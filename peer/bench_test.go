package peer

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkConvergence measures how long a summary change published on one
// gateway takes to reach every gateway of an N-node cluster, with real
// memberlist nodes on 127.0.0.x UDP/TCP sockets (port 0, local profile,
// encrypted). One op is one change; ns/op is the time until the last node
// holds it. It also reports the gossip traffic (UDP and TCP, memberlist's
// own included) per node per second over the timed part.
//
//	go test -run='^$' -bench=Convergence -benchtime=20x ./peer/
func BenchmarkConvergence(b *testing.B) {
	for _, size := range []int{16, 64, 128} {
		b.Run(fmt.Sprintf("N=%d", size), func(b *testing.B) {
			nodes := benchCluster(b, size)
			origin := nodes[0]
			var bytesBefore uint64
			for _, n := range nodes {
				st := n.Stats()
				bytesBefore += st.BytesOut
			}
			start := time.Now()
			b.ResetTimer()
			for i := range b.N {
				if err := origin.Publish(summaryOf("n0", uint32(i+1), "reviews.bookinfo.svc.cluster.local")); err != nil {
					b.Fatal(err)
				}
				s, _ := summaryFrom(origin, origin.Name())
				want := s.Version
				waitFor(b, "convergence", func() error {
					for _, n := range nodes {
						if s, _ := summaryFrom(n, origin.Name()); s.Version != want {
							return fmt.Errorf("%s holds %v, want %v", n.Name(), s.Version, want)
						}
					}
					return nil
				})
			}
			b.StopTimer()
			elapsed := time.Since(start)
			var bytesAfter uint64
			for _, n := range nodes {
				bytesAfter += n.Stats().BytesOut
			}
			b.ReportMetric(float64(bytesAfter-bytesBefore)/float64(size)/elapsed.Seconds(), "bytes/node/s")
			b.ReportMetric(float64(elapsed.Milliseconds())/float64(b.N), "ms/change")
		})
	}
}

// benchCluster starts size nodes, each joining up to three earlier ones,
// and waits (untimed, up to 5 minutes: membership of concurrent joins may
// need memberlist's push/pull to settle) until every node holds every
// summary.
func benchCluster(b *testing.B, size int) []*Node {
	b.Helper()
	var nodes []*Node
	for i := range size {
		name := fmt.Sprintf("n%d", i)
		cfg := testConfig(name, name)
		cfg.BindAddr = fmt.Sprintf("127.0.0.%d", i%30+1)
		for j := max(0, i-3); j < i; j++ {
			cfg.Join = append(cfg.Join, nodes[j].Addr().String())
		}
		nodes = append(nodes, startNode(b, cfg))
	}
	for _, n := range nodes {
		if err := n.WaitJoined(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	waitWithin(b, 5*time.Minute, "cluster", func() error {
		for _, n := range nodes {
			if got := len(n.Summaries()); got != size {
				return fmt.Errorf("%s holds %d summaries", n.Name(), got)
			}
		}
		return nil
	})
	return nodes
}
