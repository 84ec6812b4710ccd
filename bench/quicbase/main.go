// Command quicbase measures what quic-go itself carries on one stream
// between two processes, the baseline of the QUIC tunnel in
// bench/paths.sh:
//
//	quicbase serve -listen ADDR -cert C -key K -ca B     the server
//	quicbase throughput -addr ADDR -cert C -key K -ca B  the client
//
// Both sides present a certificate and verify the other's against the CA
// bundle (mutual TLS 1.3, as tunnel links do, with crypto/tls's default
// cipher suites) and use quic-go's default configuration on a socket of
// quic.ListenAddr / quic.DialAddr (quic-go raises its UDP buffers to
// about 7 MiB, as it does for the tunnel's socket).
// The client streams -mib MiB up on one stream (the server answers the
// byte count it read), then asks for -mib MiB down on another, and
// prints a markdown row like "loadgen throughput".
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
)

// The stream protocol, loadgen's: the first byte of a stream is cmdDiscard
// (read until EOF, answer the count as 8 bytes, big endian) or cmdSource
// (an 8-byte count follows; the server writes that many bytes).
const (
	cmdDiscard = 'D'
	cmdSource  = 'S'
)

// alpn is the protocol both sides offer.
const alpn = "ewgate-quicbase"

// bufSize is the size of every read and write, loadgen's.
const bufSize = 256 << 10

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: quicbase serve|throughput [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "throughput":
		err = throughput(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "quicbase %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// tlsFlags are the identity and trust flags both modes share.
type tlsFlags struct{ cert, key, ca *string }

func newTLSFlags(fs *flag.FlagSet) tlsFlags {
	return tlsFlags{
		cert: fs.String("cert", "", "certificate chain `file` (PEM)"),
		key:  fs.String("key", "", "private key `file` (PEM)"),
		ca:   fs.String("ca", "", "CA bundle `file` (PEM) the peer's certificate must chain to"),
	}
}

// config returns a mutual TLS 1.3 configuration.
func (f tlsFlags) config() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(*f.cert, *f.key)
	if err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(*f.ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificates", *f.ca)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		NextProtos:   []string{alpn},
		// The SVIDs carry a SPIFFE URI and no DNS name: verify the chain,
		// as the tunnel does, not a host name.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyChain(raw, pool)
		},
	}, nil
}

// verifyChain checks that raw (leaf first) chains to a root in pool.
func verifyChain(raw [][]byte, pool *x509.CertPool) error {
	if len(raw) == 0 {
		return errors.New("no peer certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return err
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

// serve implements "quicbase serve": it answers every stream of every
// connection until SIGTERM.
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "UDP `address` to listen on")
	tf := newTLSFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	tc, err := tf.config()
	if err != nil {
		return err
	}
	ln, err := quic.ListenAddr(*listen, tc, &quic.Config{MaxIncomingStreams: 1000})
	if err != nil {
		return err
	}
	fmt.Printf("quicbase listening on %s\n", ln.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	for {
		c, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ln.Close()
			}
			return err
		}
		go serveConn(ctx, c)
	}
}

func serveConn(ctx context.Context, c *quic.Conn) {
	for {
		s, err := c.AcceptStream(ctx)
		if err != nil {
			return
		}
		go func() {
			if err := serveStream(s); err != nil {
				fmt.Fprintf(os.Stderr, "quicbase serve: %v\n", err)
				s.CancelRead(1)
				s.CancelWrite(1)
			}
		}()
	}
}

func serveStream(s *quic.Stream) error {
	var cmd [1]byte
	if _, err := io.ReadFull(s, cmd[:]); err != nil {
		return err
	}
	switch cmd[0] {
	case cmdDiscard:
		n, err := discard(s)
		if err != nil {
			return err
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(n))
		if _, err := s.Write(b[:]); err != nil {
			return err
		}
		return s.Close()
	case cmdSource:
		var b [8]byte
		if _, err := io.ReadFull(s, b[:]); err != nil {
			return err
		}
		if err := source(s, int64(binary.BigEndian.Uint64(b[:]))); err != nil {
			return err
		}
		return s.Close()
	default:
		return fmt.Errorf("unknown command %q", cmd[0])
	}
}

// source writes n bytes to w in bufSize writes.
func source(w io.Writer, n int64) error {
	buf := make([]byte, bufSize)
	for n > 0 {
		m, err := w.Write(buf[:min(n, int64(len(buf)))])
		if err != nil {
			return err
		}
		n -= int64(m)
	}
	return nil
}

// discard reads r to EOF in bufSize reads and returns the byte count.
// (io.Copy to io.Discard would read in 8 KiB pieces.)
func discard(r io.Reader) (int64, error) {
	buf := make([]byte, bufSize)
	var total int64
	for {
		n, err := r.Read(buf)
		total += int64(n)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// throughput implements "quicbase throughput".
func throughput(args []string) error {
	fs := flag.NewFlagSet("throughput", flag.ContinueOnError)
	addr := fs.String("addr", "", "server UDP `address`")
	mib := fs.Int("mib", 1024, "MiB to stream each way")
	label := fs.String("label", "quic-go, two processes", "row `label`")
	tf := newTLSFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	tc, err := tf.config()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := quic.DialAddr(ctx, *addr, tc, &quic.Config{})
	if err != nil {
		return err
	}
	defer c.CloseWithError(0, "")
	size := int64(*mib) << 20
	up, uerr := streamUp(ctx, c, size)
	down, derr := streamDown(ctx, c, size)
	gbps := func(d time.Duration, err error) string {
		if err != nil {
			return "failed"
		}
		return fmt.Sprintf("%.2f", float64(size)*8/d.Seconds()/1e9)
	}
	fmt.Printf("| %s | %d | %s | %s |\n", *label, *mib, gbps(up, uerr), gbps(down, derr))
	return errors.Join(uerr, derr)
}

// streamUp sends size bytes and returns the time until the server
// confirmed receiving all of them.
func streamUp(ctx context.Context, c *quic.Conn, size int64) (time.Duration, error) {
	start := time.Now()
	s, err := c.OpenStreamSync(ctx)
	if err != nil {
		return 0, err
	}
	if _, err := s.Write([]byte{cmdDiscard}); err != nil {
		return 0, err
	}
	if err := source(s, size); err != nil {
		return 0, fmt.Errorf("streaming up: %w", err)
	}
	if err := s.Close(); err != nil {
		return 0, err
	}
	var got uint64
	if err := binary.Read(s, binary.BigEndian, &got); err != nil {
		return 0, fmt.Errorf("reading the server's count: %w", err)
	}
	if int64(got) != size {
		return 0, fmt.Errorf("server received %d bytes, want %d", got, size)
	}
	return time.Since(start), nil
}

// streamDown asks for size bytes and returns the time to read them.
func streamDown(ctx context.Context, c *quic.Conn, size int64) (time.Duration, error) {
	start := time.Now()
	s, err := c.OpenStreamSync(ctx)
	if err != nil {
		return 0, err
	}
	var req [9]byte
	req[0] = cmdSource
	binary.BigEndian.PutUint64(req[1:], uint64(size))
	if _, err := s.Write(req[:]); err != nil {
		return 0, err
	}
	if err := s.Close(); err != nil {
		return 0, err
	}
	got, err := discard(s)
	if err != nil {
		return 0, fmt.Errorf("streaming down: %w", err)
	}
	if got != size {
		return 0, fmt.Errorf("received %d bytes, want %d", got, size)
	}
	return time.Since(start), nil
}
