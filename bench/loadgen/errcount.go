package main

import (
	"fmt"
	"strings"
	"sync"
)

// errKind is the class of a failed operation, as the report counts them.
type errKind int

const (
	errConnect  errKind = iota // dial, ClientHello or handshake, backend ack
	errWrite                   // a write to an established connection
	errRead                    // a short read, EOF or reset where data was due
	errMismatch                // bytes (or a byte count) other than those sent
	errClosed                  // an idle connection the proxy closed
	errPace                    // the client's own pacing failed: its epoll wait (rr -rate)
	numErrKinds
)

var errKindNames = [numErrKinds]string{"connect", "write", "read", "mismatch", "closed", "pace"}

func (k errKind) String() string { return errKindNames[k] }

// errorCount counts failed operations by kind and keeps the first error of
// each, for the report's errors column and its stderr detail. The zero
// value is ready; it is safe for concurrent use.
type errorCount struct {
	mu    sync.Mutex
	n     [numErrKinds]int
	first [numErrKinds]error
}

// add counts one failure of kind k.
func (e *errorCount) add(k errKind, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n[k]++
	if e.first[k] == nil {
		e.first[k] = err
	}
}

// total is the number of failures of every kind.
func (e *errorCount) total() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := 0
	for _, n := range e.n {
		t += n
	}
	return t
}

// String lists the counts by kind with each kind's first error, "none"
// when nothing failed.
func (e *errorCount) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var parts []string
	for k, n := range e.n {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d (first: %v)", errKind(k), n, e.first[k]))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "; ")
}

// result is a client mode's outcome once its row is printed: nil if
// nothing failed, else an error with the detail by kind, so that loadgen
// exits non-zero (scripts that wait for a route retry on it).
func (e *errorCount) result(label string) error {
	if n := e.total(); n > 0 {
		return fmt.Errorf("%s: %d errors: %s", label, n, e)
	}
	return nil
}
