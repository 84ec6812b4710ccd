package main

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// The backend protocol. After the ClientHello the sink writes ackByte, then
// reads one command byte: cmdDiscard reads until EOF and answers the byte
// count (8 bytes, big endian); cmdSource reads an 8-byte count and writes
// that many bytes; cmdEcho echoes until EOF. A client that sends no command
// leaves the connection idle; one that closes ends it.
const (
	ackByte    = 'A'
	cmdDiscard = 'D'
	cmdSource  = 'S'
	cmdEcho    = 'E'
)

// bufSize is the I/O buffer of bulk transfers.
const bufSize = 256 << 10

// runSink implements "loadgen sink": the backend every proxy routes to.
// With -tls-listen it also terminates TLS 1.3 mTLS on a second address,
// for the clients of -tls-svid, and runs the same protocol inside TLS.
func runSink(args []string) error {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "`address` to listen on")
	tlsListen := fs.String("tls-listen", "", "`address` to terminate TLS on (needs -tls-svid)")
	tlsSVID := fs.String("tls-svid", "", "SVID `dir` (ewgate ca issue --out) the TLS sink presents and verifies clients with")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if (*tlsListen == "") != (*tlsSVID == "") {
		return fmt.Errorf("-tls-listen and -tls-svid go together")
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", *listen)
	if err != nil {
		return err
	}
	lns := []net.Listener{ln}
	var tlsCfg *tls.Config
	if *tlsListen != "" {
		if tlsCfg, err = mtlsConfig(*tlsSVID, true, "istio"); err != nil {
			ln.Close()
			return err
		}
		tln, err := lc.Listen(context.Background(), "tcp", *tlsListen)
		if err != nil {
			ln.Close()
			return err
		}
		lns = append(lns, tln)
	}
	for _, l := range lns {
		fmt.Printf("sink listening on %s\n", l.Addr())
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		for _, l := range lns {
			l.Close()
		}
	}()
	errc := make(chan error, len(lns))
	for i, l := range lns {
		cfg := tlsCfg
		if i == 0 {
			cfg = nil
		}
		go func() { errc <- acceptSink(l, cfg) }()
	}
	var first error
	for range lns {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// acceptSink serves every connection of ln, in TLS if cfg is set, until ln
// is closed.
func acceptSink(ln net.Listener, cfg *tls.Config) error {
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			logf("sink: accept: %v", err)
			continue
		}
		go serveSink(c.(*net.TCPConn), cfg)
	}
}

// serveSink runs the backend protocol on one connection and closes it.
// Every error it logs is one the report counts (compare.sh counts the
// lines), so a client closing at a point the protocol allows is not one.
func serveSink(tc *net.TCPConn, cfg *tls.Config) {
	var c conn = tc
	defer func() { c.Close() }()
	if cfg != nil {
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		s := tls.Server(tc, cfg)
		if err := s.Handshake(); err != nil {
			logf("sink: %s: TLS handshake: %v", tc.RemoteAddr(), err)
			return
		}
		tc.SetDeadline(time.Time{})
		c = s
	} else if n, err := readHello(tc); err != nil {
		// A connection closed before its first byte is a port probe
		// (compare.sh's wait for the sink), not a failed client.
		if n > 0 || !errors.Is(err, io.EOF) {
			logf("sink: %s: %v", tc.RemoteAddr(), err)
		}
		return
	}
	if err := sinkConn(c); err != nil && !errors.Is(err, io.EOF) {
		logf("sink: %s: %v", tc.RemoteAddr(), err)
	}
}

// sinkConn answers the ack and runs the client's command.
func sinkConn(c conn) error {
	if _, err := c.Write([]byte{ackByte}); err != nil {
		return err
	}
	var cmd [1]byte
	if _, err := io.ReadFull(c, cmd[:]); err != nil {
		return err // io.EOF: the client closed after the ack (connect mode)
	}
	switch cmd[0] {
	case cmdDiscard, cmdSource:
		if err := serveBulk(c, cmd[0]); err != nil {
			return err
		}
		return c.CloseWrite()
	case cmdEcho:
		if err := echo(c); err != nil {
			return err
		}
		return c.CloseWrite()
	default:
		return fmt.Errorf("unknown command %q", cmd[0])
	}
}

// serveBulk runs the sink's side of cmdDiscard or cmdSource, whose byte
// was read from s; the caller then closes s's write side. The QUIC
// baseline's sink serves its streams with it too.
func serveBulk(s io.ReadWriter, cmd byte) error {
	switch cmd {
	case cmdDiscard:
		n, err := discard(s)
		if err != nil {
			return err
		}
		return binary.Write(s, binary.BigEndian, uint64(n))
	case cmdSource:
		var n uint64
		if err := binary.Read(s, binary.BigEndian, &n); err != nil {
			return err
		}
		return source(s, int64(n))
	default:
		return fmt.Errorf("unknown command %q", cmd)
	}
}

// discard reads r to EOF through a large buffer and returns the byte count.
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

// source writes n bytes to w through a large buffer.
func source(w io.Writer, n int64) error {
	buf := make([]byte, bufSize)
	for n > 0 {
		chunk := buf
		if n < int64(len(chunk)) {
			chunk = chunk[:n]
		}
		m, err := w.Write(chunk)
		if err != nil {
			return err
		}
		n -= int64(m)
	}
	return nil
}

// echo writes back everything it reads from c until EOF.
func echo(c io.ReadWriter) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
