package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestDemoOnceLogsNoError runs the demo as `ewgate demo --once` does, with
// info logs: the checks pass and a clean exit logs no error (memberlist's
// timers used to send on the gossip socket after it closed, logging
// "Failed to send gossip" on about every other run).
func TestDemoOnceLogsNoError(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := runDemo(context.Background(), []string{"--once", "--log-level", "info"}, &stdout, &stderr); err != nil {
		t.Fatalf("demo: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "local mode: A tunnels to B") {
		t.Errorf("no traffic report:\n%s", stdout.String())
	}
	for _, line := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(line, "level=ERROR") {
			t.Errorf("error logged: %s", line)
		}
	}
}
