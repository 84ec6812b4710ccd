package main

import (
	"encoding/binary"
	"net"
	"testing"

	"github.com/ewgate/ewgate/internal/leakcheck"
)

func TestStreamsCheckCounts(t *testing.T) {
	leakcheck.Check(t)
	const size = 64 << 10
	sink := func(t *testing.T) string { return startSink(t, nil) }
	tests := []struct {
		name   string
		addr   func(t *testing.T) string
		stream func(cl *client, size int64, errs *errorCount)
		kind   errKind // of the failure, if any
		want   int
	}{
		{"up to the sink", sink, streamUp, 0, 0},
		{"down from the sink", sink, streamDown, 0, 0},
		{"up to a backend that counts a byte short", func(t *testing.T) string {
			return startBackend(t, func(c *net.TCPConn) {
				if got, err := discard(c); err == nil {
					binary.Write(c, binary.BigEndian, uint64(got-1))
				}
			})
		}, streamUp, errMismatch, 1},
		{"down from a backend that sends a byte short", func(t *testing.T) string {
			return startBackend(t, func(c *net.TCPConn) {
				var n uint64
				if binary.Read(c, binary.BigEndian, &n) == nil {
					source(c, int64(n)-1)
				}
			})
		}, streamDown, errMismatch, 1},
		{"up to a backend that closes without a count", func(t *testing.T) string {
			return startBackend(t, func(c *net.TCPConn) { discard(c) })
		}, streamUp, errRead, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := newTestClient(t, tt.addr(t), "")
			var errs errorCount
			tt.stream(cl, size, &errs)
			if errs.total() != tt.want || errs.n[tt.kind] != tt.want {
				t.Fatalf("errors: %v, want %d of kind %s", &errs, tt.want, tt.kind)
			}
		})
	}
}
