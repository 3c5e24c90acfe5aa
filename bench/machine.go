package bench

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Machine is where a run happened and what it measured.
type Machine struct {
	CPU        string `json:"cpu"`
	Cores      int    `json:"cores"`
	MemTotalMB int64  `json:"memTotalMB"`
	Kernel     string `json:"kernel"`
	OSArch     string `json:"osArch"`
	// GoVersion, Version and Commit are the measured binary's (from
	// `agentbridge version`), which may differ from the bench's own.
	GoVersion string `json:"goVersion"`
	Version   string `json:"version"`
	Commit    string `json:"commit"`
}

func machineFacts(bin string, b Build) Machine {
	m := Machine{Cores: runtime.NumCPU(), OSArch: runtime.GOOS + "/" + runtime.GOARCH,
		GoVersion: runtime.Version(), Version: b.Version, Commit: b.Commit}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if f := strings.Fields(v); len(f) > 0 {
					kb, _ := strconv.ParseInt(f[0], 10, 64)
					m.MemTotalMB = kb / 1024
				}
			}
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	// The binary under test tells its own version; bench may be another.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, bin, "version").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) == 2 && f[0] == "agentbridge":
				m.Version = f[1]
			case len(f) == 2 && f[0] == "commit":
				m.Commit = f[1]
			case len(f) >= 1 && strings.HasPrefix(f[0], "go1"):
				m.GoVersion = f[0]
			}
		}
	}
	if m.Commit == "" || m.Commit == "unknown" {
		// Built without -ldflags: ask git where the binary lives.
		if out, err := exec.CommandContext(ctx, "git", "-C", filepath.Dir(bin), "rev-parse", "HEAD").Output(); err == nil {
			m.Commit = string(bytes.TrimSpace(out))
			if out, err := exec.CommandContext(ctx, "git", "-C", filepath.Dir(bin), "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(bytes.TrimSpace(out)) > 0 {
				m.Commit += "-dirty"
			}
		}
	}
	return m
}
