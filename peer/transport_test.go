package peer

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/memberlist"

	"github.com/ewgate/ewgate/internal/leakcheck"
)

// TestTransportSendsDuringShutdown sends packets while the transport shuts
// down, as memberlist's gossip and probe timers do (Memberlist.Shutdown
// closes the transport before it stops them): no send fails, so memberlist
// logs no error on a clean shutdown, and a send after Shutdown is dropped.
func TestTransportSendsDuringShutdown(t *testing.T) {
	leakcheck.Check(t)
	sink, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"}, BindPort: 0})
	if err != nil {
		t.Fatal(err)
	}
	var in, out atomic.Uint64
	tr := newCountingTransport(nt, &in, &out)
	to := sink.LocalAddr().String()
	if _, err := tr.WriteTo([]byte("before"), to); err != nil {
		t.Fatalf("send before shutdown: %v", err)
	}

	stop := make(chan struct{})
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := tr.WriteToAddress([]byte("tick"), memberlist.Address{Addr: to}); err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		}()
	}
	if err := tr.Shutdown(); err != nil {
		t.Fatal(err)
	}
	// Senders go on after Shutdown returned, as memberlist's timers do
	// until it has stopped them.
	sent := out.Load()
	if _, err := tr.WriteTo([]byte("after"), to); err != nil {
		t.Errorf("send after shutdown: %v, want it dropped", err)
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Errorf("a send during shutdown failed (memberlist logs it at error level): %v", err)
	default:
	}
	if got := out.Load(); got != sent {
		t.Errorf("%d bytes counted as sent after shutdown", got-sent)
	}
}
