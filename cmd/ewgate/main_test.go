package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The test binary doubles as the ewgate binary: with this variable set it
// runs main instead of the tests, so tests start ewgate as a real process
// (built with the race detector) without a separate build step.
const runAsEwgate = "EWGATE_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runAsEwgate) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// proc is an ewgate process started by a test.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	out    syncBuffer // stdout and stderr
	exited chan struct{}
	err    error
}

// startEwgate starts ewgate with args; the process is killed at the end of
// the test if it is still running. A "run" without --status-address gets
// it turned off: gateways of one test share 127.0.0.1, where each would
// default to port 15021. Tests of the status port give the flag.
func startEwgate(t *testing.T, args ...string) *proc {
	t.Helper()
	if len(args) > 0 && args[0] == "run" && !slices.ContainsFunc(args, func(a string) bool {
		return a == "--status-address" || strings.HasPrefix(a, "--status-address=")
	}) {
		args = append(slices.Clone(args), "--status-address", "")
	}
	p := &proc{t: t, exited: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], args...)
	// The race runtime sleeps a second at exit unless told not to.
	p.cmd.Env = append(os.Environ(), runAsEwgate+"=1", "GORACE=atexit_sleep_ms=0")
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("ewgate %s output:\n%s", strings.Join(args, " "), p.output())
		}
	})
	return p
}

func (p *proc) output() string { return p.out.String() }

// wait waits for the process to exit and returns its error.
func (p *proc) wait(d time.Duration) error {
	p.t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(d):
		p.t.Fatalf("ewgate did not exit within %v", d)
		return nil
	}
}

// runEwgate runs ewgate to completion.
func runEwgate(t *testing.T, args ...string) (string, error) {
	t.Helper()
	p := startEwgate(t, args...)
	err := p.wait(60 * time.Second)
	return p.output(), err
}

// httpGet returns the status and body of an admin URL.
func httpGet(url string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metric returns the value of one metric line ("name{labels}") from
// /metrics, or -1.
func metric(t *testing.T, admin, series string) int {
	t.Helper()
	_, body, err := httpGet("http://" + admin + "/metrics")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var n int
			fmt.Sscan(v, &n)
			return n
		}
	}
	return -1
}

// syncBuffer is a bytes.Buffer safe for a writing process and a polling test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
