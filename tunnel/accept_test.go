package tunnel

import (
	"bytes"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
)

// TestAcceptAfterEMFILE: the TCP fallback's accept fails with a real
// "too many open files" while the process is out of descriptors; the loop
// backs off and retries, so a link that waited in the listen backlog is
// set up once descriptors are free (one accept error used to stop the
// listener for good).
func TestAcceptAfterEMFILE(t *testing.T) {
	leakcheck.Check(t)
	ctx := testContext(t)
	ca := newCA(t, "a.test")
	server := newEndpoint(t, "127.0.0.1:0", Config{Source: newSource(t, ca, "/gw/b"), Handler: echo})
	client := newEndpoint(t, "127.0.0.1:0", Config{Source: newSource(t, ca, "/gw/a"), Transport: TransportTCP})

	fillers := exhaustFDs(t)
	// Leave one descriptor: the client's socket. The server's accept has
	// none left.
	syscall.Close(fillers[len(fillers)-1])
	fillers = fillers[:len(fillers)-1]
	type result struct {
		s   *Stream
		err error
	}
	dialed := make(chan result, 1)
	go func() {
		s, err := client.Dial(ctx, server.Addr().String(), key("x.test"))
		dialed <- result{s, err}
	}()
	await.True(t, testTimeout, "an accept error", func() bool { return server.Stats().AcceptErrors > 0 })
	for _, fd := range fillers {
		syscall.Close(fd)
	}
	r := <-dialed
	if r.err != nil {
		t.Fatalf("Dial after descriptors were freed: %v", r.err)
	}
	defer r.s.Close()
	checkEcho(t, r.s, 1)
}

// exhaustFDs lowers the open-file limit to a little above the highest
// descriptor open and opens /dev/null until the process is out of
// descriptors. It returns the descriptors opened; the limit is restored
// when the test ends, and the caller closes them.
func exhaustFDs(t *testing.T) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	highest := 0
	for _, e := range entries {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			highest = max(highest, n)
		}
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	saved := lim
	lim.Cur = uint64(highest) + 64
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
			t.Errorf("restoring RLIMIT_NOFILE: %v", err)
		}
	})
	var fds []int
	for {
		fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err == syscall.EMFILE {
			return fds
		}
		if err != nil {
			for _, fd := range fds {
				syscall.Close(fd)
			}
			t.Fatalf("filling descriptors: %v", err)
		}
		fds = append(fds, fd)
	}
}

// TestRefusalSuppressedAllocatesNothing: a refusal the rate-limited log
// leaves out (a flood of connections over MaxHandshakes) only counts: it
// builds none of the log line's attributes (the peer's address string,
// the boxed values), so it allocates nothing.
func TestRefusalSuppressedAllocatesNothing(t *testing.T) {
	var logged bytes.Buffer
	e := &Endpoint{
		log:        slog.New(slog.NewTextHandler(&logged, nil)),
		inReject:   make(map[string]uint64),
		handshakes: make(chan struct{}), // none free
		cfg:        Config{MaxHandshakes: 1},
	}
	e.rejectLogged.Interval = time.Hour // every refusal after the first is left out
	addr := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 4433}
	refuse := func() {
		if _, ok := e.startHandshake(addr, TransportTCP); ok {
			t.Fatal("a handshake slot was taken, want a refusal")
		}
	}
	refuse()
	if !strings.Contains(logged.String(), "peer=192.0.2.1:4433") {
		t.Fatalf("the first refusal logged %q, want its peer", logged.String())
	}
	if n := testing.AllocsPerRun(100, refuse); n != 0 {
		t.Errorf("a suppressed refusal allocates %.1f times, want 0", n)
	}
	if got := e.Stats().InboundRejections[ReasonTooManyHandshakes]; got != 102 {
		t.Errorf("%d refusals counted, want 102", got)
	}
	if strings.Count(logged.String(), "\n") != 1 {
		t.Errorf("logged %q, want one line", logged.String())
	}
}
