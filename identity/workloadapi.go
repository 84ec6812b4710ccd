package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// DefaultStartTimeout is how long [NewWorkloadAPISource] waits for the first
// SVID when WorkloadAPIConfig.StartTimeout is zero.
const DefaultStartTimeout = 10 * time.Second

// WorkloadAPIConfig configures a [WorkloadAPISource].
type WorkloadAPIConfig struct {
	// Socket is the Workload API address: "unix:///path/to/agent.sock",
	// a bare absolute path (taken as a unix socket) or "tcp://IP:PORT".
	// Empty means the SPIFFE_ENDPOINT_SOCKET environment variable.
	Socket string
	// StartTimeout bounds the wait for the first SVID. Zero means
	// DefaultStartTimeout.
	StartTimeout time.Duration
	// Logger receives Workload API client messages (connection failures at
	// warn level). Nil discards them.
	Logger *slog.Logger
}

// WorkloadAPISource is a [Source] fed by the SPIFFE Workload API (for example
// a SPIRE agent). It keeps a stream open and applies every push at once: the
// SVID (the first one the API returns) and the bundles of the own and of all
// federated trust domains. If the stream breaks it reconnects with backoff
// and keeps serving the last update meanwhile.
type WorkloadAPISource struct {
	x509 *workloadapi.X509Source
	addr string
}

// NewWorkloadAPISource connects to the Workload API and blocks until the
// first SVID arrives, StartTimeout passes or ctx is done; ctx bounds
// start-up only. The error then names the address and the last failure.
// The source runs until Close.
func NewWorkloadAPISource(ctx context.Context, cfg WorkloadAPIConfig) (*WorkloadAPISource, error) {
	addr := cfg.Socket
	if addr == "" {
		addr, _ = workloadapi.GetDefaultAddress()
	}
	if addr == "" {
		return nil, errors.New("identity: no SPIFFE Workload API address: set the socket (--spiffe-socket unix:///path) or SPIFFE_ENDPOINT_SOCKET")
	}
	if strings.HasPrefix(addr, "/") {
		addr = "unix://" + addr
	}
	if err := workloadapi.ValidateAddress(addr); err != nil {
		return nil, fmt.Errorf("identity: SPIFFE Workload API address %q: %w", addr, err)
	}
	timeout := cfg.StartTimeout
	if timeout <= 0 {
		timeout = DefaultStartTimeout
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	log := &spiffeLogger{log: logger.With("spiffe_socket", addr)}

	startCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	src, err := workloadapi.NewX509Source(startCtx, workloadapi.WithClientOptions(
		workloadapi.WithAddr(addr),
		workloadapi.WithLogger(log),
	))
	if err != nil {
		if ctxErr := startCtx.Err(); ctxErr != nil {
			last := "no answer"
			if e := log.lastError(); e != "" {
				last = "last error: " + strings.TrimPrefix(e, "Failed to watch the Workload API: ")
			}
			return nil, fmt.Errorf("identity: no SPIFFE Workload API answered on %s within %s: %s: %w", addr, timeout, last, ctxErr)
		}
		return nil, fmt.Errorf("identity: SPIFFE Workload API on %s: %w", addr, err)
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		_ = src.Close()
		return nil, fmt.Errorf("identity: SPIFFE Workload API on %s: %w", addr, err)
	}
	logger.Info("SPIFFE Workload API source started", "spiffe_socket", addr, "spiffe_id", svid.ID.String(),
		"expires", svid.Certificates[0].NotAfter)
	return &WorkloadAPISource{x509: src, addr: addr}, nil
}

// Addr returns the Workload API address in use.
func (s *WorkloadAPISource) Addr() string { return s.addr }

// GetX509SVID returns the latest SVID pushed by the Workload API.
func (s *WorkloadAPISource) GetX509SVID() (*x509svid.SVID, error) {
	return s.x509.GetX509SVID()
}

// GetX509BundleForTrustDomain returns the latest bundle pushed for td.
func (s *WorkloadAPISource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.x509.GetX509BundleForTrustDomain(td)
}

// Updated returns a channel that receives a value after each update from
// the Workload API (at most one pending).
func (s *WorkloadAPISource) Updated() <-chan struct{} { return s.x509.Updated() }

// Close closes the Workload API connection and stops its goroutines. After
// Close, the Get methods return errors. Close is idempotent.
func (s *WorkloadAPISource) Close() error {
	if err := s.x509.Close(); err != nil {
		return fmt.Errorf("identity: close SPIFFE Workload API source %s: %w", s.addr, err)
	}
	return nil
}

// spiffeLogger adapts slog to go-spiffe's logger and remembers the last
// error for start-up failure messages.
type spiffeLogger struct {
	log *slog.Logger

	mu   sync.Mutex
	last string
}

func (l *spiffeLogger) Debugf(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l *spiffeLogger) Infof(format string, args ...any)  { l.log.Info(fmt.Sprintf(format, args...)) }
func (l *spiffeLogger) Warnf(format string, args ...any)  { l.log.Warn(fmt.Sprintf(format, args...)) }

// Errorf logs at warn level: the client retries, so these are not fatal.
func (l *spiffeLogger) Errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.mu.Lock()
	l.last = msg
	l.mu.Unlock()
	l.log.Warn(msg)
}

func (l *spiffeLogger) lastError() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}
