package node

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/rangekv/rangekv/rangeraft"
)

// userLeader returns the member whose replica leads the first user range,
// waiting for one.
func (c *testCluster) userLeader() *testMember {
	c.t.Helper()
	var lead *testMember
	require.Eventually(c.t, func() bool {
		for _, m := range c.running() {
			if r := m.node().store.Replica(rangeraft.FirstUserRangeID); r != nil && r.Status().IsLeader {
				lead = m
				return true
			}
		}
		return false
	}, testWait, 5*time.Millisecond, "no leader of the user range")
	return lead
}

// forwardedProposals reads a node's rangekv_proposals_forwarded_total.
func forwardedProposals(t *testing.T, n *Node) float64 {
	t.Helper()
	mfs, err := n.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == "rangekv_proposals_forwarded_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no rangekv_proposals_forwarded_total metric")
	return 0
}

// TestFollowerWritesThroughRaftStream checks writes a follower receives:
// they reach the leader inside the raft stream (the follower's forwarded
// counter counts each), the answer comes from the follower (its member
// ID) once the write has applied there (a serializable read through it
// sees it at once), revisions grow; and while leadership moves between
// the nodes under writes through both followers, every acknowledged
// write is in the final state.
func TestFollowerWritesThroughRaftStream(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.userLeader()
	f := c.followers(lead)[0]
	ctx := ctxT(t, 2*testWait)

	before := forwardedProposals(t, f.node())
	var last int64
	const writes = 20
	for i := range writes {
		key := fmt.Sprintf("fwd/%02d", i)
		var rev int64
		switch i % 3 {
		case 0, 1:
			resp, err := f.client.Put(ctx, key, "v")
			require.NoError(t, err)
			require.Equal(t, f.id(), resp.Header.MemberId)
			rev = resp.Header.Revision
		case 2:
			resp, err := f.client.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
				Then(clientv3.OpPut(key, "v")).Commit()
			require.NoError(t, err)
			require.True(t, resp.Succeeded)
			rev = resp.Header.Revision
		}
		require.Greater(t, rev, last)
		last = rev
		got, err := f.client.Get(ctx, key, clientv3.WithSerializable())
		require.NoError(t, err)
		require.Len(t, got.Kvs, 1, "a write answered by %s is not applied there", f.name)
		require.Equal(t, rev, got.Kvs[0].ModRevision)
	}
	del, err := f.client.Delete(ctx, "fwd/00")
	require.NoError(t, err)
	require.EqualValues(t, 1, del.Deleted)
	require.Equal(t, before+writes+1, forwardedProposals(t, f.node()), "writes through %s were not forwarded in the raft stream", f.name)

	// Leadership moves under writes through every node.
	stop := make(chan struct{})
	var mu sync.Mutex
	acked := map[string]bool{}
	failed := 0
	var wg sync.WaitGroup
	for w, m := range c.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("move/%d/%04d", w, i)
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := m.client.Put(wctx, key, "v")
				cancel()
				mu.Lock()
				if err == nil {
					acked[key] = true
				} else {
					failed++
				}
				mu.Unlock()
			}
		}()
	}
	for move := range 4 {
		lead := c.userLeader()
		target := c.followers(lead)[move%2]
		if err := lead.node().store.Replica(rangeraft.FirstUserRangeID).MoveLeader(ctx, target.id()); err != nil {
			t.Logf("move %d: %v", move, err)
		}
		// Writes flow under the new leader before the next move.
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(acked) >= n+30
		}, testWait, 5*time.Millisecond, "writes stalled after move %d", move)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d writes acknowledged, %d failed", len(acked), failed)

	got, err := lead.client.Get(ctx, "move/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	present := map[string]bool{}
	for _, kv := range got.Kvs {
		present[string(kv.Key)] = true
	}
	for key := range acked {
		require.True(t, present[key], "acknowledged write %s lost", key)
	}
}
