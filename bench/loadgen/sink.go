package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
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
func runSink(args []string) error {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "`address` to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Printf("sink listening on %s\n", ln.Addr())
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "sink: accept: %v\n", err)
			continue
		}
		go serveSink(c.(*net.TCPConn))
	}
}

// serveSink runs the backend protocol on one connection and closes it.
func serveSink(c *net.TCPConn) {
	defer c.Close()
	if err := sinkConn(c); err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintf(os.Stderr, "sink: %s: %v\n", c.RemoteAddr(), err)
	}
}

func sinkConn(c *net.TCPConn) error {
	if _, err := readHello(c); err != nil {
		return err
	}
	if _, err := c.Write([]byte{ackByte}); err != nil {
		return err
	}
	var cmd [1]byte
	if _, err := io.ReadFull(c, cmd[:]); err != nil {
		return err // io.EOF: the client closed after the ack (connect mode)
	}
	switch cmd[0] {
	case cmdDiscard:
		n, err := discard(c)
		if err != nil {
			return err
		}
		if err := binary.Write(c, binary.BigEndian, uint64(n)); err != nil {
			return err
		}
		return c.CloseWrite()
	case cmdSource:
		var n uint64
		if err := binary.Read(c, binary.BigEndian, &n); err != nil {
			return err
		}
		if err := source(c, int64(n)); err != nil {
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
func echo(c *net.TCPConn) error {
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
