package gateway

import (
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The keep-alive of client sockets: Go's default for the sockets it
// accepts (probes after 15 s idle, every 15 s, 9 of them), set once on
// each listening socket, whose accepted sockets inherit it.
const (
	clientKeepAliveIdle   = 15 * time.Second
	clientKeepAliveProbes = 9
)

// deferAccept is the TCP_DEFER_ACCEPT of the listeners: the kernel hands
// a connection over once its first bytes (the ClientHello's) are there,
// or, for a client that sends nothing, once this much has passed (the
// kernel rounds it to SYN-ACK retransmissions: one, after 1 s). A client
// whose first bytes come later is served as before, its hello timeout
// counting from then; one that closes without a byte is handed over at
// its FIN, and counted as no_data.
const deferAccept = 1 * time.Second

// listenerOptions sets, on a listening socket before it binds, what its
// accepted sockets inherit (keep-alive, and TCP_NODELAY, which Linux
// copies too: the loops' accept sets nothing per connection) and
// TCP_DEFER_ACCEPT; it is a net.ListenConfig.Control.
func listenerOptions(network, address string, c syscall.RawConn) error {
	return setListenerOptions(network, address, c, false)
}

// reusePortOptions is listenerOptions with SO_REUSEPORT, for the loops'
// sockets of one port, one each, between which the kernel spreads the
// connections.
func reusePortOptions(network, address string, c syscall.RawConn) error {
	return setListenerOptions(network, address, c, true)
}

func setListenerOptions(network, address string, c syscall.RawConn, reusePort bool) error {
	opts := [...]struct {
		level, name, value int
		what               string
	}{
		{unix.SOL_SOCKET, unix.SO_REUSEPORT, 1, "SO_REUSEPORT"},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(clientKeepAliveIdle / time.Second), "TCP_KEEPIDLE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(clientKeepAliveIdle / time.Second), "TCP_KEEPINTVL"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, clientKeepAliveProbes, "TCP_KEEPCNT"},
		{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1, "TCP_NODELAY"},
		{unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, int(deferAccept / time.Second), "TCP_DEFER_ACCEPT"},
	}
	set := opts[:]
	if !reusePort {
		set = opts[1:]
	}
	var err error
	cerr := c.Control(func(fd uintptr) {
		for _, o := range set {
			if err = unix.SetsockoptInt(int(fd), o.level, o.name, o.value); err != nil {
				err = fmt.Errorf("listener %s %s: setting %s: %w", network, address, o.what, err)
				return
			}
		}
	})
	if cerr != nil {
		return cerr
	}
	return err
}
