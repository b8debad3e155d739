package client

// In-process test clusters of real rangekv nodes (node.Start), on free
// loopback ports, with manual splits only.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/rangekv/rangekv/node"
	"github.com/rangekv/rangekv/txnproto"
)

// testWait bounds every wait on cluster state.
const testWait = 15 * time.Second

var (
	portsMu sync.Mutex
	ports   = map[int]bool{}
)

// freeAddr returns a loopback address whose port was free a moment ago.
// Like node's tests it prefers ports below the kernel's ephemeral range,
// which outgoing connections cannot take before the node binds them.
func freeAddr(t testing.TB) string {
	t.Helper()
	lo := 0
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var hi int
		_, _ = fmt.Sscan(string(b), &lo, &hi)
	}
	for range 100 {
		if lo <= 20000 {
			break
		}
		port := 20000 + rand.IntN(lo-20000)
		portsMu.Lock()
		taken := ports[port]
		ports[port] = true
		portsMu.Unlock()
		if taken {
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
	defer l.Close()
	return l.Addr().String()
}

// testNode is one node of a testCluster.
type testNode struct {
	cfg node.Config
	id  uint64
	cli *clientv3.Client // talks to this node only

	mu sync.Mutex
	n  *node.Node // nil once stopped
}

func (tn *testNode) url() string { return tn.cfg.AdvertiseClientURLs[0].String() }

func (tn *testNode) stop() {
	tn.mu.Lock()
	n := tn.n
	tn.n = nil
	tn.mu.Unlock()
	if n != nil {
		n.Stop()
	}
}

type testCluster struct {
	t     testing.TB
	nodes []*testNode
}

// testLogger returns a logger for nodes and clients: silent unless
// RANGEKV_TEST_LOG is set.
func testLogger() *zap.Logger {
	if os.Getenv("RANGEKV_TEST_LOG") == "" {
		return zap.NewNop()
	}
	return zap.Must(zap.NewDevelopment())
}

// startCluster starts n nodes at once and waits until a linearizable read
// succeeds through each. Nodes stop at the end of the test.
func startCluster(t testing.TB, n int) *testCluster {
	t.Helper()
	token := fmt.Sprintf("client-%s-%d", strings.ReplaceAll(t.Name(), "/", "_"), time.Now().UnixNano())
	c := &testCluster{t: t}
	var initial []node.InitialMember
	for i := range n {
		clientURL := url.URL{Scheme: "http", Host: freeAddr(t)}
		peerURL := url.URL{Scheme: "http", Host: freeAddr(t)}
		cfg := node.DefaultConfig()
		cfg.Name = fmt.Sprintf("n%d", i)
		cfg.DataDir = t.TempDir()
		cfg.ListenClientURLs = []url.URL{clientURL}
		cfg.AdvertiseClientURLs = []url.URL{clientURL}
		cfg.ListenPeerURLs = []url.URL{peerURL}
		cfg.InitialAdvertisePeerURLs = []url.URL{peerURL}
		cfg.InitialClusterToken = token
		cfg.HeartbeatInterval = 20 * time.Millisecond
		cfg.ElectionTimeout = 200 * time.Millisecond
		cfg.RangeMaxBytes, cfg.RangeSplitQPS = 0, 0 // manual splits only
		cfg.LeaderBalance = false                   // leaders stay where tests put them
		initial = append(initial, node.InitialMember{Name: cfg.Name, PeerURLs: []url.URL{peerURL}})
		c.nodes = append(c.nodes, &testNode{cfg: cfg})
	}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, tn := range c.nodes {
			wg.Go(tn.stop)
		}
		wg.Wait()
	})
	// All at once: a node dialing a peer that is not up yet backs off.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, tn := range c.nodes {
		tn.cfg.InitialCluster = initial
		wg.Go(func() {
			nd, err := node.Start(tn.cfg, testLogger().Named(tn.cfg.Name))
			errs[i] = err
			if err == nil {
				tn.mu.Lock()
				tn.n, tn.id = nd, nd.ID()
				tn.mu.Unlock()
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "start node %d", i)
	}
	for _, tn := range c.nodes {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{tn.url()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		require.NoError(t, err)
		tn.cli = cli
		t.Cleanup(func() { cli.Close() })
	}
	for _, tn := range c.nodes {
		waitFor(t, "a linearizable read through "+tn.cfg.Name, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := tn.cli.Get(ctx, "readiness-probe")
			return err == nil
		})
		// Nodes publish their client URLs after starting.
		waitFor(t, "every node's client URL listed by "+tn.cfg.Name, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			resp, err := txnproto.NewRangesClient(tn.cli.ActiveConnection()).ListNodes(ctx, &txnproto.ListNodesRequest{})
			if err != nil || len(resp.Nodes) != n {
				return false
			}
			for _, nd := range resp.Nodes {
				if len(nd.GetMember().GetClientUrls()) == 0 {
					return false
				}
			}
			return true
		})
	}
	return c
}

// byID returns the node with member ID id.
func (c *testCluster) byID(id uint64) *testNode {
	for _, tn := range c.nodes {
		if tn.id == id {
			return tn
		}
	}
	c.t.Fatalf("no node %x", id)
	return nil
}

// ranges lists the ranges as node tn sees them.
func (c *testCluster) ranges(ctx context.Context, tn *testNode) ([]*txnproto.RangeInfo, error) {
	resp, err := txnproto.NewRangesClient(tn.cli.ActiveConnection()).ListRanges(ctx, &txnproto.ListRangesRequest{})
	if err != nil {
		return nil, err
	}
	return resp.Ranges, nil
}

// settledRanges waits until every running node lists the same ranges
// with the same known leader each, one of the running nodes, and returns
// them.
func (c *testCluster) settledRanges(running ...*testNode) []*txnproto.RangeInfo {
	c.t.Helper()
	var out []*txnproto.RangeInfo
	alive := map[uint64]bool{}
	for _, tn := range running {
		alive[tn.id] = true
	}
	waitFor(c.t, "ranges with agreed leaders", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var first []*txnproto.RangeInfo
		for i, tn := range running {
			rs, err := c.ranges(ctx, tn)
			if err != nil {
				return false
			}
			for j, r := range rs {
				if !alive[r.LeaderNodeId] || i > 0 && (len(first) != len(rs) || first[j].RangeId != r.RangeId ||
					first[j].Generation != r.Generation || first[j].LeaderNodeId != r.LeaderNodeId) {
					return false
				}
			}
			if i == 0 {
				first = rs
			}
		}
		out = first
		return true
	})
	return out
}

// waitFor polls cond until it holds, failing the test after testWait.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", testWait, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
