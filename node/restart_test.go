package node

// Crash-and-restart tests. An in-process node cannot be SIGKILLed and its
// engine cannot be opened on a crashable in-memory FS (kvstore.Open takes
// a directory), so each node runs as a subprocess: the test binary
// re-executes itself running only TestHelperProcess, which starts one node
// from a JSON Config in the environment. The parent writes through
// clientv3, records which writes were acknowledged, SIGKILLs nodes (no
// Stop, no engine Close: whatever Pebble had not written out is lost) and
// restarts them from the same data directory.
//
// SIGKILL models a process crash: data the process handed to the kernel
// survives in the page cache. It does not model losing power.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// helperConfigEnv carries the helper process's node Config as JSON.
const helperConfigEnv = "RANGEKV_TEST_HELPER_NODE_CONFIG"

// helperModeEnv selects another helper scenario than running one node.
const (
	helperModeEnv           = "RANGEKV_TEST_HELPER_MODE"
	helperModeStopUnderLoad = "stop-under-load"
)

// TestHelperProcess is not a test. Run by procNode in a child process, it
// runs one node until killed; run by TestNodeStopUnderLoad
// (helperModeEnv), it runs stopDuringScans.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperModeEnv) == helperModeStopUnderLoad {
		stopDuringScans(t)
		return
	}
	raw := os.Getenv(helperConfigEnv)
	if raw == "" {
		t.Skip("helper for the crash tests: runs one node in a subprocess")
	}
	var cfg Config
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "helper: bad config: %v\n", err)
		os.Exit(2)
	}
	// Do not outlive the test that started us.
	go func(parent int) {
		for range time.Tick(500 * time.Millisecond) {
			if os.Getppid() != parent {
				os.Exit(5)
			}
		}
	}(os.Getppid())
	enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	lg := zap.New(zapcore.NewCore(enc, zapcore.Lock(os.Stderr), zap.InfoLevel)).Named(cfg.Name)
	n, err := Start(cfg, lg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "helper: start: %v\n", err)
		os.Exit(3)
	}
	<-n.Done()
	fmt.Fprintf(os.Stderr, "helper: node stopped: %v\n", n.Err())
	os.Exit(4)
}

// lockedBuffer collects a subprocess's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// procNode is one node run as a subprocess, across incarnations.
type procNode struct {
	t      testing.TB
	cfg    Config
	client *clientv3.Client
	out    *lockedBuffer // output of every incarnation

	cmd   *exec.Cmd
	waitc chan struct{}
	incar int
}

func (p *procNode) id() uint64 {
	return memberID([]string{p.cfg.InitialAdvertisePeerURLs[0].String()}, p.cfg.InitialClusterToken)
}

func (p *procNode) start() {
	p.t.Helper()
	require.Nil(p.t, p.cmd, "%s already running", p.cfg.Name)
	js, err := json.Marshal(p.cfg)
	require.NoError(p.t, err)
	p.incar++
	fmt.Fprintf(p.out, "===== %s incarnation %d =====\n", p.cfg.Name, p.incar)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperConfigEnv+"="+string(js))
	cmd.Stdout, cmd.Stderr = p.out, p.out
	require.NoError(p.t, cmd.Start())
	waitc := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(waitc)
	}()
	p.cmd, p.waitc = cmd, waitc
}

// kill SIGKILLs the node and waits until it is gone.
func (p *procNode) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.waitc
	p.cmd = nil
}

// exited reports whether the running incarnation died on its own.
func (p *procNode) exited() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.waitc:
		return true
	default:
		return false
	}
}

type procCluster struct {
	t     testing.TB
	nodes []*procNode
}

// newProcCluster starts n subprocess nodes and waits until they agree on
// a leader and serve linearizable reads. Every node is killed in cleanup;
// on failure the nodes' output is logged.
func newProcCluster(t *testing.T, n int, opts ...func(*Config)) *procCluster {
	t.Helper()
	pc := &procCluster{t: t}
	for _, cfg := range testConfigs(t, n, opts...) {
		p := &procNode{t: t, cfg: cfg, out: &lockedBuffer{}}
		cli, err := newTestClient(cfg.AdvertiseClientURLs[0].String())
		require.NoError(t, err)
		p.client = cli
		pc.nodes = append(pc.nodes, p)
	}
	t.Cleanup(func() {
		for _, p := range pc.nodes {
			p.kill()
			p.client.Close()
			if t.Failed() {
				t.Logf("output of %s:\n%s", p.cfg.Name, tail(p.out.String(), 200))
			}
		}
	})
	for _, p := range pc.nodes {
		p.start()
	}
	pc.waitReady()
	return pc
}

func tail(s string, lines int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > lines {
		ls = append([]string{"..."}, ls[len(ls)-lines:]...)
	}
	return strings.Join(ls, "\n")
}

func (pc *procCluster) running() []*procNode {
	var out []*procNode
	for _, p := range pc.nodes {
		if p.cmd != nil {
			out = append(out, p)
		}
	}
	return out
}

func (pc *procCluster) byID(id uint64) *procNode {
	for _, p := range pc.nodes {
		if p.id() == id {
			return p
		}
	}
	return nil
}

// waitLeader waits until every running node names the same running
// leader.
func (pc *procCluster) waitLeader() *procNode {
	pc.t.Helper()
	var clients []*clientv3.Client
	ids := map[uint64]bool{}
	for _, p := range pc.running() {
		require.False(pc.t, p.exited(), "%s exited:\n%s", p.cfg.Name, tail(p.out.String(), 50))
		clients = append(clients, p.client)
		ids[p.id()] = true
	}
	return pc.byID(waitLeaderAmong(pc.t, clients, ids))
}

func (pc *procCluster) waitReady() *procNode {
	pc.t.Helper()
	lead := pc.waitLeader()
	for _, p := range pc.running() {
		waitLinearizableRead(pc.t, p.client)
	}
	return lead
}

// ackLog records a sequential writer's outcomes: which value each key
// was last acknowledged with, and every value whose write had an unknown
// outcome (it may or may not have applied, at any later point).
type ackLog struct {
	mu         sync.Mutex
	acked      map[string]string
	unknown    map[string]map[string]bool
	acks       int
	maxAckRev  int64
	unknownOps int
}

func newAckLog() *ackLog {
	return &ackLog{acked: map[string]string{}, unknown: map[string]map[string]bool{}}
}

func (a *ackLog) ackCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.acks
}

// writer puts unique values through cli, sequentially, until stop is
// closed, cycling over nkeys keys under prefix.
type writer struct {
	stop chan struct{}
	done chan struct{}
}

func startWriter(cli *clientv3.Client, log *ackLog, prefix string, nkeys int) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			key := fmt.Sprintf("%s%03d", prefix, i%nkeys)
			val := fmt.Sprintf("%s-v%d", prefix, i)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			resp, err := cli.Put(ctx, key, val)
			cancel()
			log.mu.Lock()
			if err == nil {
				log.acked[key] = val
				log.acks++
				log.maxAckRev = max(log.maxAckRev, resp.Header.Revision)
			} else {
				if log.unknown[key] == nil {
					log.unknown[key] = map[string]bool{}
				}
				log.unknown[key][val] = true
				log.unknownOps++
			}
			log.mu.Unlock()
			if err != nil {
				// Do not spin while the cluster is down.
				select {
				case <-w.stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
	}()
	return w
}

func (w *writer) halt() {
	close(w.stop)
	<-w.done
}

// waitAcks waits until the log has at least n acknowledgements.
func waitAcks(t testing.TB, log *ackLog, n int) {
	t.Helper()
	require.True(t, assertEventually(testWait, func() bool { return log.ackCount() >= n }),
		"only %d of %d writes acknowledged", log.ackCount(), n)
}

// verify checks, through cli, that every key holds its last acknowledged
// value or the value of a write with an unknown outcome, and that no key
// the writer never acknowledged nor attempted appeared. With serializable
// it first waits until the node's applied revision covers every
// acknowledgement (the node serves from its own engine).
func (a *ackLog) verify(t testing.TB, cli *clientv3.Client, prefix, who string, serializable bool) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	var resp *clientv3.GetResponse
	ok := assertEventually(testWait, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		resp, err = cli.Get(ctx, prefix, opts...)
		return err == nil && resp.Header.Revision >= a.maxAckRev
	})
	require.True(t, ok, "%s: read of %q never reached revision %d", who, prefix, a.maxAckRev)
	got := map[string]string{}
	for _, kv := range resp.Kvs {
		got[string(kv.Key)] = string(kv.Value)
	}
	lost := 0
	for key, want := range a.acked {
		v, present := got[key]
		if !present {
			lost++
			t.Errorf("%s: acknowledged key %s (last acked value %s) is missing", who, key, want)
			continue
		}
		if v != want && !a.unknown[key][v] {
			lost++
			t.Errorf("%s: key %s = %s, want last acknowledged value %s (or one of %d unknown-outcome writes)",
				who, key, v, want, len(a.unknown[key]))
		}
	}
	for key := range got {
		if _, ok := a.acked[key]; !ok && len(a.unknown[key]) == 0 {
			t.Errorf("%s: key %s was never written", who, key)
		}
	}
	require.Zero(t, lost, "%s lost acknowledged writes", who)
}

// TestCrashRestartSingleNode SIGKILLs a one-node cluster in the middle of
// a stream of writes, twice, and checks that every acknowledged write is
// there after each restart.
func TestCrashRestartSingleNode(t *testing.T) {
	pc := newProcCluster(t, 1)
	p := pc.nodes[0]
	log := newAckLog()
	const prefix = "single/"
	for round := 1; round <= 2; round++ {
		w := startWriter(p.client, log, prefix, 40)
		waitAcks(t, log, 150*round)
		p.kill() // mid-stream: the writer has a Put in flight or about to be
		w.halt()
		p.start()
		pc.waitReady()
		log.verify(t, p.client, prefix, fmt.Sprintf("round %d, linearizable", round), false)
		log.verify(t, p.client, prefix, fmt.Sprintf("round %d, serializable", round), true)
		// The restarted node keeps accepting writes at higher revisions.
		resp, err := p.client.Put(ctxT(t, 5*time.Second), "single-after", fmt.Sprint(round))
		require.NoError(t, err)
		require.Greater(t, resp.Header.Revision, log.maxAckRev)
	}
	t.Logf("acknowledged %d writes, %d with unknown outcome", log.acks, log.unknownOps)
}

// TestCrashRestartThreeNodes SIGKILLs, in one three-node cluster, a
// follower, then the leader, then every node at once, each in the middle
// of a stream of writes through a surviving node, and checks every
// acknowledged write on every node after the restart.
func TestCrashRestartThreeNodes(t *testing.T) {
	pc := newProcCluster(t, 3)
	log := newAckLog()
	const prefix = "three/"
	verifyAll := func(what string) {
		t.Helper()
		for _, p := range pc.nodes {
			log.verify(t, p.client, prefix, fmt.Sprintf("%s: %s linearizable", what, p.cfg.Name), false)
			log.verify(t, p.client, prefix, fmt.Sprintf("%s: %s serializable", what, p.cfg.Name), true)
		}
	}
	crash := func(what string, pick func(lead *procNode) []*procNode, through func(lead *procNode, victims []*procNode) *procNode) {
		lead := pc.waitReady()
		victims := pick(lead)
		via := through(lead, victims)
		w := startWriter(via.client, log, prefix, 60)
		waitAcks(t, log, log.ackCount()+100)
		for _, v := range victims {
			v.kill()
		}
		if len(victims) < len(pc.nodes) {
			// The survivors keep a quorum: writes go on.
			waitAcks(t, log, log.ackCount()+100)
		}
		w.halt()
		for _, v := range victims {
			v.start()
		}
		pc.waitReady()
		verifyAll(what)
	}
	others := func(lead *procNode, victims []*procNode) *procNode {
		for _, p := range pc.nodes {
			if !containsProc(victims, p) {
				return p
			}
		}
		return lead
	}
	t.Run("follower", func(t *testing.T) {
		crash("kill follower", func(lead *procNode) []*procNode {
			for _, p := range pc.nodes {
				if p != lead {
					return []*procNode{p}
				}
			}
			return nil
		}, others)
	})
	t.Run("leader", func(t *testing.T) {
		crash("kill leader", func(lead *procNode) []*procNode { return []*procNode{lead} }, others)
	})
	t.Run("all", func(t *testing.T) {
		// Through a follower, so the forwarding path is in flight too.
		crash("kill all", func(*procNode) []*procNode { return pc.nodes }, func(lead *procNode, _ []*procNode) *procNode {
			for _, p := range pc.nodes {
				if p != lead {
					return p
				}
			}
			return lead
		})
	})
	t.Logf("acknowledged %d writes, %d with unknown outcome", log.acks, log.unknownOps)
}

func containsProc(ps []*procNode, p *procNode) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// TestFollowerCatchesUpBySnapshot stops a follower, writes more than
// SnapshotCount entries so every live replica truncates its raft log past
// the follower's position, restarts the follower and checks that it
// installs a snapshot and then serves every key from its own engine, also
// after another restart.
func TestFollowerCatchesUpBySnapshot(t *testing.T) {
	const snapCount = 100
	c := newTestCluster(t, 3, withSnapshotCount(snapCount))
	lead := c.waitLeader()
	f := c.followers(lead)[0]
	c.stop(f)

	const keys = 150
	want := map[string]string{}
	var lastRev, firstRev int64
	ctx := ctxT(t, 2*testWait)
	for i := range 4 * snapCount {
		key := fmt.Sprintf("snap/%03d", i%keys)
		val := fmt.Sprintf("v%d", i)
		resp, err := lead.client.Put(ctx, key, val)
		require.NoError(t, err)
		want[key] = val
		lastRev = resp.Header.Revision
		if i == 0 {
			firstRev = lastRev
		}
	}
	// A delete the follower must also learn from the snapshot.
	del, err := lead.client.Delete(ctx, "snap/000")
	require.NoError(t, err)
	require.EqualValues(t, 1, del.Deleted)
	delete(want, "snap/000")
	lastRev = del.Header.Revision
	require.True(t, lead.hasLog("truncating raft log"), "leader never truncated its raft log")

	c.restart(f)
	checkFollower := func(what string) {
		t.Helper()
		var resp *clientv3.GetResponse
		ok := assertEventually(testWait, func() bool {
			rctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			var err error
			resp, err = f.client.Get(rctx, "snap/", clientv3.WithPrefix(), clientv3.WithSerializable())
			return err == nil && resp.Header.Revision >= lastRev
		})
		require.True(t, ok, "%s: follower %s never applied revision %d", what, f.name, lastRev)
		require.Equal(t, f.id(), resp.Header.MemberId)
		got := map[string]string{}
		for _, kv := range resp.Kvs {
			got[string(kv.Key)] = string(kv.Value)
		}
		require.Equal(t, want, got, "%s: follower %s serializable read", what, f.name)
	}
	checkFollower("after snapshot")
	require.True(t, f.hasLog("applied snapshot"), "follower %s caught up without a snapshot", f.name)
	require.True(t, lead.hasLog("sent snapshot") || c.followers(lead)[0].hasLog("sent snapshot"))

	// Replication continues from the log after the snapshot.
	resp, err := lead.client.Put(ctx, "snap/after", "x")
	require.NoError(t, err)
	want["snap/after"] = "x"
	lastRev = resp.Header.Revision
	checkFollower("after a write following the snapshot")

	// The snapshot carried the MVCC history: a watch through the follower
	// from the first write's revision replays every event.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := f.client.Watch(wctx, "snap/", clientv3.WithPrefix(), clientv3.WithRev(firstRev))
	var evs []*clientv3.Event
	timeout := time.After(testWait)
	for len(evs) < 4*snapCount+2 {
		select {
		case resp := <-wch:
			require.NoError(t, resp.Err())
			evs = append(evs, resp.Events...)
		case <-timeout:
			t.Fatalf("watch replay through %s: %d of %d events", f.name, len(evs), 4*snapCount+2)
		}
	}
	require.Len(t, evs, 4*snapCount+2)
	for i, ev := range evs[:4*snapCount] {
		require.Equal(t, fmt.Sprintf("snap/%03d", i%keys), string(ev.Kv.Key))
		require.Equal(t, fmt.Sprintf("v%d", i), string(ev.Kv.Value))
	}
	require.Equal(t, "snap/000", string(evs[4*snapCount].Kv.Key))
	require.Equal(t, mvccpb.DELETE, evs[4*snapCount].Type)
	require.Equal(t, "snap/after", string(evs[4*snapCount+1].Kv.Key))
	cancel()

	// A key the snapshot brought, rewritten after it: the follower applies
	// it as the leader does (its presence set learned the snapshot's keys).
	rewrite := func(key, what string) {
		t.Helper()
		resp, err := lead.client.Put(ctx, key, "rewritten")
		require.NoError(t, err)
		want[key] = "rewritten"
		lastRev = resp.Header.Revision
		checkFollower(what)
		sameVersions(t, lead, f, "snap/")
	}
	rewrite("snap/001", "after rewriting a key the snapshot brought")

	// The snapshot's state survives a restart of the follower.
	c.stop(f)
	c.restart(f)
	checkFollower("after restarting the follower")
	c.waitReady()
	// And after its restart, which loads its presence set from the engine.
	rewrite("snap/002", "after rewriting a key following the restart")
}

// sameVersions checks that f serves every key under prefix with the
// leader's create_revision, mod_revision and version, once it has applied
// the leader's revision.
func sameVersions(t *testing.T, lead, f *testMember, prefix string) {
	t.Helper()
	ctx := ctxT(t, testWait)
	want, err := lead.client.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithSerializable())
	require.NoError(t, err)
	var got *clientv3.GetResponse
	require.True(t, assertEventually(testWait, func() bool {
		got, err = f.client.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithSerializable())
		return err == nil && got.Header.Revision >= want.Header.Revision
	}), "follower %s never reached revision %d", f.name, want.Header.Revision)
	require.Equal(t, want.Kvs, got.Kvs)
}

// TestNodeStopUnderLoad stops a node (bare Node.Stop) while clients run
// large serializable scans through it, in a subprocess because a crash in
// a node goroutine kills the whole process. Regression test for a
// shutdown race (fixed in a30035a): Node.Stop closed the Pebble engine
// while gRPC handlers were still reading it (grpc.Server.Stop does not
// wait for handlers), and the node crashed with a nil dereference in
// Pebble's block cache or "pebble: closed".
func TestNodeStopUnderLoad(t *testing.T) {
	if os.Getenv(helperModeEnv) != "" {
		t.Skip("in a helper process")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), helperModeEnv+"="+helperModeStopUnderLoad)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(2 * testWait):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("helper did not finish:\n%s", tail(out.String(), 100))
	}
	if err == nil {
		for _, l := range strings.Split(out.String(), "\n") {
			if strings.Contains(l, "survived") {
				t.Log(strings.TrimSpace(l))
			}
		}
		return
	}
	text := out.String()
	if i := strings.Index(text, "panic: "); i >= 0 {
		t.Fatalf("a node crashed while stopping under load (Node.Stop must wait for every user of the engine "+
			"before closing it):\n%s", head(text[i:], 60))
	}
	t.Fatalf("helper failed: %v\n%s", err, tail(text, 100))
}

// stopDuringScans (in a helper process) stops a one-node cluster with a
// bare Node.Stop while clients run large serializable scans through it,
// and restarts it, several times.
func stopDuringScans(t *testing.T) {
	c := newTestCluster(t, 1)
	m := c.members[0]
	val := strings.Repeat("x", 1024)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 3000; i += 8 {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := m.client.Put(ctx, fmt.Sprintf("scan/%05d", i), val)
				cancel()
				if err != nil {
					t.Errorf("load: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// Reads must come from sstables (through the block cache), not the
	// memtable, for a read after Close to touch freed engine state.
	require.NoError(t, m.node().eng.DB.Flush())
	for cycle := range 6 {
		cli, err := newTestClient(m.clientURL())
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					_, _ = cli.Get(ctx, "scan/", clientv3.WithPrefix(), clientv3.WithSerializable())
				}
			}()
		}
		time.Sleep(200 * time.Millisecond)
		c.stop(m)
		cancel()
		wg.Wait()
		cli.Close()
		c.restart(m)
		fmt.Printf("survived stop during scans, cycle %d\n", cycle)
	}
}

func head(s string, lines int) string {
	ls := strings.SplitN(s, "\n", lines+1)
	if len(ls) > lines {
		ls = ls[:lines]
	}
	return strings.Join(ls, "\n")
}

// TestRestartedFollowerRejoinsPromptly: a follower that was down for a
// few seconds hears from the leader again within a few election timeouts
// of restarting (etcd's peer streams redial every 100ms).
func TestRestartedFollowerRejoinsPromptly(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	f := c.followers(lead)[0]
	c.stop(f)
	// While f is down the leader keeps failing to reach it.
	time.Sleep(3 * time.Second)
	began := time.Now()
	c.restart(f)
	var took time.Duration
	require.True(t, assertEventually(testWait, func() bool {
		took = time.Since(began)
		return statusLeader(context.Background(), f.client) != 0
	}), "restarted follower %s never learned the leader", f.name)
	const limit = 5 * testElectionTimeout
	if took > limit {
		t.Fatalf("regression: follower %s, down for 3s, learned the leader only %v after restarting (limit %v): the raft "+
			"transport's gRPC connection to it is in reconnect backoff (grpc default: 1s base, x1.6, up to 120s), "+
			"so the longer a node is down the longer it stays cut off after it returns", f.name, took.Round(time.Millisecond), limit)
	}
	t.Logf("follower rejoined %v after restarting", took.Round(time.Millisecond))
}

// TestStartFailsWhenPortInUse: Start returns an error, promptly, when its
// client or peer URL cannot be bound (etcd exits with "listen tcp ...:
// address already in use").
func TestStartFailsWhenPortInUse(t *testing.T) {
	for _, which := range []string{"client", "peer"} {
		t.Run(which, func(t *testing.T) {
			cfg := testConfigs(t, 1)[0]
			host := cfg.ListenClientURLs[0].Host
			if which == "peer" {
				host = cfg.ListenPeerURLs[0].Host
			}
			l, err := net.Listen("tcp", host)
			require.NoError(t, err)
			defer l.Close()
			done := make(chan error, 1)
			go func() {
				n, err := Start(cfg, zap.NewNop())
				if n != nil {
					n.Stop()
				}
				done <- err
			}()
			select {
			case err := <-done:
				require.Error(t, err)
				require.Contains(t, err.Error(), host)
			case <-time.After(1500 * time.Millisecond):
				// The goroutine stays blocked in Start; its engine stays open.
				t.Fatalf("regression: Start hangs instead of failing when the %s URL %s is in use: serve() fails, Start's "+
					"deferred closeAll calls store.Stop, which waits on the scheduler's done channel, but "+
					"store.Start (which runs the scheduler) was never called", which, host)
			}
		})
	}
}
