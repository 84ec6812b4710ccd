package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// usage is the memory and file descriptors of a proxy: one process and
// all its descendants (nginx's master and workers), summed.
type usage struct {
	procs   int
	rssKiB  int64 // VmRSS of /proc/PID/status
	pssKiB  int64 // Pss of /proc/PID/smaps_rollup
	privKiB int64 // Private_Clean + Private_Dirty of smaps_rollup
	fds     int   // entries of /proc/PID/fd
	slabKiB int64 // system-wide Slab of /proc/meminfo (kernel objects: sockets, pipes, files)
}

// sampleUsage measures root and its descendants.
func sampleUsage(root int) (usage, error) {
	pids, err := descendants(root)
	if err != nil {
		return usage{}, err
	}
	u := usage{procs: len(pids)}
	for _, pid := range pids {
		dir := filepath.Join("/proc", strconv.Itoa(pid))
		st, err := kibFields(filepath.Join(dir, "status"))
		if err != nil {
			return u, err
		}
		sm, err := kibFields(filepath.Join(dir, "smaps_rollup"))
		if err != nil {
			return u, err
		}
		fds, err := os.ReadDir(filepath.Join(dir, "fd"))
		if err != nil {
			return u, err
		}
		u.rssKiB += st["VmRSS"]
		u.pssKiB += sm["Pss"]
		u.privKiB += sm["Private_Clean"] + sm["Private_Dirty"]
		u.fds += len(fds)
	}
	mi, err := kibFields("/proc/meminfo")
	if err != nil {
		return u, err
	}
	u.slabKiB = mi["Slab"]
	return u, nil
}

// descendants returns root and every process below it, from the parent
// field of /proc/*/stat.
func descendants(root int) ([]int, error) {
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(root))); err != nil {
		return nil, fmt.Errorf("process %d: %w", root, err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
	}
	pids := []int{root}
	for i := 0; i < len(pids); i++ {
		pids = append(pids, children[pids[i]]...)
	}
	return pids, nil
}

// kibFields reads "Name: value kB" lines into a map of KiB values.
func kibFields(path string) (map[string]int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 2 && f[1] == "kB" {
			if v, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				m[name] = v
			}
		}
	}
	return m, sc.Err()
}
