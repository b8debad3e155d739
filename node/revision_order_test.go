package node

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// leadRangeOn moves the leadership of the range holding key to member
// target and waits until target leads it.
func leadRangeOn(t *testing.T, c *testCluster, key string, target *testMember) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for {
		r, err := target.node().userRange([]byte(key))
		require.NoError(t, err)
		if r.Status().IsLeader {
			return
		}
		for _, m := range c.running() {
			if lr, err := m.node().userRange([]byte(key)); err == nil && lr.Status().IsLeader {
				_ = lr.MoveLeader(ctxT(t, time.Second), target.id())
			}
		}
		require.True(t, time.Now().Before(deadline), "%s did not take the range of %q", target.name, key)
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHeaderRevisionsFollowRealTime checks the header-revision
// guarantee across ranges and nodes: a write begun after another was
// acknowledged gets a larger revision, and a linearizable read's header
// revision is at least that of every write acknowledged before it began,
// whichever range and node each went through. Two ranges are led by
// different nodes; the first range's leader runs 300ms fast (within
// --max-clock-offset), and its raft traffic to the second range's leader
// is delayed, so only the rounds the guarantee rests on (not luck in
// message timing) can carry its clock over.
func TestHeaderRevisionsFollowRealTime(t *testing.T) {
	var slowFrom atomic.Uint64
	c := newTestCluster(t, 3, manualPlacement, func(cfg *Config) {
		if cfg.Name == "n0" {
			cfg.UnsafeClockSkew = 300 * time.Millisecond
		}
		if cfg.Name == "n1" {
			// Batches from n0 reach n1 100ms late (slowFrom is set
			// below, before any write the test checks).
			cfg.TestingRaftReceiveDelay = func(from uint64) time.Duration {
				if from == slowFrom.Load() {
					return 100 * time.Millisecond
				}
				return 0
			}
		}
	})
	slowFrom.Store(c.members[0].id())
	lead := c.waitLeader()
	_, _, err := lead.node().splitAt(ctxT(t, testWait), []byte("m"))
	require.NoError(t, err)
	n0, n1, n2 := c.members[0], c.members[1], c.members[2]
	leadRangeOn(t, c, "a", n0)
	leadRangeOn(t, c, "z", n1)

	var last int64
	violations := map[string]int{}
	check := func(what string, rev int64, strictly bool) {
		t.Helper()
		if rev < last || strictly && rev == last {
			violations[what]++
		}
		last = max(last, rev)
	}
	ctx := func() context.Context { return ctxT(t, testWait) }
	for i := range 20 {
		// A write on n0's range, through n0: its revision comes from n0's
		// fast clock.
		w, err := n0.client.Put(ctx(), fmt.Sprintf("a%d", i), "v")
		require.NoError(t, err)
		check("put a via n0", w.Header.Revision, true)

		// A write on n1's range through n1.
		w, err = n1.client.Put(ctx(), fmt.Sprintf("z%d", i), "v")
		require.NoError(t, err)
		check("put z via n1", w.Header.Revision, true)

		// A read of n1's range through n1, then through n2 (forwarded).
		g, err := n1.client.Get(ctx(), fmt.Sprintf("z%d", i))
		require.NoError(t, err)
		check("get z via n1", g.Header.Revision, false)
		g, err = n2.client.Get(ctx(), "z")
		require.NoError(t, err)
		check("get z via n2", g.Header.Revision, false)

		// A write on n0's range again, forwarded by n2, then a read of
		// both ranges at one revision through n1.
		w, err = n2.client.Put(ctx(), fmt.Sprintf("b%d", i), "v")
		require.NoError(t, err)
		check("put b via n2", w.Header.Revision, true)
		g, err = n1.client.Get(ctx(), "", clientv3.WithFromKey(), clientv3.WithCountOnly())
		require.NoError(t, err)
		check("get all via n1", g.Header.Revision, false)
		require.Equal(t, int64(3*i+3), g.Count)
	}
	require.Empty(t, violations, "responses whose revision went below one acknowledged before (of 20 each)")
	requireClosedTimestampsKept(t, c)
}

// TestFencedNodeEndsWatchStreams: a watch stream open on a node when its
// clock monitor fences it ends with the reason (Unavailable), so its
// client resumes on another node: a fenced node closes nothing at its own
// clock, and its watchers would stall. New streams are refused until the
// node serves again.
func TestFencedNodeEndsWatchStreams(t *testing.T) {
	c := newTestCluster(t, 3, manualPlacement)
	m := c.members[0]
	conn, err := grpc.NewClient(strings.TrimPrefix(m.clientURL(), "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	stream, err := pb.NewWatchClient(conn).Watch(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
		CreateRequest: &pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("b")}}}))
	created, err := stream.Recv()
	require.NoError(t, err)
	require.True(t, created.Created)

	const reason = "rangekv: this node's clock is off (test)"
	m.node().clockCheck.set(reason)
	_, err = stream.Recv()
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), reason)

	again, err := pb.NewWatchClient(conn).Watch(ctx)
	require.NoError(t, err)
	_, err = again.Recv()
	require.Equal(t, codes.Unavailable, status.Code(err), "a new stream is refused while fenced")

	m.node().clockCheck.set("")
	serving, err := pb.NewWatchClient(conn).Watch(ctx)
	require.NoError(t, err)
	require.NoError(t, serving.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
		CreateRequest: &pb.WatchCreateRequest{Key: []byte("a")}}}))
	created, err = serving.Recv()
	require.NoError(t, err)
	require.True(t, created.Created)
}
