package client

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/status"

	"github.com/rangekv/rangekv/txnproto"
)

func newTestClient(t testing.TB, endpoints ...string) *Client {
	t.Helper()
	c, err := New(Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: testLogger()})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	t.Cleanup(cancel)
	return ctx
}

// split splits the range holding key at key through c's Ranges service.
func split(t testing.TB, ctx context.Context, c *Client, key string) {
	t.Helper()
	_, err := c.RangesClient().SplitRange(ctx, &txnproto.SplitRangeRequest{Key: []byte(key)})
	require.NoError(t, err, "split at %q", key)
}

// kvs renders key-values without revisions, which differ between runs.
func kvs(in []*mvccpb.KeyValue) []string {
	out := []string{}
	for _, kv := range in {
		out = append(out, fmt.Sprintf("%s=%s v%d l%d", kv.Key, kv.Value, kv.Version, kv.Lease))
	}
	return out
}

// norm renders a KV response or error without revisions and member IDs.
func norm(resp any, err error) string {
	if err != nil {
		st, _ := status.FromError(err)
		return fmt.Sprintf("error %v: %s", st.Code(), st.Message())
	}
	switch r := resp.(type) {
	case *clientv3.PutResponse:
		prev := []string{}
		if r.PrevKv != nil {
			prev = kvs([]*mvccpb.KeyValue{r.PrevKv})
		}
		return fmt.Sprintf("put prev=%v", prev)
	case *clientv3.GetResponse:
		return fmt.Sprintf("get %v count=%d more=%v", kvs(r.Kvs), r.Count, r.More)
	case *clientv3.DeleteResponse:
		return fmt.Sprintf("delete %d prev=%v", r.Deleted, kvs(r.PrevKvs))
	case *clientv3.TxnResponse:
		return "txn " + normTxn((*pb.TxnResponse)(r))
	case clientv3.OpResponse:
		switch {
		case r.Get() != nil:
			return "op " + norm(r.Get(), nil)
		case r.Put() != nil:
			return "op " + norm(r.Put(), nil)
		case r.Del() != nil:
			return "op " + norm(r.Del(), nil)
		default:
			return "op " + norm(r.Txn(), nil)
		}
	}
	panic(fmt.Sprintf("unexpected response %T", resp))
}

func normTxn(r *pb.TxnResponse) string {
	s := fmt.Sprintf("succeeded=%v [", r.Succeeded)
	for _, op := range r.Responses {
		switch v := op.Response.(type) {
		case *pb.ResponseOp_ResponseRange:
			s += norm((*clientv3.GetResponse)(v.ResponseRange), nil)
		case *pb.ResponseOp_ResponsePut:
			s += norm((*clientv3.PutResponse)(v.ResponsePut), nil)
		case *pb.ResponseOp_ResponseDeleteRange:
			s += norm((*clientv3.DeleteResponse)(v.ResponseDeleteRange), nil)
		case *pb.ResponseOp_ResponseTxn:
			s += normTxn(v.ResponseTxn)
		}
		s += "; "
	}
	return s + "]"
}

// kvScript runs a fixed sequence of KV calls through kv and returns each
// normalized answer. Ranges start at "" and at splitKeys (see
// TestClientKVLikeClientv3), so some calls span ranges.
func kvScript(ctx context.Context, kv clientv3.KV) []string {
	var out []string
	add := func(resp any, err error) { out = append(out, norm(resp, err)) }

	add(kv.Put(ctx, "a/1", "v1"))
	add(kv.Put(ctx, "a/2", "v2", clientv3.WithPrevKV()))
	add(kv.Put(ctx, "a/1", "v1b", clientv3.WithPrevKV()))
	add(kv.Put(ctx, "m/1", "m1"))
	add(kv.Get(ctx, "a/1"))
	add(kv.Get(ctx, "a/1", clientv3.WithSerializable()))
	add(kv.Get(ctx, "nope"))
	add(kv.Get(ctx, "a/", clientv3.WithPrefix()))                        // two ranges
	add(kv.Get(ctx, "a/", clientv3.WithPrefix(), clientv3.WithLimit(1))) // more, count
	add(kv.Get(ctx, "a/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)))
	add(kv.Get(ctx, "a/", clientv3.WithPrefix(), clientv3.WithCountOnly()))
	add(kv.Get(ctx, "a", clientv3.WithFromKey(), clientv3.WithKeysOnly())) // every range
	add(kv.Get(ctx, "a/1", clientv3.WithRange("a/2")))                     // one range
	add(kv.Do(ctx, clientv3.OpGet("m/1")))
	add(kv.Txn(ctx).If(clientv3.Compare(clientv3.Value("a/2"), "=", "v2")).
		Then(clientv3.OpPut("a/3", "v3", clientv3.WithPrevKV()), clientv3.OpGet("a/2")).
		Else(clientv3.OpGet("a/4")).Commit())
	add(kv.Txn(ctx).If(clientv3.Compare(clientv3.Version("a/2"), ">", 5)).
		Then(clientv3.OpPut("a/3", "no")).
		Else(clientv3.OpGet("a/3"), clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut("a/4", "v4")}, nil)).Commit())
	add(kv.Txn(ctx).Then(clientv3.OpGet("a/3"), clientv3.OpGet("a/4", clientv3.WithSerializable())).Commit())
	add(kv.Txn(ctx).Then(clientv3.OpGet("a/3"), clientv3.OpGet("m/1")).Commit())           // read-only, two ranges
	add(kv.Txn(ctx).Then(clientv3.OpPut("a/5", "x"), clientv3.OpPut("m/5", "x")).Commit()) // refused
	add(kv.Delete(ctx, "a/", clientv3.WithPrefix()))                                       // refused
	add(kv.Delete(ctx, "a/3", clientv3.WithPrevKV()))
	add(kv.Delete(ctx, "a/4", clientv3.WithRange("a/5")))
	for _, op := range [][]clientv3.OpOption{{clientv3.WithPrefix()}, nil} { // two ranges, one range
		if ch, err := kv.GetStream(ctx, "a/2", op...); err != nil {
			add(nil, err)
		} else {
			add(clientv3.GetStreamToGetResponse(ch))
		}
	}
	// Leave nothing behind: deletes within one range each.
	for _, k := range []string{"a/1", "a/2", "a/3", "a/4", "a/5", "m/1", "m/5"} {
		if _, err := kv.Delete(ctx, k); err != nil {
			out = append(out, "cleanup: "+err.Error())
		}
	}
	return out
}

// TestClientKVLikeClientv3 runs the same calls through the routing client
// and through a plain clientv3 client, over ranges split so that some
// calls span several, and requires the same answers.
func TestClientKVLikeClientv3(t *testing.T) {
	cl := startCluster(t, 3)
	ctx := ctxT(t)
	c := newTestClient(t, cl.nodes[0].url())
	for _, k := range []string{"a/2", "b", "m/"} {
		split(t, ctx, c, k)
	}
	cl.settledRanges(cl.nodes...)

	routed := kvScript(ctx, c)
	plain := kvScript(ctx, cl.nodes[1].cli)
	require.Equal(t, plain, routed)
	require.Equal(t, plain, kvScript(ctx, c.KV), "c.KV is the routing KV")
	t.Logf("answers: %q", routed)

	st := c.Stats()
	t.Logf("stats: %+v", st)
	require.NotZero(t, st.Direct)
	require.NotZero(t, st.Fallback, "multi-range requests go through any node")

	// Concurrent misses on a cold cache cost one ListRanges and one
	// ListNodes.
	cold := newTestClient(t, cl.nodes[2].url())
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			_, err := cold.Get(ctx, fmt.Sprintf("c/%d", i))
			assert.NoError(t, err)
		})
	}
	wg.Wait()
	st = cold.Stats()
	require.Equal(t, uint64(1), st.RangeFetches)
	require.Equal(t, uint64(1), st.NodeFetches)
	require.Equal(t, uint64(32), st.Direct)

	// Compaction (not routed) and a read at a revision.
	put, err := c.Put(ctx, "a/1", "x")
	require.NoError(t, err)
	_, err = c.Put(ctx, "a/1", "y")
	require.NoError(t, err)
	old, err := c.Get(ctx, "a/1", clientv3.WithRev(put.Header.Revision))
	require.NoError(t, err)
	require.Equal(t, "x", string(old.Kvs[0].Value))
	_, err = c.Compact(ctx, put.Header.Revision, clientv3.WithCompactPhysical())
	require.NoError(t, err)
	_, err = c.Get(ctx, "a/1", clientv3.WithRev(put.Header.Revision-1))
	require.ErrorIs(t, err, rpctypes.ErrCompacted)
}

// pass gets every key through c, requiring its value.
func pass(t testing.TB, ctx context.Context, c *Client, want map[string]string) {
	t.Helper()
	for _, k := range slices.Sorted(maps.Keys(want)) {
		resp, err := c.Get(ctx, k)
		require.NoError(t, err, "get %s", k)
		require.Len(t, resp.Kvs, 1, "get %s", k)
		require.Equal(t, want[k], string(resp.Kvs[0].Value), "get %s", k)
	}
}

// leaderOf returns the range of rs holding key.
func leaderOf(rs []*txnproto.RangeInfo, key string) *txnproto.RangeInfo {
	for _, r := range rs {
		if key >= string(r.StartKey) && (len(r.EndKey) == 0 || key < string(r.EndKey)) {
			return r
		}
	}
	return nil
}

// expectedDirect counts, per leader node, the keys whose range it leads.
func expectedDirect(rs []*txnproto.RangeInfo, keys map[string]string) map[uint64]uint64 {
	out := map[uint64]uint64{}
	for k := range keys {
		out[leaderOf(rs, k).LeaderNodeId]++
	}
	return out
}

// delta returns after - before, per node, without zero entries.
func delta(before, after map[uint64]uint64) map[uint64]uint64 {
	out := map[uint64]uint64{}
	for id, n := range after {
		if d := n - before[id]; d > 0 {
			out[id] = d
		}
	}
	return out
}

// shapes renders ranges as "id/gen[start,end)@leader".
func shapes(rs []*txnproto.RangeInfo) []string {
	var out []string
	for _, r := range rs {
		out = append(out, fmt.Sprintf("%d/%d[%s,%s)@%x", r.RangeId, r.Generation, r.StartKey, r.EndKey, r.LeaderNodeId))
	}
	return out
}

// TestClientRouting follows the client through the life of a cluster: a
// cold cache filled on first use, splits it has not seen, a wrong leader
// corrected by a route hint, the leaders' node stopped, and watches.
func TestClientRouting(t *testing.T) {
	cl := startCluster(t, 3)
	ctx := ctxT(t)
	rs := cl.settledRanges(cl.nodes...)
	require.Len(t, rs, 1)
	lead := cl.byID(rs[0].LeaderNodeId)
	var entry *testNode // the client's endpoint: not the leader, so fallbacks are forwarded
	for _, tn := range cl.nodes {
		if tn != lead {
			entry = tn
			break
		}
	}
	c := newTestClient(t, entry.url())

	want := map[string]string{}
	for i := range 30 {
		want[fmt.Sprintf("k%02d", i)] = fmt.Sprintf("v%d", i)
	}

	// A cold cache: one ListRanges, then every request goes to the leader.
	for _, k := range slices.Sorted(maps.Keys(want)) {
		_, err := c.Put(ctx, k, want[k])
		require.NoError(t, err)
	}
	st := c.Stats()
	require.Equal(t, uint64(1), st.RangeFetches)
	require.Equal(t, uint64(30), st.Direct)
	require.Zero(t, st.Fallback)
	require.Zero(t, st.RouteHints)
	require.Equal(t, map[uint64]uint64{lead.id: 30}, st.DirectByNode)

	// Splits the cache has not seen: answers stay right.
	split(t, ctx, c, "k10")
	split(t, ctx, c, "k20")
	rs = cl.settledRanges(cl.nodes...)
	require.Len(t, rs, 3)
	require.Len(t, c.Ranges(), 1, "the cache is stale")
	stale := c.Ranges()[0]
	pass(t, ctx, c, want)

	// A stale entry with a wrong leader: the node it names forwards, its
	// route hint drops the entry, the next request re-fetches and goes
	// straight to the leader. (Set up by hand: whether the pass above
	// already met a hint depends on where the new ranges' leaders are.)
	r25 := leaderOf(rs, "k25")
	var wrong *testNode
	for _, tn := range cl.nodes {
		if tn.id != r25.LeaderNodeId {
			wrong = tn
			break
		}
	}
	c.r.cache.Clear()
	c.r.cache.Insert(stale)
	require.True(t, c.r.cache.SetLeader(stale.RangeId, stale.Generation, wrong.id))
	before := c.Stats()
	pass(t, ctx, c, map[string]string{"k25": want["k25"]})
	after := c.Stats()
	require.Equal(t, before.RouteHints+1, after.RouteHints)
	require.Equal(t, before.DirectByNode[wrong.id]+1, after.DirectByNode[wrong.id])
	require.NotEqual(t, stale.RangeId, r25.RangeId)
	_, ok := c.r.cache.Lookup([]byte("k25"))
	require.False(t, ok, "the stale entry is gone")
	pass(t, ctx, c, map[string]string{"k25": want["k25"]})
	before, after = after, c.Stats()
	require.Greater(t, after.RangeFetches, before.RangeFetches, "re-fetched")
	require.Equal(t, before.RouteHints, after.RouteHints)
	require.Equal(t, before.DirectByNode[r25.LeaderNodeId]+1, after.DirectByNode[r25.LeaderNodeId])

	// After one pass the cache holds the current map; the next pass goes
	// straight to each range's leader.
	pass(t, ctx, c, want)
	require.Equal(t, shapes(rs), shapes(c.Ranges()))
	before = c.Stats()
	pass(t, ctx, c, want)
	after = c.Stats()
	require.Equal(t, before.Direct+30, after.Direct)
	require.Equal(t, before.Fallback, after.Fallback)
	require.Equal(t, before.RouteHints, after.RouteHints)
	require.Equal(t, expectedDirect(rs, want), delta(before.DirectByNode, after.DirectByNode))

	// The leaders' node stops. Reads still succeed: one sent on the dead
	// connection fails with Unavailable and is re-sent through any node.
	// Writes then succeed too: the connection is known to be down, so they
	// are refused before being sent and re-sent, or go through any node
	// in the first place. (A write already sent when the node died fails
	// as it would with clientv3: it may have been applied.) The client
	// then learns the new leaders.
	var down *testNode
	for _, r := range rs {
		if r.LeaderNodeId != entry.id {
			down = cl.byID(r.LeaderNodeId)
		}
	}
	require.NotNil(t, down, "the client's endpoint leads every range")
	down.stop()
	before = c.Stats()
	pass(t, ctx, c, want)
	require.Greater(t, c.Stats().Fallback, before.Fallback)
	for _, k := range slices.Sorted(maps.Keys(want)) {
		want[k] += "'"
		_, err := c.Put(ctx, k, want[k])
		require.NoError(t, err, "put %s with %s stopped", k, down.cfg.Name)
	}
	after = c.Stats()
	t.Logf("with the leader stopped: %+v", after)
	for _, k := range slices.Sorted(maps.Keys(want)) {
		resp, err := entry.cli.Get(ctx, k)
		require.NoError(t, err)
		require.Equal(t, want[k], string(resp.Kvs[0].Value))
	}
	var running []*testNode
	for _, tn := range cl.nodes {
		if tn != down {
			running = append(running, tn)
		}
	}
	rs = cl.settledRanges(running...)
	t.Logf("ranges after failover: %v", shapes(rs))
	waitFor(t, "a pass with no fallback and no route hint", func() bool {
		before := c.Stats()
		pass(t, ctx, c, want)
		after := c.Stats()
		return after.Fallback == before.Fallback && after.RouteHints == before.RouteHints
	})
	before = c.Stats()
	pass(t, ctx, c, want)
	after = c.Stats()
	require.Equal(t, before.Direct+30, after.Direct)
	require.Equal(t, expectedDirect(rs, want), delta(before.DirectByNode, after.DirectByNode))

	// Watch goes through the embedded client; a routed put shows up.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := c.Watch(wctx, "k0", clientv3.WithPrefix())
	_, err := c.Put(ctx, "k05", "watched")
	require.NoError(t, err)
	select {
	case wr := <-wch:
		require.NoError(t, wr.Err())
		require.Len(t, wr.Events, 1)
		require.Equal(t, "k05", string(wr.Events[0].Kv.Key))
		require.Equal(t, "watched", string(wr.Events[0].Kv.Value))
	case <-ctx.Done():
		t.Fatal("no watch event")
	}
}

// TestClientUnreachableLeaderFallsBack: a cached leader whose node cannot
// be reached (its connection refused) is skipped; reads and writes go
// through any node, and the leader is learned again.
func TestClientUnreachableLeaderFallsBack(t *testing.T) {
	cl := startCluster(t, 3)
	ctx := ctxT(t)
	rs := cl.settledRanges(cl.nodes...)
	c := newTestClient(t, cl.nodes[0].url())
	_, err := c.Put(ctx, "x", "1")
	require.NoError(t, err)

	// Point the range's leader at a node ID whose URL refuses connections.
	const ghost = 0xdead
	c.r.mu.Lock()
	c.r.urls[ghost] = "http://" + freeAddr(t)
	c.r.mu.Unlock()
	require.True(t, c.r.cache.SetLeader(rs[0].RangeId, rs[0].Generation, ghost))

	before := c.Stats()
	_, err = c.Put(ctx, "x", "2")
	require.NoError(t, err)
	resp, err := c.Get(ctx, "x")
	require.NoError(t, err)
	require.Equal(t, "2", string(resp.Kvs[0].Value))
	after := c.Stats()
	require.Equal(t, before.Fallback+1, after.Fallback, "only the first request falls back")
	require.Equal(t, before.Retried+1, after.Retried, "a write that never left is re-sent")
	info, ok := c.r.cache.Lookup([]byte("x"))
	require.True(t, ok)
	require.Equal(t, rs[0].LeaderNodeId, info.LeaderNodeId, "leader learned again")
}

// TestClientRoutesToSpreadLeaders spreads three ranges' leaderships over
// the three nodes (Ranges.MoveLeader) and checks that, once warm, the
// client sends each request straight to its range's leader: every node
// gets exactly its ranges' requests, with no fallback and no route hint.
// Moving a leader afterwards costs one hinted request, then routing is
// direct again.
func TestClientRoutesToSpreadLeaders(t *testing.T) {
	cl := startCluster(t, 3)
	ctx := ctxT(t)
	c := newTestClient(t, cl.nodes[0].url())
	split(t, ctx, c, "h")
	split(t, ctx, c, "p")
	rc := c.RangesClient()
	for i, key := range []string{"a", "h", "p"} {
		_, err := rc.MoveLeader(ctx, &txnproto.MoveLeaderRequest{Key: []byte(key), TargetNode: cl.nodes[i].id})
		require.NoError(t, err)
	}
	rs := cl.settledRanges(cl.nodes...)
	require.Len(t, rs, 3)
	for i, r := range rs {
		require.Equal(t, cl.nodes[i].id, r.LeaderNodeId, "range %d", r.RangeId)
	}
	want := map[string]string{}
	for _, p := range []string{"a", "c", "h", "j", "p", "z"} {
		want[p+"1"] = "v"
	}
	for k, v := range want {
		_, err := c.Put(ctx, k, v)
		require.NoError(t, err)
	}
	pass(t, ctx, c, want) // warm: cache filled and leaders learned
	before := c.Stats()
	pass(t, ctx, c, want)
	after := c.Stats()
	require.Equal(t, before.Fallback, after.Fallback, "no fallbacks once warm")
	require.Equal(t, before.RouteHints, after.RouteHints, "no route hints once warm")
	require.Equal(t, expectedDirect(rs, want), delta(before.DirectByNode, after.DirectByNode))

	// Move the leader of the middle range: one hint, then direct again.
	_, err := rc.MoveLeader(ctx, &txnproto.MoveLeaderRequest{Key: []byte("h"), TargetNode: cl.nodes[0].id})
	require.NoError(t, err)
	rs = cl.settledRanges(cl.nodes...)
	pass(t, ctx, c, want)
	before = c.Stats()
	pass(t, ctx, c, want)
	after = c.Stats()
	require.Equal(t, before.RouteHints, after.RouteHints, "routing settled after one pass")
	require.Equal(t, expectedDirect(rs, want), delta(before.DirectByNode, after.DirectByNode))
}
