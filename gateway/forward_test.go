package gateway

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
)

// parked counts the goroutines whose stacks contain frame.
func parked(frame string) int {
	return strings.Count(string(leakcheck.Stacks()), frame)
}

// TestStreamParksWithoutBuffer: over both tunnel transports, a direction
// that reads a tunnel stream waits for bytes in Stream.Wait, holding no
// buffer, as one reading a socket waits for readiness; and a connection
// that parks and wakes many times, with messages of every size around
// the buffers', arrives byte-exact both ways.
func TestStreamParksWithoutBuffer(t *testing.T) {
	for _, path := range []string{pathQUIC, pathTCP} {
		t.Run(path, func(t *testing.T) { testStreamParks(t, newMeshPath(t, path)) })
	}
}

func testStreamParks(t *testing.T, m *mesh) {
	hello := recordHello(t, echoSNI)
	b := newRawBackend(t, len(hello), func(c net.Conn) { io.Copy(c, c) })
	m.start(rawYAML(freePort(t), b.ln.Addr().String()))
	c := m.rawConn(hello)
	// Bounds a hang; not a timing assertion.
	c.SetDeadline(time.Now().Add(time.Minute))
	sizes := []int{1, 100, 4095, 4096, 4097, 16 << 10, relayChunkSize, relayChunkSize + 1, 300 << 10}
	for round := range 3 {
		for i, size := range sizes {
			// The gateway clients dial reads the stream toward the client,
			// the far gateway the stream toward the endpoint: both wait.
			await.True(t, 10*time.Second, "both stream readers to park in Stream.Wait", func() bool {
				return parked("tunnel.(*Stream).Wait(") == 2
			})
			if n := parked("gateway.(*direction).read("); n != 0 {
				t.Fatalf("%d directions wait in a read, holding a buffer", n)
			}
			msg := bytes.Repeat([]byte{byte(round*len(sizes) + i)}, size)
			errc := make(chan error, 1)
			go func() {
				_, err := c.Write(msg)
				errc <- err
			}()
			got := make([]byte, size)
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatalf("round %d, %d bytes: reading the echo: %v", round, size, err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("round %d, %d bytes: echo differs", round, size)
			}
		}
	}
	c.CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after the half-close: %d more bytes, %v; want EOF", len(rest), err)
	}
}
