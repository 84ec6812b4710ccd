package main

import (
	"context"
	"flag"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/leakcheck"
	"github.com/quic-go/quic-go"
)

// quicbase's two streams against quicsink's stream handler, over real
// quic-go with the SVIDs of compare.sh's tls mode.
func TestQUICBaseStreams(t *testing.T) {
	leakcheck.Check(t)
	ca := newTestCA(t)
	scfg, err := mtlsConfig(writeSVID(t, ca, sinkID), true, quicALPN)
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := mtlsConfig(writeSVID(t, ca, clientID), false, quicALPN)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", scfg, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	var wg sync.WaitGroup
	defer func() { cancel(); ln.Close(); wg.Wait() }()
	wg.Go(func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		defer c.CloseWithError(0, "")
		for {
			s, err := c.AcceptStream(ctx)
			if err != nil {
				return
			}
			if err := quicSinkStream(s); err != nil {
				t.Errorf("quicSinkStream: %v", err)
			}
		}
	})
	c, err := quic.DialAddr(ctx, ln.Addr().String(), ccfg, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseWithError(0, "")
	const size = 1 << 20
	if _, err := quicTimed(ctx, c, func(s *quic.Stream) (errKind, error) { return sendUp(s, s.Close, size) }); err != nil {
		t.Fatalf("up: %v", err)
	}
	if _, err := quicTimed(ctx, c, func(s *quic.Stream) (errKind, error) { return receiveDown(s, s.Close, size) }); err != nil {
		t.Fatalf("down: %v", err)
	}
}

// The window flags set quic-go's maxima, and its starting windows never
// exceed them; unset, quic-go's defaults stand.
func TestQUICFlagsConfig(t *testing.T) {
	tests := []struct {
		args                                     []string
		initStream, maxStream, initConn, maxConn uint64
	}{
		{nil, 0, 0, 0, 0},
		{[]string{"-stream-window", "8388608", "-conn-window", "67108864"}, 512 << 10, 8 << 20, 768 << 10, 64 << 20},
		{[]string{"-stream-window", "262144", "-conn-window", "393216"}, 256 << 10, 256 << 10, 384 << 10, 384 << 10},
	}
	for _, tt := range tests {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		qf := newQUICFlags(fs)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		c := qf.config()
		if c.InitialStreamReceiveWindow != tt.initStream || c.MaxStreamReceiveWindow != tt.maxStream ||
			c.InitialConnectionReceiveWindow != tt.initConn || c.MaxConnectionReceiveWindow != tt.maxConn {
			t.Errorf("%q: stream %d/%d, connection %d/%d; want %d/%d, %d/%d", tt.args,
				c.InitialStreamReceiveWindow, c.MaxStreamReceiveWindow, c.InitialConnectionReceiveWindow, c.MaxConnectionReceiveWindow,
				tt.initStream, tt.maxStream, tt.initConn, tt.maxConn)
		}
	}
}
