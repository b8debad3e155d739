package node

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
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

// counter reads a counter of a node's registry.
func counter(t *testing.T, n *Node, name string) float64 {
	t.Helper()
	mfs, err := n.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no %s metric", name)
	return 0
}

// forwardedProposals reads a node's rangekv_proposals_forwarded_total.
func forwardedProposals(t *testing.T, n *Node) float64 {
	return counter(t, n, "rangekv_proposals_forwarded_total")
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

// TestFollowerLinearizableReads reads one key linearizably through both
// followers, from many clients at once (so that reads share closes),
// while the leader writes increasing values to it: every read returns a
// value at least as new as the last write acknowledged before the read
// began, answered by the follower itself.
func TestFollowerLinearizableReads(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.userLeader()
	ctx := ctxT(t, 2*testWait)
	_, err := lead.client.Put(ctx, "lin", "0")
	require.NoError(t, err)

	var acked atomic.Int64
	stop := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		for i := int64(1); ; i++ {
			select {
			case <-stop:
				writerDone <- nil
				return
			default:
			}
			if _, err := lead.client.Put(ctx, "lin", strconv.FormatInt(i, 10)); err != nil {
				writerDone <- err
				return
			}
			acked.Store(i)
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	const readers, reads = 16, 25
	servedBefore := map[string]float64{}
	for _, f := range c.followers(lead) {
		servedBefore[f.name] = counter(t, f.node(), "rangekv_follower_linearizable_reads_total")
	}
	for _, f := range c.followers(lead) {
		for range readers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range reads {
					before := acked.Load()
					resp, err := f.client.Get(ctx, "lin")
					if err != nil {
						errs <- err
						return
					}
					got, _ := strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
					if got < before || resp.Header.MemberId != f.id() {
						errs <- fmt.Errorf("read through %s returned %d (member %x) after write %d was acknowledged", f.name, got, resp.Header.MemberId, before)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(stop)
	require.NoError(t, <-writerDone)
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Positive(t, acked.Load())
	// Served on the followers after closes, not forwarded to the leader.
	for _, f := range c.followers(lead) {
		served := counter(t, f.node(), "rangekv_follower_linearizable_reads_total") - servedBefore[f.name]
		closes := counter(t, f.node(), "rangekv_follower_read_closes_total")
		require.Equal(t, float64(readers*reads), served, "reads through %s", f.name)
		require.Positive(t, closes)
		t.Logf("%s: %v reads shared %v closes", f.name, served, closes)
	}
}
