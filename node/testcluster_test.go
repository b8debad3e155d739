package node

// In-process test clusters: n nodes on free 127.0.0.1 ports, each with its
// own data directory and a clientv3 client that talks to that node only,
// plus helpers to wait for a leader, find it, stop and restart nodes. The
// crash tests in restart_test.go run nodes as subprocesses built from the
// same configurations (testConfigs).

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Timing used by every test cluster: fast enough for quick failover, slow
// enough that two loaded cores (and -race) do not cause spurious elections.
const (
	testHeartbeat       = 20 * time.Millisecond
	testElectionTimeout = 200 * time.Millisecond
	// testWait bounds every "poll until" in the tests.
	testWait = 20 * time.Second
)

// freeAddr returns a 127.0.0.1 address whose port was free a moment ago
// (listen, close). It prefers a random port below the kernel's ephemeral
// range: a port from listening on :0 is an ephemeral one, which any
// outgoing connection (a node dialing a peer that is not up yet) may take
// before the node binds it, and a node that cannot bind its URLs hangs in
// Start (see TestStartFailsWhenPortInUse).
func freeAddr(t testing.TB) string {
	t.Helper()
	lo := ephemeralLow()
	for range 100 {
		if lo <= 20000 {
			break
		}
		port := 20000 + rand.IntN(lo-20000)
		if !claimPort(port) {
			continue
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if l, err := net.Listen("tcp", addr); err == nil {
			require.NoError(t, l.Close())
			return addr
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

var (
	portsMu sync.Mutex
	ports   = map[int]bool{}
)

// claimPort reports whether port was not handed out before by this
// process (a stopped node's port stays reserved for its restart).
func claimPort(port int) bool {
	portsMu.Lock()
	defer portsMu.Unlock()
	if ports[port] {
		return false
	}
	ports[port] = true
	return true
}

// ephemeralLow returns the lowest port of the kernel's ephemeral range
// (0 when unknown).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil {
		return 0
	}
	return lo
}

var tokenSeq atomic.Uint64

// testConfigs builds the configurations of an n-node cluster: node names
// n0..n{n-1}, fresh ports and data directories, a unique cluster token and
// fast raft timing. opts adjust every node's configuration.
func testConfigs(t testing.TB, n int, opts ...func(*Config)) []Config {
	t.Helper()
	token := fmt.Sprintf("%s-%d-%d", strings.ReplaceAll(t.Name(), "/", "_"), time.Now().UnixNano(), tokenSeq.Add(1))
	var initial []InitialMember
	cfgs := make([]Config, n)
	for i := range cfgs {
		clientURL := url.URL{Scheme: "http", Host: freeAddr(t)}
		peerURL := url.URL{Scheme: "http", Host: freeAddr(t)}
		cfg := DefaultConfig()
		cfg.Name = fmt.Sprintf("n%d", i)
		cfg.DataDir = t.TempDir()
		cfg.ListenClientURLs = []url.URL{clientURL}
		cfg.AdvertiseClientURLs = []url.URL{clientURL}
		cfg.ListenPeerURLs = []url.URL{peerURL}
		cfg.InitialAdvertisePeerURLs = []url.URL{peerURL}
		cfg.InitialClusterToken = token
		cfg.HeartbeatInterval = testHeartbeat
		cfg.ElectionTimeout = testElectionTimeout
		cfgs[i] = cfg
		initial = append(initial, InitialMember{Name: cfg.Name, PeerURLs: []url.URL{peerURL}})
	}
	for i := range cfgs {
		cfgs[i].InitialCluster = initial
		for _, o := range opts {
			o(&cfgs[i])
		}
		require.NoError(t, cfgs[i].Validate())
	}
	return cfgs
}

// withSnapshotCount sets Config.SnapshotCount.
func withSnapshotCount(n uint64) func(*Config) {
	return func(c *Config) { c.SnapshotCount = n }
}

// testLogSink forwards log lines to t.Log while the test runs and drops
// them afterwards: goroutines of a stopped node (a snapshot sender, a
// transport stream) may still log, and t.Log after the test ends panics.
type testLogSink struct {
	t      testing.TB
	mu     sync.Mutex
	closed bool
}

func newTestLogSink(t testing.TB) *testLogSink {
	s := &testLogSink{t: t}
	// Registered before any node's cleanup, so it runs after every node
	// has stopped.
	t.Cleanup(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
	})
	return s
}

func (s *testLogSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (s *testLogSink) Sync() error { return nil }

// testMember is one node of a testCluster.
type testMember struct {
	name   string
	cfg    Config
	client *clientv3.Client
	// logs records the node's Info-and-above log entries across restarts.
	logs *observer.ObservedLogs
	lg   *zap.Logger

	mu sync.Mutex
	n  *Node // nil while stopped
}

// node returns the running node, nil while stopped.
func (m *testMember) node() *Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n
}

func (m *testMember) clientURL() string { return m.cfg.AdvertiseClientURLs[0].String() }

// id returns the member ID (stable across restarts).
func (m *testMember) id() uint64 {
	return memberID([]string{m.cfg.InitialAdvertisePeerURLs[0].String()}, m.cfg.InitialClusterToken)
}

// testCluster is n in-process nodes.
type testCluster struct {
	t       testing.TB
	members []*testMember
}

// newTestCluster starts an n-node cluster and waits until it has a leader
// and serves linearizable reads through every node. Every node is stopped
// in t.Cleanup.
func newTestCluster(t testing.TB, n int, opts ...func(*Config)) *testCluster {
	t.Helper()
	sink := newTestLogSink(t)
	c := &testCluster{t: t}
	for _, cfg := range testConfigs(t, n, opts...) {
		obsCore, logs := observer.New(zap.InfoLevel)
		warnCore := zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()),
			zapcore.AddSync(sink), zap.WarnLevel)
		m := &testMember{
			name: cfg.Name,
			cfg:  cfg,
			logs: logs,
			lg:   zap.New(zapcore.NewTee(warnCore, obsCore)).Named(cfg.Name),
		}
		c.members = append(c.members, m)
	}
	t.Cleanup(c.stopAll)
	// Start every node at once: a node's first raft messages to a peer
	// that is not listening yet put gRPC's connection into reconnect
	// backoff (about a second), which would delay the first election.
	errs := make([]error, len(c.members))
	var wg sync.WaitGroup
	for i, m := range c.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := startWithTimeout(m.cfg, m.lg)
			errs[i] = err
			m.mu.Lock()
			m.n = n
			m.mu.Unlock()
		}()
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "start %s", c.members[i].name)
	}
	for _, m := range c.members {
		cli, err := newTestClient(m.clientURL())
		require.NoError(t, err)
		m.client = cli
		t.Cleanup(func() { cli.Close() })
	}
	c.waitReady()
	return c
}

// newTestClient returns a clientv3 client that uses exactly one endpoint.
func newTestClient(endpoints ...string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}

// startWithTimeout runs Start, giving up after testWait: Start hangs
// instead of failing when it cannot bind its URLs (see
// TestStartFailsWhenPortInUse).
func startWithTimeout(cfg Config, lg *zap.Logger) (*Node, error) {
	type result struct {
		n   *Node
		err error
	}
	ch := make(chan result, 1)
	go func() {
		n, err := Start(cfg, lg)
		ch <- result{n, err}
	}()
	select {
	case r := <-ch:
		return r.n, r.err
	case <-time.After(testWait):
		return nil, fmt.Errorf("Start(%s) did not return within %v (are its ports %v %v taken?)",
			cfg.Name, testWait, cfg.ListenClientURLs, cfg.ListenPeerURLs)
	}
}

func (c *testCluster) start(m *testMember) {
	c.t.Helper()
	n, err := startWithTimeout(m.cfg, m.lg)
	require.NoError(c.t, err, "start %s", m.name)
	m.mu.Lock()
	m.n = n
	m.mu.Unlock()
}

// stop stops m (a clean Node.Stop).
func (c *testCluster) stop(m *testMember) {
	m.mu.Lock()
	n := m.n
	m.n = nil
	m.mu.Unlock()
	if n != nil {
		n.Stop()
	}
}

// restart starts a stopped member again from its data directory.
func (c *testCluster) restart(m *testMember) {
	c.t.Helper()
	require.Nil(c.t, m.node(), "%s is running", m.name)
	c.start(m)
}

func (c *testCluster) stopAll() {
	var wg sync.WaitGroup
	for _, m := range c.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.stop(m)
		}()
	}
	wg.Wait()
}

// running returns the members that are not stopped.
func (c *testCluster) running() []*testMember {
	var out []*testMember
	for _, m := range c.members {
		if m.node() != nil {
			out = append(out, m)
		}
	}
	return out
}

func (c *testCluster) memberByID(id uint64) *testMember {
	for _, m := range c.members {
		if m.id() == id {
			return m
		}
	}
	return nil
}

// statusLeader asks cli's endpoint which node leads the user range; 0 when
// it does not know or cannot answer.
func statusLeader(ctx context.Context, cli *clientv3.Client) uint64 {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := cli.Status(ctx, cli.Endpoints()[0])
	if err != nil {
		return 0
	}
	return resp.Leader
}

// waitLeader polls every running member's Maintenance.Status until they
// all name the same running member as the user range's leader, and
// returns it.
func (c *testCluster) waitLeader() *testMember {
	c.t.Helper()
	running := c.running()
	clients := make([]*clientv3.Client, len(running))
	ids := map[uint64]bool{}
	for i, m := range running {
		clients[i] = m.client
		ids[m.id()] = true
	}
	return c.memberByID(waitLeaderAmong(c.t, clients, ids))
}

// waitLeaderAmong polls Maintenance.Status through every client until all
// name the same leader, one of candidates, and returns its ID.
func waitLeaderAmong(t testing.TB, clients []*clientv3.Client, candidates map[uint64]bool) uint64 {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for {
		var lead uint64
		agree := true
		for _, cli := range clients {
			l := statusLeader(context.Background(), cli)
			if l == 0 || (lead != 0 && l != lead) {
				agree = false
				break
			}
			lead = l
		}
		if agree && candidates[lead] {
			return lead
		}
		if time.Now().After(deadline) {
			t.Fatalf("no agreed leader among %d nodes after %v", len(clients), testWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitReady waits for a leader and then until a linearizable read succeeds
// through every running member.
func (c *testCluster) waitReady() *testMember {
	c.t.Helper()
	lead := c.waitLeader()
	for _, m := range c.running() {
		waitLinearizableRead(c.t, m.client)
	}
	return lead
}

// waitLinearizableRead retries a linearizable Get through cli until it
// succeeds.
func waitLinearizableRead(t testing.TB, cli *clientv3.Client) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "readiness-probe")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("linearizable read through %v still failing after %v: %v", cli.Endpoints(), testWait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// followers returns the running members other than lead.
func (c *testCluster) followers(lead *testMember) []*testMember {
	var out []*testMember
	for _, m := range c.running() {
		if m != lead {
			out = append(out, m)
		}
	}
	return out
}

// hasLog reports whether m logged a message (Info or above) containing
// msg.
func (m *testMember) hasLog(msg string) bool {
	return m.logs.FilterMessageSnippet(msg).Len() > 0
}

// ctxT returns a context with timeout d, cancelled at test end.
func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
