package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/rangekv/rangekv/bench"
)

// Paths of the binaries TestMain builds.
var (
	rangekvBin    string
	etcdctlBin    string
	rangekvctlBin string
)

// Time limits. They are generous because CI runs this package next to
// other packages' tests on two cores.
const (
	readyTimeout   = 30 * time.Second // a started node answers /readyz with 200
	commandTimeout = 30 * time.Second // one etcdctl or short-lived rangekv run
	pollInterval   = 50 * time.Millisecond
	logTailLines   = 40 // lines of each node's log printed on failure
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

// runTests builds bin/rangekv, etcdctl and bin/rangekvctl into a temporary
// directory, runs the tests and removes the directory.
func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	rangekvBin = filepath.Join(dir, "rangekv")
	etcdctlBin = filepath.Join(dir, "etcdctl")
	rangekvctlBin = filepath.Join(dir, "rangekvctl")
	for _, b := range [][]string{
		{"-o", rangekvBin, "./cmd/rangekv"},
		{"-o", etcdctlBin, "go.etcd.io/etcd/etcdctl/v3"},
		{"-o", rangekvctlBin, "./cmd/rangekvctl"},
	} {
		cmd := exec.Command("go", append([]string{"build"}, b...)...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: go build %s: %v\n%s", strings.Join(b, " "), err, out)
			return 1
		}
	}
	return m.Run()
}

// moduleRoot returns the directory of the module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("go env GOMOD: not inside a module")
	}
	return filepath.Dir(gomod), nil
}

// cleanEnv returns the environment without variables that would change
// how rangekv (RANGEKV_*) or etcdctl (ETCDCTL_*) behave.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "RANGEKV_") || strings.HasPrefix(kv, "ETCDCTL_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// freePorts returns n distinct free loopback ports (bench.FreePorts).
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports, err := bench.FreePorts(n)
	require.NoError(t, err)
	return ports
}

// node is one rangekv process of a test cluster. Its flags stay the same
// across restarts.
type node struct {
	name      string // --name; "default" for single-node clusters
	dataDir   string
	clientURL string // http://127.0.0.1:port
	peerURL   string
	args      []string // flags passed to bin/rangekv
	logPath   string   // stdout and stderr of every run, appended
	// failpoints is the address of the node's gofail HTTP endpoint
	// (GOFAIL_HTTP), through which tests enable failpoints at run time.
	failpoints string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when the current process has exited
}

// cluster is a set of rangekv processes started by startCluster.
type cluster struct {
	t     testing.TB
	nodes []*node
}

// startCluster starts n rangekv nodes as separate processes, each with its
// data directory under t.TempDir() and its log in a file, and waits until
// every node answers /readyz with 200. A one-node cluster gets only
// --data-dir and the four URL flags (etcd's defaults for everything else);
// larger clusters are founded like etcd's documentation does it: names
// infra1..infraN, --initial-cluster listing every peer URL, token
// etcd-cluster-1, state new. extraFlags are appended to every node's flags.
// When the test ends every process is killed and, if the test failed, the
// tail of every log is printed.
func startCluster(t testing.TB, n int, extraFlags ...string) *cluster {
	t.Helper()
	c := newCluster(t, n, extraFlags...)
	for _, nd := range c.nodes {
		nd.start(t)
	}
	for _, nd := range c.nodes {
		nd.waitReady(t)
	}
	return c
}

// newCluster prepares the nodes of startCluster without starting them.
func newCluster(t testing.TB, n int, extraFlags ...string) *cluster {
	t.Helper()
	dir := t.TempDir()
	ports := freePorts(t, 3*n)
	c := &cluster{t: t}
	var initial []string
	for i := range n {
		nd := &node{
			name:       "default",
			clientURL:  fmt.Sprintf("http://127.0.0.1:%d", ports[3*i]),
			peerURL:    fmt.Sprintf("http://127.0.0.1:%d", ports[3*i+1]),
			failpoints: fmt.Sprintf("127.0.0.1:%d", ports[3*i+2]),
		}
		if n > 1 {
			nd.name = fmt.Sprintf("infra%d", i+1)
		}
		nd.dataDir = filepath.Join(dir, nd.name+".rangekv")
		nd.logPath = filepath.Join(dir, nd.name+".log")
		initial = append(initial, nd.name+"="+nd.peerURL)
		c.nodes = append(c.nodes, nd)
	}
	for _, nd := range c.nodes {
		nd.args = []string{
			"--data-dir", nd.dataDir,
			"--listen-client-urls", nd.clientURL,
			"--advertise-client-urls", nd.clientURL,
			"--listen-peer-urls", nd.peerURL,
			"--initial-advertise-peer-urls", nd.peerURL,
		}
		if n > 1 {
			nd.args = append(nd.args,
				"--name", nd.name,
				"--initial-cluster", strings.Join(initial, ","),
				"--initial-cluster-token", "etcd-cluster-1",
				"--initial-cluster-state", "new")
		}
		nd.args = append(nd.args, extraFlags...)
	}
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			nd.stopProcess()
		}
		if t.Failed() {
			for _, nd := range c.nodes {
				kept := filepath.Join(os.TempDir(), fmt.Sprintf("rangekv-e2e-%s-%s.log", strings.ReplaceAll(t.Name(), "/", "-"), nd.name))
				if data, err := os.ReadFile(nd.logPath); err == nil {
					_ = os.WriteFile(kept, data, 0o644)
				}
				t.Logf("--- last %d lines of %s's log (whole log kept in %s) ---\n%s", logTailLines, nd.name, kept,
					tailFile(nd.logPath, logTailLines))
			}
		}
	})
	return c
}

// tailFile returns the last n lines of the file at path.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// start launches the node's process with its flags; it does not wait for
// readiness.
func (nd *node) start(t testing.TB) {
	t.Helper()
	nd.mu.Lock()
	defer nd.mu.Unlock()
	require.Nil(t, nd.cmd, "node %s is already running", nd.name)
	f, err := os.OpenFile(nd.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(t, err)
	fmt.Fprintf(f, "=== e2e: %s starting %s %s\n", time.Now().Format(time.RFC3339Nano), rangekvBin, strings.Join(nd.args, " "))
	cmd := exec.Command(rangekvBin, nd.args...)
	cmd.Env = append(cleanEnv(), "GOFAIL_HTTP="+nd.failpoints)
	cmd.Stdout = f
	cmd.Stderr = f
	setProcessAttrs(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		require.NoError(t, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(exited)
	}()
	nd.cmd, nd.exited = cmd, exited
}

// stopProcess SIGKILLs the node's process, if running, and waits for it to
// exit.
func (nd *node) stopProcess() {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd == nil {
		return
	}
	_ = nd.cmd.Process.Kill()
	<-nd.exited
	nd.cmd, nd.exited = nil, nil
}

// waitReady polls GET /readyz until it answers 200, failing the test if
// the process exits first or readyTimeout passes.
func (nd *node) waitReady(t testing.TB) {
	t.Helper()
	nd.mu.Lock()
	exited := nd.exited
	nd.mu.Unlock()
	require.NotNil(t, exited, "node %s is not running", nd.name)
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(readyTimeout)
	last := "no answer yet"
	for {
		select {
		case <-exited:
			t.Fatalf("node %s exited before becoming ready; log tail:\n%s", nd.name, tailFile(nd.logPath, logTailLines))
		default:
		}
		resp, err := hc.Get(nd.clientURL + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			// A goroutine dump in the log (Go's SIGQUIT handler) shows
			// where a stuck node is stuck.
			nd.mu.Lock()
			if nd.cmd != nil {
				_ = nd.cmd.Process.Signal(syscall.SIGQUIT)
			}
			nd.mu.Unlock()
			select {
			case <-exited:
			case <-time.After(2 * time.Second):
			}
			kept := filepath.Join(os.TempDir(), fmt.Sprintf("rangekv-e2e-stuck-%s-%d.log", nd.name, time.Now().UnixNano()))
			if data, err := os.ReadFile(nd.logPath); err == nil {
				_ = os.WriteFile(kept, data, 0o644)
			}
			t.Fatalf("node %s not ready after %v (log with a goroutine dump kept in %s): last /readyz: %s", nd.name, readyTimeout, kept, last)
		}
		time.Sleep(pollInterval)
	}
}

// enableFailpoint sets a gofail failpoint of the running node to terms
// (e.g. `sleep("1m")`); it stays set until the process exits.
func (nd *node) enableFailpoint(t testing.TB, name, terms string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, "http://"+nd.failpoints+"/"+name, strings.NewReader(terms))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusNoContent, resp.StatusCode, "enabling failpoint %s on %s: %s", name, nd.name, body)
}

// endpoint is the node's client address as etcdctl and clientv3 take it.
func (nd *node) endpoint() string { return strings.TrimPrefix(nd.clientURL, "http://") }

// on returns a view of the cluster whose helpers report failures to t, for
// use inside subtests (a subtest must not fail its parent's t).
func (c *cluster) on(t testing.TB) *cluster {
	cc := *c
	cc.t = t
	return &cc
}

// kill SIGKILLs node i and waits for the process to exit.
func (c *cluster) kill(i int) { c.nodes[i].stopProcess() }

// restart starts node i again with the same flags and waits until it is
// ready.
func (c *cluster) restart(i int) {
	c.t.Helper()
	c.nodes[i].start(c.t)
	c.nodes[i].waitReady(c.t)
}

// restartAll SIGKILLs every node, starts them all again with the same
// flags and waits until every one is ready (a lone node of a larger cluster
// cannot become ready, so they start together).
func (c *cluster) restartAll() {
	c.t.Helper()
	for _, nd := range c.nodes {
		nd.stopProcess()
	}
	for _, nd := range c.nodes {
		nd.start(c.t)
	}
	for _, nd := range c.nodes {
		nd.waitReady(c.t)
	}
}

// endpoints returns the comma-separated client endpoints of the given
// nodes, or of every node when none is given.
func (c *cluster) endpoints(idx ...int) string {
	if len(idx) == 0 {
		for i := range c.nodes {
			idx = append(idx, i)
		}
	}
	var eps []string
	for _, i := range idx {
		eps = append(eps, c.nodes[i].endpoint())
	}
	return strings.Join(eps, ",")
}

// ctlResult is the outcome of one etcdctl (or rangekvctl) run.
type ctlResult struct {
	prog   string // program name for messages; empty means etcdctl
	args   []string
	stdout string
	stderr string
	code   int // exit code
}

// errLine returns the last non-empty line of stderr, where etcdctl prints
// "Error: <message>" (after the client's warning logs).
func (r ctlResult) errLine() string {
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	return lines[len(lines)-1]
}

func (r ctlResult) String() string {
	prog := r.prog
	if prog == "" {
		prog = "etcdctl"
	}
	return fmt.Sprintf("%s %s: exit %d\nstdout:\n%s\nstderr:\n%s", prog, strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// etcdctl runs etcdctl with --endpoints and args, feeding it stdin, and
// returns its output and exit code. It fails the test only if etcdctl
// cannot be run or does not finish within commandTimeout.
func etcdctl(t testing.TB, endpoints, stdin string, args ...string) ctlResult {
	t.Helper()
	args = append([]string{"--endpoints", endpoints}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, etcdctlBin, args...)
	cmd.Env = cleanEnv()
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := ctlResult{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("etcdctl %s did not finish within %v", strings.Join(args, " "), commandTimeout)
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run etcdctl: %v", err)
	}
	return res
}

// rangekvctl runs bin/rangekvctl with --endpoints and args and returns its
// output and exit code. It fails the test only if rangekvctl cannot be run
// or does not finish within commandTimeout.
func rangekvctl(t testing.TB, endpoints string, args ...string) ctlResult {
	t.Helper()
	args = append([]string{"--endpoints", endpoints}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, rangekvctlBin, args...)
	cmd.Env = cleanEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := ctlResult{prog: "rangekvctl", args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("rangekvctl %s did not finish within %v", strings.Join(args, " "), commandTimeout)
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run rangekvctl: %v", err)
	}
	return res
}

// rctlOn runs rangekvctl against node i only.
func (c *cluster) rctlOn(i int, args ...string) ctlResult {
	c.t.Helper()
	return rangekvctl(c.t, c.endpoints(i), args...)
}

// mustRctlOn runs rangekvctl against node i, requires exit code 0 and
// returns stdout.
func (c *cluster) mustRctlOn(i int, args ...string) string {
	c.t.Helper()
	res := c.rctlOn(i, args...)
	require.Zero(c.t, res.code, "%s", res)
	return res.stdout
}

// ctl runs etcdctl against every node of the cluster.
func (c *cluster) ctl(args ...string) ctlResult {
	c.t.Helper()
	return etcdctl(c.t, c.endpoints(), "", args...)
}

// ctlOn runs etcdctl against node i only.
func (c *cluster) ctlOn(i int, args ...string) ctlResult {
	c.t.Helper()
	return etcdctl(c.t, c.endpoints(i), "", args...)
}

// mustCtl runs etcdctl against every node, requires exit code 0 and
// returns stdout.
func (c *cluster) mustCtl(args ...string) string {
	c.t.Helper()
	res := c.ctl(args...)
	require.Zero(c.t, res.code, "%s", res)
	return res.stdout
}

// mustCtlOn is mustCtl against node i only.
func (c *cluster) mustCtlOn(i int, args ...string) string {
	c.t.Helper()
	res := c.ctlOn(i, args...)
	require.Zero(c.t, res.code, "%s", res)
	return res.stdout
}

// mustCtlJSON runs etcdctl with -w json against the given endpoints and
// decodes its output into v.
func mustCtlJSON(t testing.TB, endpoints string, v any, args ...string) {
	t.Helper()
	res := etcdctl(t, endpoints, "", append(args, "-w", "json")...)
	require.Zero(t, res.code, "%s", res)
	require.NoError(t, json.Unmarshal([]byte(res.stdout), v), "%s", res)
}

// newClient returns a clientv3 client for the given endpoints, closed when
// the test ends.
func newClient(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	return cli
}

// waitFor polls cond every pollInterval until it returns true, failing the
// test after timeout with the last description cond gave of the state.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last state: %s", timeout, what, state)
		}
		time.Sleep(pollInterval)
	}
}

// JSON shapes of etcdctl -w json output (etcd's protobuf structs marshalled
// with encoding/json: byte slices are base64, which []byte decodes).

type jsonHeader struct {
	ClusterID uint64 `json:"cluster_id"`
	MemberID  uint64 `json:"member_id"`
	Revision  int64  `json:"revision"`
	RaftTerm  uint64 `json:"raft_term"`
}

type jsonKV struct {
	Key            []byte `json:"key"`
	Value          []byte `json:"value"`
	CreateRevision int64  `json:"create_revision"`
	ModRevision    int64  `json:"mod_revision"`
	Version        int64  `json:"version"`
}

type jsonGet struct {
	Header jsonHeader `json:"header"`
	Kvs    []jsonKV   `json:"kvs"`
	More   bool       `json:"more"`
	Count  int64      `json:"count"`
}

type jsonPut struct {
	Header jsonHeader `json:"header"`
}

type jsonMemberList struct {
	Header  jsonHeader `json:"header"`
	Members []struct {
		ID         uint64   `json:"ID"`
		Name       string   `json:"name"`
		PeerURLs   []string `json:"peerURLs"`
		ClientURLs []string `json:"clientURLs"`
		IsLearner  bool     `json:"isLearner"`
	} `json:"members"`
}

type jsonEndpointStatus []struct {
	Endpoint string `json:"Endpoint"`
	Status   struct {
		Header           jsonHeader `json:"header"`
		Version          string     `json:"version"`
		DBSize           int64      `json:"dbSize"`
		Leader           uint64     `json:"leader"`
		RaftIndex        uint64     `json:"raftIndex"`
		RaftTerm         uint64     `json:"raftTerm"`
		RaftAppliedIndex uint64     `json:"raftAppliedIndex"`
		Errors           []string   `json:"errors"`
	} `json:"Status"`
}

// jsonUnmarshal decodes etcdctl's JSON output s into v.
func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// revisionOf returns the header revision of `etcdctl <args> -w json` run
// against every node.
func (c *cluster) revisionOf(args ...string) int64 {
	c.t.Helper()
	var r jsonPut
	mustCtlJSON(c.t, c.endpoints(), &r, args...)
	require.NotZero(c.t, r.Header.Revision)
	return r.Header.Revision
}

// revString formats a revision for an etcdctl flag.
func revString(rev int64) string { return strconv.FormatInt(rev, 10) }

// lockedBuffer is an io.Writer safe for a process to write while the test
// reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// bgProcess is a long-running etcdctl (such as watch) whose output the
// test reads while it runs.
type bgProcess struct {
	cmd    *exec.Cmd
	stdout *lockedBuffer
	stderr *lockedBuffer
	exited chan struct{}
	code   int // valid once exited is closed
}

// startEtcdctl starts etcdctl in the background; it is SIGKILLed and waited
// for when the test ends.
func startEtcdctl(t testing.TB, endpoints string, args ...string) *bgProcess {
	t.Helper()
	args = append([]string{"--endpoints", endpoints}, args...)
	p := &bgProcess{stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(etcdctlBin, args...)
	p.cmd.Env = cleanEnv()
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	setProcessAttrs(p.cmd)
	require.NoError(t, p.cmd.Start())
	go func() {
		err := p.cmd.Wait()
		p.code = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		}
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// waitOutput waits until the process's stdout contains want and returns
// the index just past its first occurrence.
func (p *bgProcess) waitOutput(t testing.TB, want string, timeout time.Duration) int {
	t.Helper()
	var idx int
	waitFor(t, timeout, fmt.Sprintf("output %q", want), func() (bool, string) {
		out := p.stdout.String()
		i := strings.Index(out, want)
		if i < 0 {
			return false, fmt.Sprintf("stdout %q, stderr %q", out, p.stderr.String())
		}
		idx = i + len(want)
		return true, ""
	})
	return idx
}
