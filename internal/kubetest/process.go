package kubetest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// process is a child program in a process group of its own, with its
// output appended to a log file. It has no goroutine of its own (so that a
// Server started in TestMain does not count as a leak in the first test):
// exit is seen by looking for a zombie in /proc and reaped in stop.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
}

// startProcess starts argv with output appended to logPath.
func startProcess(name, logPath string, argv []string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: log: %w", name, err)
	}
	defer logf.Close() // the child has its own copy
	fmt.Fprintf(logf, "=== %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: stop kills the program and anything it forked.
	// Pdeathsig: a test binary that dies (panic, -timeout) takes its
	// children with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return &process{name: name, cmd: cmd, log: logPath}, nil
}

// exited reports whether the program has ended (it is a zombie waiting to
// be reaped, or gone).
func (p *process) exited() bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/stat")
	if err != nil {
		return true
	}
	// "pid (comm) S ...": the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X'
}

// stop sends SIGTERM to the process group, waits up to grace for the
// program to exit, then kills the group, and reaps the program. It returns
// an error only if the program could not be reaped.
func (p *process) stop(grace time.Duration) error {
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for !p.exited() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	// Whatever is left of the group (the program, if it ignored SIGTERM,
	// or anything it forked).
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	err := p.cmd.Wait()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return fmt.Errorf("stop %s: %w", p.name, err)
	}
	return nil
}

// tail returns the last n lines of the log, for error messages.
func (p *process) tail(n int) string {
	return tailFile(p.log, n)
}

// tailFile returns the last n lines of the file at path, or a note that it
// could not be read.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("last lines of %s:\n%s", path, strings.Join(lines, "\n"))
}
