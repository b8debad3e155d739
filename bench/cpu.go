package bench

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// ServerCPU is the CPU time local server processes used during a run.
type ServerCPU struct {
	PIDs    []int   `json:"pids"`
	Seconds float64 `json:"seconds"`
	// SecondsPerOp is Seconds over the run's successful operations.
	SecondsPerOp float64 `json:"seconds_per_op,omitempty"`
}

// FindServers returns the PIDs of local processes serving the endpoints:
// processes whose command line names one of the endpoints' ports in a
// client URL flag (--listen-client-urls or --advertise-client-urls, the
// flags etcd and rangekv share). Endpoints on other hosts are skipped.
func FindServers(endpoints []string) []int {
	ports := map[string]bool{}
	for _, ep := range endpoints {
		if !strings.Contains(ep, "://") {
			ep = "http://" + ep
		}
		u, err := url.Parse(ep)
		if err != nil {
			continue
		}
		switch u.Hostname() {
		case "127.0.0.1", "localhost", "::1", "":
			ports[u.Port()] = true
		}
	}
	if len(ports) == 0 {
		return nil
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == os.Getpid() {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if servesPort(args, ports) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// servesPort reports whether a command line's client URL flags name one
// of ports.
func servesPort(args []string, ports map[string]bool) bool {
	for i, a := range args {
		var val string
		switch {
		case a == "--listen-client-urls" || a == "--advertise-client-urls":
			if i+1 < len(args) {
				val = args[i+1]
			}
		case strings.HasPrefix(a, "--listen-client-urls="), strings.HasPrefix(a, "--advertise-client-urls="):
			val = a[strings.IndexByte(a, '=')+1:]
		default:
			continue
		}
		for _, raw := range strings.Split(val, ",") {
			if u, err := url.Parse(raw); err == nil && ports[u.Port()] {
				return true
			}
		}
	}
	return false
}

// CPUSeconds returns the user plus system CPU seconds the processes have
// used so far; processes that exited are skipped.
func CPUSeconds(pids []int) float64 {
	var ticks int64
	for _, pid := range pids {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		t, err := parseStatTicks(string(raw))
		if err == nil {
			ticks += t
		}
	}
	return float64(ticks) / clockTicks
}

// parseStatTicks returns utime+stime from a /proc/<pid>/stat line. The
// command name (field 2) is parenthesised and may hold spaces, so fields
// are counted from the last ')'.
func parseStatTicks(stat string) (int64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("bench: malformed /proc stat %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	// After the name: state is field 3, utime field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("bench: short /proc stat %q", stat)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bench: malformed /proc stat times in %q", stat)
	}
	return u + s, nil
}
