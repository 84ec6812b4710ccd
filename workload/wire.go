package workload

import "net"

// Trickle returns a Client.Wrap that sends the first message (the
// ClientHello) n bytes per write, so that it crosses the network in
// n-byte TCP segments (Go sets TCP_NODELAY), as a slow or hostile client
// would.
func Trickle(n int) func(net.Conn) net.Conn {
	return func(c net.Conn) net.Conn { return &trickleConn{Conn: c, n: n} }
}

type trickleConn struct {
	net.Conn
	n    int
	done bool
}

func (c *trickleConn) Write(p []byte) (int, error) {
	if c.done {
		return c.Conn.Write(p)
	}
	c.done = true
	for i := 0; i < len(p); i += c.n {
		if _, err := c.Conn.Write(p[i:min(i+c.n, len(p))]); err != nil {
			return i, err
		}
	}
	return len(p), nil
}

// Refragment returns a Client.Wrap that cuts the first TLS record written
// (the ClientHello) into records of size bytes of handshake data each: a
// legal encoding that crypto/tls servers reassemble and that peekers which
// read only the first record cannot route.
func Refragment(size int) func(net.Conn) net.Conn {
	return func(c net.Conn) net.Conn { return &refragConn{Conn: c, size: size} }
}

type refragConn struct {
	net.Conn
	size int
	done bool
}

func (c *refragConn) Write(p []byte) (int, error) {
	if c.done || len(p) < 5 || p[0] != 22 {
		return c.Conn.Write(p)
	}
	c.done = true
	n := int(p[3])<<8 | int(p[4])
	if 5+n > len(p) {
		return c.Conn.Write(p)
	}
	msg, rest := p[5:5+n], p[5+n:]
	out := make([]byte, 0, len(p)+5*(n/c.size+1))
	for i := 0; i < len(msg); i += c.size {
		frag := msg[i:min(i+c.size, len(msg))]
		out = append(out, 22, p[1], p[2], byte(len(frag)>>8), byte(len(frag)))
		out = append(out, frag...)
	}
	out = append(out, rest...)
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}
