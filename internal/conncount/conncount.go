// Package conncount wraps a net.Listener to count the connections it
// holds, for tests of connection caps.
package conncount

import (
	"net"
	"sync"
)

// Listener counts the connections its Accept returned that are not yet
// closed, and the most there were at once. Wrap the listener below a cap
// (under netutil.LimitListener, for instance): there a connection is
// counted as closed before the cap lets the next one in, whereas a
// server's own state hooks run later and would race with the next accept.
type Listener struct {
	net.Listener
	mu         sync.Mutex
	open, most int
}

// Accept accepts a connection and counts it until it is closed.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.open++
	l.most = max(l.most, l.open)
	l.mu.Unlock()
	return &conn{Conn: c, l: l}, nil
}

// Open returns how many accepted connections are not closed yet.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// Most returns the most connections that were open at once.
func (l *Listener) Most() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.most
}

type conn struct {
	net.Conn
	l    *Listener
	once sync.Once
}

// Close closes the connection; the first call uncounts it.
func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.open--
		c.l.mu.Unlock()
	})
	return err
}
