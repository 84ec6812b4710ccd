package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// blockUDP drops, with nftables in gateway g's namespace, UDP packets in
// and out of its WAN link (wan0): those to or from one of ports, or every
// UDP packet when no port is given. It returns a function that removes
// the rules again; calling it more than once is harmless, so that a test
// can both restore early and register it with t.Cleanup.
func blockUDP(g *gateway, ports ...int) (restore func() error, err error) {
	const table = "ewe2e_block_udp"
	var in, out string
	if len(ports) == 0 {
		in, out = `iifname "wan0" meta l4proto udp drop;`, `oifname "wan0" meta l4proto udp drop;`
	}
	for _, p := range ports {
		in += fmt.Sprintf(` iifname "wan0" udp dport %[1]d drop; iifname "wan0" udp sport %[1]d drop;`, p)
		out += fmt.Sprintf(` oifname "wan0" udp dport %[1]d drop; oifname "wan0" udp sport %[1]d drop;`, p)
	}
	rules := fmt.Sprintf(`table inet %s {
	chain input { type filter hook input priority 0; policy accept; %s }
	chain output { type filter hook output priority 0; policy accept; %s }
}
`, table, in, out)
	if err := nft(g.ns, rules); err != nil {
		return nil, err
	}
	var once sync.Once
	var rerr error
	return func() error {
		once.Do(func() { rerr = nft(g.ns, "delete table inet "+table+"\n") })
		return rerr
	}, nil
}

// nft runs an nftables script inside ns.
func nft(ns *netns, script string) error {
	cmd := exec.Command("ip", "netns", "exec", ns.name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %v: %s", ns.name, err, out)
	}
	return nil
}

// capture is a tcpdump writing a pcap file.
type capture struct {
	cmd    *exec.Cmd
	path   string
	stderr *os.File
	exited chan struct{}
}

// startCapture runs tcpdump on iface inside ns, writing every packet,
// whole, to path, and returns once tcpdump is listening.
func startCapture(ns *netns, iface, path string) (*capture, error) {
	errPath := path + ".stderr"
	ef, err := os.Create(errPath)
	if err != nil {
		return nil, err
	}
	c := &capture{path: path, stderr: ef, exited: make(chan struct{})}
	// -U: write each packet at once; -Z root: keep the right to write path.
	c.cmd = ns.command("tcpdump", "-i", iface, "-n", "-s", "0", "-U", "-Z", "root", "-w", path)
	c.cmd.Stdout, c.cmd.Stderr = ef, ef
	if err := startGroup(c.cmd, "tcpdump"); err != nil {
		ef.Close()
		return nil, err
	}
	go func() {
		c.cmd.Wait()
		forgetGroup(c.cmd.Process.Pid)
		close(c.exited)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(errPath)
		if bytes.Contains(b, []byte("listening on")) {
			return c, nil
		}
		select {
		case <-c.exited:
			ef.Close()
			return nil, fmt.Errorf("tcpdump exited: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			c.stop()
			return nil, fmt.Errorf("tcpdump not listening after 20s: %s", b)
		}
		time.Sleep(5 * time.Millisecond) // polling tcpdump's stderr, bounded by the deadline
	}
}

// stop stops tcpdump (SIGINT: it flushes the file) and returns the pcap.
func (c *capture) stop() ([]byte, error) {
	defer c.stderr.Close()
	syscall.Kill(-c.cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		killGroup(c.cmd.Process.Pid)
		<-c.exited
	}
	return os.ReadFile(c.path)
}

// flow is one IPv4 TCP or UDP packet's endpoints seen in a capture.
type flow struct {
	proto    string // "tcp" or "udp"
	src, dst netip.AddrPort
}

// String formats a flow for messages.
func (f flow) String() string {
	return f.proto + " " + f.src.String() + " > " + f.dst.String()
}

// pcapFlows lists the IPv4 TCP and UDP packets of an Ethernet pcap file
// (the classic format tcpdump -w writes) and counts all its packets.
func pcapFlows(b []byte) ([]flow, int, error) {
	if len(b) < 24 {
		return nil, 0, errors.New("pcap shorter than its header")
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, 0, fmt.Errorf("not a pcap file (magic %x)", b[:4])
	}
	if lt := bo.Uint32(b[20:]); lt != 1 {
		return nil, 0, fmt.Errorf("pcap link type %d, want Ethernet (1)", lt)
	}
	var flows []flow
	packets := 0
	for off := 24; off+16 <= len(b); {
		incl := int(bo.Uint32(b[off+8:]))
		off += 16
		if off+incl > len(b) {
			break // a packet cut by the stop
		}
		pkt := b[off : off+incl]
		off += incl
		packets++
		if len(pkt) < 14+20 || binary.BigEndian.Uint16(pkt[12:]) != 0x0800 {
			continue
		}
		ip := pkt[14:]
		ihl := int(ip[0]&0x0f) * 4
		proto := map[byte]string{6: "tcp", 17: "udp"}[ip[9]]
		if proto == "" || len(ip) < ihl+4 {
			continue
		}
		src, _ := netip.AddrFromSlice(ip[12:16])
		dst, _ := netip.AddrFromSlice(ip[16:20])
		l4 := ip[ihl:]
		flows = append(flows, flow{proto,
			netip.AddrPortFrom(src, binary.BigEndian.Uint16(l4[0:])),
			netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:])),
		})
	}
	return flows, packets, nil
}
