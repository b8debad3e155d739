//go:build linux

// Package robustness tries to break a multi-process rangekv cluster: it
// drives traffic against real `rangekv` processes on loopback, injects
// faults (SIGKILL and restart, SIGSTOP pauses, range splits, leadership
// moves), records every request's invocation and outcome, and checks the
// history with porcupine against a model of etcd's KV semantics, in the
// manner of etcd's tests/robustness. See docs/robustness.md.
package robustness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rangekv/rangekv/bench"
)

// Cluster is a set of rangekv processes on loopback, founded like etcd's
// documentation founds a static cluster (names infra1..infraN).
type Cluster struct {
	Nodes []*Node
}

// Node is one rangekv process; its flags stay the same across restarts.
type Node struct {
	Name       string
	ClientURL  string // http://127.0.0.1:port
	PeerURL    string
	DataDir    string
	LogPath    string // stdout and stderr of every run, appended
	Failpoints string // host:port of the gofail HTTP endpoint (GOFAIL_HTTP)
	// Proxy carries every other node's traffic into this node's peer
	// listener (PeerURL is the proxy's address).
	Proxy      *Proxy
	listenPeer string
	binary     string
	args       []string
	skew       time.Duration // --unsafe-clock-skew of the next starts

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	paused bool
}

// Endpoint is the node's client address as clientv3 takes it.
func (n *Node) Endpoint() string { return strings.TrimPrefix(n.ClientURL, "http://") }

// NewCluster prepares, without starting them, n nodes of binary with their
// data and logs under dir; extraFlags are appended to every node's flags.
func NewCluster(binary, dir string, n int, extraFlags ...string) (*Cluster, error) {
	ports, err := bench.FreePorts(4 * n)
	if err != nil {
		return nil, err
	}
	c := &Cluster{}
	var initial []string
	for i := range n {
		nd := &Node{
			Name:       fmt.Sprintf("infra%d", i+1),
			ClientURL:  fmt.Sprintf("http://127.0.0.1:%d", ports[4*i]),
			PeerURL:    fmt.Sprintf("http://127.0.0.1:%d", ports[4*i+1]),
			Failpoints: fmt.Sprintf("127.0.0.1:%d", ports[4*i+2]),
			listenPeer: fmt.Sprintf("http://127.0.0.1:%d", ports[4*i+3]),
			binary:     binary,
		}
		if nd.Proxy, err = NewProxy(strings.TrimPrefix(nd.PeerURL, "http://"), strings.TrimPrefix(nd.listenPeer, "http://")); err != nil {
			c.Stop()
			return nil, err
		}
		nd.DataDir = filepath.Join(dir, nd.Name+".rangekv")
		nd.LogPath = filepath.Join(dir, nd.Name+".log")
		initial = append(initial, nd.Name+"="+nd.PeerURL)
		c.Nodes = append(c.Nodes, nd)
	}
	for _, nd := range c.Nodes {
		nd.args = append([]string{
			"--name", nd.Name, "--data-dir", nd.DataDir,
			"--listen-client-urls", nd.ClientURL, "--advertise-client-urls", nd.ClientURL,
			"--listen-peer-urls", nd.listenPeer, "--initial-advertise-peer-urls", nd.PeerURL,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-token", "robustness", "--initial-cluster-state", "new",
		}, extraFlags...)
	}
	return c, nil
}

// Endpoints returns every node's client address.
func (c *Cluster) Endpoints() []string {
	out := make([]string, 0, len(c.Nodes))
	for _, n := range c.Nodes {
		out = append(out, n.Endpoint())
	}
	return out
}

// Start starts every node and waits until each answers /readyz.
func (c *Cluster) Start(ctx context.Context) error {
	for _, n := range c.Nodes {
		if err := n.Start(); err != nil {
			return err
		}
	}
	for _, n := range c.Nodes {
		if err := n.WaitReady(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Stop SIGKILLs every node and closes the proxies.
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		n.Kill()
		if n.Proxy != nil {
			n.Proxy.Close()
		}
	}
}

// Start runs the node's process with its flags, logging to LogPath.
func (n *Node) Start() error { return n.StartWithFailpoints("") }

// StartWithFailpoints starts the node with gofail failpoints set from its
// first instruction (GOFAIL_FAILPOINTS, e.g. `name=1*panic("x")`), for
// points a node passes while it starts or catches up.
func (n *Node) StartWithFailpoints(failpoints string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return fmt.Errorf("%s is already running", n.Name)
	}
	f, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	args := n.args
	if n.skew != 0 {
		args = append(append([]string(nil), args...), "--unsafe-clock-skew", n.skew.String())
	}
	fmt.Fprintf(f, "=== robustness: %s starting %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	cmd := exec.Command(n.binary, args...)
	cmd.Env = append(cleanEnv(), "GOFAIL_HTTP="+n.Failpoints)
	if failpoints != "" {
		fmt.Fprintf(f, "=== robustness: with GOFAIL_FAILPOINTS=%s\n", failpoints)
		cmd.Env = append(cmd.Env, "GOFAIL_FAILPOINTS="+failpoints)
	}
	cmd.Stdout, cmd.Stderr = f, f
	setProcessAttrs(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(exited)
	}()
	n.cmd, n.exited, n.paused = cmd, exited, false
	return nil
}

// Kill SIGKILLs the node's process, if running, and waits for it to exit.
func (n *Node) Kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.exited
	n.cmd, n.exited, n.paused = nil, nil, false
}

// EnableFailpoint sets a gofail failpoint of the running node to terms
// (e.g. `1*panic("x")`) through its GOFAIL_HTTP endpoint.
func (n *Node) EnableFailpoint(name, terms string) error {
	req, err := http.NewRequest(http.MethodPut, "http://"+n.Failpoints+"/"+name, strings.NewReader(terms))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("failpoint %s on %s: %d %s", name, n.Name, resp.StatusCode, body)
	}
	return nil
}

// DisableFailpoint clears a gofail failpoint of the running node.
func (n *Node) DisableFailpoint(name string) error {
	req, err := http.NewRequest(http.MethodDelete, "http://"+n.Failpoints+"/"+name, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// WaitExit reports whether the node's process exits within d.
func (n *Node) WaitExit(d time.Duration) bool {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	if exited == nil {
		return true
	}
	select {
	case <-exited:
		return true
	case <-time.After(d):
		return false
	}
}

// SetClockSkew shifts the node's wall clock by d from its next start on
// (rangekv's hidden --unsafe-clock-skew).
func (n *Node) SetClockSkew(d time.Duration) {
	n.mu.Lock()
	n.skew = d
	n.mu.Unlock()
}

// Pause stops the node's process with SIGSTOP; Resume continues it.
func (n *Node) Pause() error { return n.signal(syscall.SIGSTOP, true) }

// Resume continues a paused process with SIGCONT.
func (n *Node) Resume() error { return n.signal(syscall.SIGCONT, false) }

func (n *Node) signal(sig syscall.Signal, paused bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return fmt.Errorf("%s is not running", n.Name)
	}
	n.paused = paused
	return n.cmd.Process.Signal(sig)
}

// Running reports whether the node's process runs (paused counts).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// WaitReady polls /readyz until it answers 200, the process exits or ctx
// ends.
func (n *Node) WaitReady(ctx context.Context) error {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	if exited == nil {
		return fmt.Errorf("%s is not running", n.Name)
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	last := "no answer"
	for {
		select {
		case <-exited:
			return fmt.Errorf("%s exited before becoming ready", n.Name)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %s", n.Name, last)
		default:
		}
		resp, err := hc.Get(n.ClientURL + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cleanEnv is the environment without RANGEKV_* variables, which would
// change the nodes' configuration.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RANGEKV_") {
			env = append(env, kv)
		}
	}
	return env
}

// setProcessAttrs makes the kernel SIGKILL a node when the test process
// dies, so that no node outlives a run.
func setProcessAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
