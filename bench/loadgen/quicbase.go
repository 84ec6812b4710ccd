package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
)

// The quic-go baseline of bench/paths.sh: what quic-go itself carries on
// one stream between two processes, next to the QUIC tunnel. Both ends
// use mtlsConfig's SVIDs (TLS 1.3 mTLS, as tunnel links), quic-go's
// default configuration but for the flow-control windows of quicFlags
// (bench/paths.sh gives both ends the tunnel's), the sockets of
// quic.ListenAddr / quic.DialAddr (quic-go raises their UDP buffers as it
// does the tunnel's), and the sink's protocol after the stream opens:
// cmdDiscard or cmdSource.

// quicALPN is the protocol both baseline ends offer.
const quicALPN = "loadgen-quic"

// runQUICSink implements "loadgen quicsink": the baseline's server. It
// serves every stream of every connection until SIGTERM.
func runQUICSink(args []string) error {
	fs := flag.NewFlagSet("quicsink", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "UDP `address` to listen on")
	svidDir := fs.String("tls-svid", "", "SVID `directory` (ewgate ca issue --out)")
	qf := newQUICFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	tc, err := mtlsConfig(*svidDir, true, quicALPN)
	if err != nil {
		return err
	}
	qc := qf.config()
	qc.MaxIncomingStreams = 1000
	ln, err := quic.ListenAddr(*listen, tc, qc)
	if err != nil {
		return err
	}
	fmt.Printf("quicsink listening on %s\n", ln.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	for {
		c, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ln.Close()
			}
			return err
		}
		go func() {
			for {
				s, err := c.AcceptStream(ctx)
				if err != nil {
					return
				}
				go func() {
					if err := quicSinkStream(s); err != nil {
						logf("quicsink: %v", err)
						s.CancelRead(1)
						s.CancelWrite(1)
					}
				}()
			}
		}()
	}
}

func quicSinkStream(s *quic.Stream) error {
	var cmd [1]byte
	if _, err := io.ReadFull(s, cmd[:]); err != nil {
		return err
	}
	if err := serveBulk(s, cmd[0]); err != nil {
		return err
	}
	return s.Close()
}

// runQUICBase implements "loadgen quicbase": one connection to a
// quicsink, -mib MiB up on one stream (the sink answers its count), then
// -mib MiB down on another. It prints the first four columns of a
// throughput row.
func runQUICBase(args []string) error {
	fs := flag.NewFlagSet("quicbase", flag.ContinueOnError)
	addr := fs.String("addr", "", "quicsink UDP `address`")
	svidDir := fs.String("tls-svid", "", "SVID `directory` (ewgate ca issue --out)")
	mib := fs.Int("mib", 1024, "MiB to stream each way")
	label := fs.String("label", "quic-go", "row `label`")
	qf := newQUICFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	tc, err := mtlsConfig(*svidDir, false, quicALPN)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := quic.DialAddr(ctx, *addr, tc, qf.config())
	if err != nil {
		return err
	}
	defer c.CloseWithError(0, "")
	size := int64(*mib) << 20
	up, err := quicTimed(ctx, c, func(s *quic.Stream) (errKind, error) { return sendUp(s, s.Close, size) })
	if err != nil {
		return fmt.Errorf("up: %w", err)
	}
	// The sender's view of the way up, on stderr: on loopback a loss is
	// a packet the receiving quic-go dropped from its connection's queue
	// (256 packets), not one the kernel dropped.
	st := c.ConnectionStats()
	logf("quicbase: up: %d packets sent, %d lost; RTT min %v, smoothed %v; congestion window %d bytes",
		st.PacketsSent, st.PacketsLost, st.MinRTT, st.SmoothedRTT, st.CongestionWindow)
	down, err := quicTimed(ctx, c, func(s *quic.Stream) (errKind, error) { return receiveDown(s, s.Close, size) })
	if err != nil {
		return fmt.Errorf("down: %w", err)
	}
	gbps := func(d time.Duration) float64 { return float64(size) * 8 / d.Seconds() / 1e9 }
	fmt.Printf("| %s | %d | %.2f | %.2f |\n", *label, *mib, gbps(up), gbps(down))
	return nil
}

// quicTimed opens a new stream on c, runs xfer (sendUp or receiveDown)
// on it and returns the time from the opening until xfer checked every
// byte.
func quicTimed(ctx context.Context, c *quic.Conn, xfer func(s *quic.Stream) (errKind, error)) (time.Duration, error) {
	start := time.Now()
	s, err := c.OpenStreamSync(ctx)
	if err != nil {
		return 0, err
	}
	if _, err := xfer(s); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// quicFlags are the quic.Config settings both baseline ends take as
// flags, the maximum flow-control windows; zero leaves quic-go's default
// (6 MiB per stream, 15 MiB per connection).
type quicFlags struct {
	streamWindow, connWindow *uint64
}

func newQUICFlags(fs *flag.FlagSet) quicFlags {
	return quicFlags{
		streamWindow: fs.Uint64("stream-window", 0, "MaxStreamReceiveWindow in `bytes` (0: quic-go's default)"),
		connWindow:   fs.Uint64("conn-window", 0, "MaxConnectionReceiveWindow in `bytes` (0: quic-go's default)"),
	}
}

func (f quicFlags) config() *quic.Config {
	c := &quic.Config{
		MaxStreamReceiveWindow:     *f.streamWindow,
		MaxConnectionReceiveWindow: *f.connWindow,
	}
	// quic-go starts at 512 KiB per stream and 768 KiB per connection
	// and grows to the maximum; a maximum below that start is the start.
	if c.MaxStreamReceiveWindow != 0 {
		c.InitialStreamReceiveWindow = min(512<<10, c.MaxStreamReceiveWindow)
	}
	if c.MaxConnectionReceiveWindow != 0 {
		c.InitialConnectionReceiveWindow = min(768<<10, c.MaxConnectionReceiveWindow)
	}
	return c
}
