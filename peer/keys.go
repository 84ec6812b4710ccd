package peer

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/hashicorp/memberlist"
)

// SetKeys replaces the gossip keyring without a restart: it installs the
// new keys, makes keys[0] the primary and removes keys not listed. To
// rotate without partitioning the cluster, call it on every node three
// times, each round complete before the next: [old, new] (install),
// [new, old] (switch), [new] (remove). A node started without keys
// (Insecure) cannot turn encryption on.
func (n *Node) SetKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("peer: SetKeys: no keys")
	}
	for i, k := range keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return fmt.Errorf("peer: SetKeys: key %d: %w", i, err)
		}
	}
	if n.keyring == nil {
		return errors.New("peer: SetKeys: node gossips in plaintext (started without keys); restart it with keys")
	}
	for i, k := range keys {
		if err := n.keyring.AddKey(k); err != nil {
			return fmt.Errorf("peer: SetKeys: install key %d: %w", i, err)
		}
	}
	if err := n.keyring.UseKey(keys[0]); err != nil {
		return fmt.Errorf("peer: SetKeys: use primary: %w", err)
	}
	for _, old := range slices.Clone(n.keyring.GetKeys()) {
		if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, old) }) {
			if err := n.keyring.RemoveKey(old); err != nil {
				return fmt.Errorf("peer: SetKeys: remove old key: %w", err)
			}
		}
	}
	n.log.Info("gossip keyring updated", "keys", len(keys))
	return nil
}

// LoadKeyring reads a keyring file: one base64 (standard encoding) AES key
// of 16, 24 or 32 bytes per line, the first being the primary. Blank lines
// and lines starting with # are ignored; surrounding spaces are trimmed.
// Errors name the file and line. A file without keys or with a repeated
// key is an error.
func LoadKeyring(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("peer: keyring: %w", err)
	}
	return parseKeyring(path, data)
}

func parseKeyring(path string, data []byte) ([][]byte, error) {
	var keys [][]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("peer: keyring %s:%d: not base64: %w", path, line, err)
		}
		if err := memberlist.ValidateKey(k); err != nil {
			return nil, fmt.Errorf("peer: keyring %s:%d: %w", path, line, err)
		}
		for _, prev := range keys {
			if bytes.Equal(prev, k) {
				return nil, fmt.Errorf("peer: keyring %s:%d: duplicate key", path, line)
			}
		}
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("peer: keyring %s: %w", path, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("peer: keyring %s: no keys", path)
	}
	return keys, nil
}
