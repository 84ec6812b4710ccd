package identity

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// DefaultDebounce is how long a [FileSource] waits after the last file
// change before reloading, when FileConfig.Debounce is zero.
const DefaultDebounce = 100 * time.Millisecond

// BundleFile names a PEM file of root certificates for one trust domain.
type BundleFile struct {
	// TrustDomain the roots belong to. The zero value means the trust domain
	// of the SVID itself.
	TrustDomain spiffeid.TrustDomain
	// Path of the PEM file; it may hold several roots.
	Path string
}

// ParseBundleFile parses the value of a --trust-bundle flag: "PATH" (the own
// trust domain) or "TRUST_DOMAIN=PATH".
func ParseBundleFile(s string) (BundleFile, error) {
	if name, path, ok := strings.Cut(s, "="); ok && !strings.Contains(name, "/") {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return BundleFile{}, fmt.Errorf("identity: trust bundle %q: trust domain %q: %w", s, name, err)
		}
		if path == "" {
			return BundleFile{}, fmt.Errorf("identity: trust bundle %q: empty path", s)
		}
		return BundleFile{TrustDomain: td, Path: path}, nil
	}
	if s == "" {
		return BundleFile{}, errors.New("identity: trust bundle: empty path")
	}
	return BundleFile{Path: s}, nil
}

// FileConfig configures a [FileSource].
type FileConfig struct {
	// CertFile is the SVID certificate chain, PEM, leaf first.
	CertFile string
	// KeyFile is the SVID private key, PEM: PKCS#8 ("PRIVATE KEY"), SEC 1
	// ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY").
	KeyFile string
	// Bundles are the trust bundles. One must cover the SVID's own trust
	// domain; others add federated trust domains. Several files for the same
	// trust domain are merged, e.g. the old and the new root during a root
	// rotation.
	Bundles []BundleFile
	// Debounce is the quiet time after a file change before reloading, so
	// that a set of files replaced one by one is read once. Zero means
	// DefaultDebounce.
	Debounce time.Duration
	// Logger receives reloads (info) and rejected files (error). Nil
	// discards them.
	Logger *slog.Logger
}

// FileSource is a [Source] read from PEM files and reloaded when they
// change. It watches the files' directories, so files replaced by rename (as
// editors and Kubernetes secret volumes do) are picked up. A change that
// does not load (bad PEM, key not matching, no SVID, missing bundle) is
// logged and the last good SVID and bundles stay in force.
type FileSource struct {
	cfg     FileConfig
	log     *slog.Logger
	state   atomic.Pointer[fileState]
	watcher *fsnotify.Watcher
	failed  []byte // files of the last failed load; used by watch only

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// fileState is one consistent load of all files.
type fileState struct {
	svid    *x509svid.SVID
	bundles *x509bundle.Set
	raw     []byte // the files' bytes, to skip reloads that change nothing
}

// NewFileSource loads the files and starts watching them. It fails if the
// initial load fails. ctx bounds start-up only: if it is already done,
// NewFileSource returns its error. The source watches until Close.
func NewFileSource(ctx context.Context, cfg FileConfig) (*FileSource, error) {
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, errors.New("identity: file source needs a certificate file and a key file (--svid-cert, --svid-key)")
	}
	if len(cfg.Bundles) == 0 {
		return nil, errors.New("identity: file source needs at least one trust bundle file (--trust-bundle)")
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("identity: file source: %w", err)
	}
	st, err := loadFiles(cfg)
	if err != nil {
		return nil, fmt.Errorf("identity: file source: %w", err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("identity: file source: watch files: %w", err)
	}
	dirs := map[string]bool{}
	for _, p := range cfg.paths() {
		dir := filepath.Dir(p)
		if dirs[dir] {
			continue
		}
		dirs[dir] = true
		if err := w.Add(dir); err != nil {
			_ = w.Close()
			return nil, fmt.Errorf("identity: file source: watch directory %s: %w", dir, err)
		}
	}
	s := &FileSource{cfg: cfg, log: log, watcher: w, done: make(chan struct{})}
	s.state.Store(st)
	s.logLoaded("loaded SVID from files", st)
	s.wg.Add(1)
	go s.watch()
	return s, nil
}

// GetX509SVID returns the SVID of the last good load.
func (s *FileSource) GetX509SVID() (*x509svid.SVID, error) {
	return s.state.Load().svid, nil
}

// GetX509BundleForTrustDomain returns td's bundle from the last good load.
func (s *FileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.state.Load().bundles.GetX509BundleForTrustDomain(td)
}

// Close stops watching the files and waits for the watcher goroutine to
// exit. The last loaded SVID and bundles stay available. Close is
// idempotent.
func (s *FileSource) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.wg.Wait()
		if err := s.watcher.Close(); err != nil {
			s.closeErr = fmt.Errorf("identity: close file source: %w", err)
		}
	})
	return s.closeErr
}

// watch reloads the files, debounced, whenever something changes in their
// directories.
func (s *FileSource) watch() {
	defer s.wg.Done()
	timer := time.NewTimer(0)
	if !timer.Stop() {
		<-timer.C
	}
	defer timer.Stop()
	for {
		select {
		case <-s.done:
			return
		case ev, ok := <-s.watcher.Events:
			if !ok {
				return
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			// Any change in the directories counts: Kubernetes swaps a
			// "..data" symlink rather than the files themselves.
			timer.Reset(s.cfg.Debounce)
		case err, ok := <-s.watcher.Errors:
			if !ok {
				return
			}
			s.log.Error("watching SVID files", "err", err)
			timer.Reset(s.cfg.Debounce)
		case <-timer.C:
			s.reload()
		}
	}
}

// reload loads the files and, if they load and differ from the current
// state, makes them current.
func (s *FileSource) reload() {
	files, err := s.cfg.read()
	raw := bytes.Join(files, []byte{0})
	if err == nil && (bytes.Equal(raw, s.state.Load().raw) || bytes.Equal(raw, s.failed)) {
		return // nothing new: unchanged, or the same bad files again
	}
	var st *fileState
	if err == nil {
		st, err = parseFiles(s.cfg, files)
	}
	if err != nil {
		s.failed = raw
		s.log.Error("SVID files changed but do not load; keeping the last good SVID and bundles",
			"cert", s.cfg.CertFile, "key", s.cfg.KeyFile, "err", err)
		return
	}
	s.failed = nil
	s.state.Store(st)
	s.logLoaded("reloaded SVID from files", st)
}

func (s *FileSource) logLoaded(msg string, st *fileState) {
	leaf := st.svid.Certificates[0]
	tds := make([]string, 0, st.bundles.Len())
	for _, b := range st.bundles.Bundles() {
		tds = append(tds, b.TrustDomain().Name())
	}
	s.log.Info(msg, "spiffe_id", st.svid.ID.String(), "serial", leaf.SerialNumber.Text(16),
		"expires", leaf.NotAfter, "trust_domains", tds)
	if _, _, err := x509svid.Verify(st.svid.Certificates, st.bundles); err != nil {
		s.log.Warn("own SVID does not verify against the own trust bundle; peers using the same bundle will reject it",
			"spiffe_id", st.svid.ID.String(), "err", err)
	}
}

// paths lists every configured file.
func (c *FileConfig) paths() []string {
	p := []string{c.CertFile, c.KeyFile}
	for _, b := range c.Bundles {
		p = append(p, b.Path)
	}
	return p
}

// read returns the contents of every configured file, in paths order.
func (c *FileConfig) read() ([][]byte, error) {
	paths := c.paths()
	files := make([][]byte, len(paths))
	for i, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		files[i] = b
	}
	return files, nil
}

// loadFiles reads and validates every file of cfg.
func loadFiles(cfg FileConfig) (*fileState, error) {
	files, err := cfg.read()
	if err != nil {
		return nil, err
	}
	return parseFiles(cfg, files)
}

// parseFiles validates the contents of cfg's files, as returned by read.
func parseFiles(cfg FileConfig, files [][]byte) (*fileState, error) {
	svid, err := parseSVIDPEM(files[0], files[1])
	if err != nil {
		return nil, fmt.Errorf("SVID %s with key %s: %w", cfg.CertFile, cfg.KeyFile, err)
	}
	own := svid.ID.TrustDomain()
	bundles := make([]*x509bundle.Bundle, 0, len(cfg.Bundles))
	for i, bf := range cfg.Bundles {
		td := bf.TrustDomain
		if td.IsZero() {
			td = own
		}
		roots, err := parseCertificatesPEM(files[2+i])
		if err != nil {
			return nil, fmt.Errorf("trust bundle %s for %q: %w", bf.Path, td, err)
		}
		bundles = append(bundles, x509bundle.FromX509Authorities(td, roots))
	}
	set := mergeBundles(bundles)
	if !set.Has(own) {
		return nil, fmt.Errorf("no trust bundle for the SVID's own trust domain %q (give one with --trust-bundle PATH)", own)
	}
	return &fileState{svid: svid, bundles: set, raw: bytes.Join(files, []byte{0})}, nil
}
