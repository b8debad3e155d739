package node

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/rangeraft"
)

// closedViolationLog is what a replica logs when a write applies at or
// below its range's closed timestamp (rangeraft.Replica.checkClosed).
const closedViolationLog = "at or below the range's closed timestamp"

// requireClosedTimestampsKept fails the test if any member saw a write
// apply at or below a closed timestamp it had been promised.
func requireClosedTimestampsKept(t *testing.T, c *testCluster) {
	t.Helper()
	for _, m := range c.members {
		if m.hasLog(closedViolationLog) {
			t.Errorf("%s: a write applied at or below its range's closed timestamp", m.name)
		}
	}
}

// userReplicas returns the user-key replicas on m.
func userReplicas(m *testMember) []*rangeraft.Replica {
	var out []*rangeraft.Replica
	for _, r := range m.node().store.Replicas() {
		if r.Keyspace() == kvstore.UserKeys {
			out = append(out, r)
		}
	}
	return out
}

// waitAllReadable waits until every user replica on every running member
// is readable at rev, and reports the ones that are not by the deadline.
func waitAllReadable(t *testing.T, c *testCluster, rev int64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var behind []string
		for _, m := range c.running() {
			for _, r := range userReplicas(m) {
				if got := r.ReadableRevision(); got < rev {
					behind = append(behind, fmt.Sprintf("%s/r%d at %d", m.name, r.RangeID, got))
				}
			}
		}
		if len(behind) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not readable at %d after %v: %v", rev, within, behind)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSideClosedTimestampsIdle checks that the side channel closes idle,
// quiesced ranges on every replica without raft traffic: a revision
// taken from the clock becomes readable everywhere, and stays so while
// the ranges stay quiesced.
func TestSideClosedTimestampsIdle(t *testing.T) {
	c := newTestCluster(t, 3, manualPlacement)
	lead := c.waitLeader()
	n := lead.node()
	for _, k := range []string{"b", "d", "f"} {
		_, _, err := n.splitAt(ctxT(t, testWait), []byte(k))
		require.NoError(t, err)
	}
	cli, err := newTestClient(lead.clientURL())
	require.NoError(t, err)
	defer cli.Close()
	for _, k := range []string{"a", "c", "e", "g"} {
		_, err := cli.Put(ctxT(t, testWait), k, "v")
		require.NoError(t, err)
	}

	// Wait for every range to quiesce on every node.
	require.Eventually(t, func() bool {
		for _, m := range c.running() {
			for _, r := range userReplicas(m) {
				if !r.Status().Quiesced {
					return false
				}
			}
		}
		return true
	}, testWait, 20*time.Millisecond, "ranges did not quiesce")

	// A revision from the clock, above every write: the quiesced ranges
	// exchange no raft messages, so only the side channel can close it.
	rev := n.clock.Now()
	waitAllReadable(t, c, rev, 2*time.Second)
	for _, m := range c.running() {
		for _, r := range userReplicas(m) {
			st := r.Status()
			require.True(t, st.Quiesced, "%s: range %d woke up", m.name, r.RangeID)
			require.GreaterOrEqual(t, st.ClosedRevision, rev)
		}
	}

	// A multi-range serializable read at that revision is served from
	// the local replicas, on a follower too.
	f := c.followers(lead)[0]
	fcli, err := newTestClient(f.clientURL())
	require.NoError(t, err)
	defer fcli.Close()
	resp, err := fcli.Get(ctxT(t, testWait), "", clientv3.WithFromKey(), clientv3.WithRev(rev), clientv3.WithSerializable())
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 4)

	// A split elects a leader for the new range: every node casts votes,
	// which invalidates the clock evidence of the quiesced ranges. They
	// renew it (one heartbeat round) and close again.
	_, _, err = n.splitAt(ctxT(t, testWait), []byte("h"))
	require.NoError(t, err)
	waitAllReadable(t, c, n.clock.Now(), 2*time.Second)
	requireClosedTimestampsKept(t, c)
}

// TestSideClosedTimestampsUnderChurn writes to every range while their
// leaderships move around and a node restarts, and checks the promise:
// no write ever applies at or below a closed timestamp a replica was
// given, and closed timestamps keep advancing afterwards. One node's wall
// clock runs 300ms slow (within --max-clock-offset): when it takes over a
// range, only the clock evidence the old leader required keeps its
// proposals above what the old leader closed.
func TestSideClosedTimestampsUnderChurn(t *testing.T) {
	c := newTestCluster(t, 3, manualPlacement, func(cfg *Config) {
		if cfg.Name == "n2" {
			cfg.UnsafeClockSkew = -300 * time.Millisecond
		}
	})
	lead := c.waitLeader()
	for _, k := range []string{"k2", "k4", "k6"} {
		_, _, err := lead.node().splitAt(ctxT(t, testWait), []byte(k))
		require.NoError(t, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var acked sync.Map
	for i, m := range c.members {
		wg.Go(func() {
			cli, err := newTestClient(m.clientURL())
			if err != nil {
				return
			}
			defer cli.Close()
			for j := 0; ctx.Err() == nil; j++ {
				key := fmt.Sprintf("k%d-%d-%d", j%8, i, j)
				wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
				resp, err := cli.Put(wctx, key, "v")
				wcancel()
				if err == nil {
					acked.Store(key, resp.Header.Revision)
				}
			}
		})
	}
	moveAll := func() {
		for i, m := range c.running() {
			target := c.members[(i+1)%len(c.members)].id()
			for _, r := range userReplicas(m) {
				if r.Status().IsLeader {
					_ = r.MoveLeader(ctxT(t, testWait), target)
				}
			}
		}
	}
	for round := 0; round < 3; round++ {
		time.Sleep(300 * time.Millisecond) // let writes and closes interleave
		moveAll()
	}
	victim := c.members[1]
	c.stop(victim)
	time.Sleep(300 * time.Millisecond)
	c.restart(victim)
	time.Sleep(300 * time.Millisecond)
	moveAll()
	time.Sleep(300 * time.Millisecond)
	cancel()
	wg.Wait()

	c.waitLeader()
	waitAllReadable(t, c, lead.node().clock.Now(), 5*time.Second)
	requireClosedTimestampsKept(t, c)

	// Every acknowledged write is there, at its revision.
	cli, err := newTestClient(c.members[0].clientURL())
	require.NoError(t, err)
	defer cli.Close()
	n := 0
	acked.Range(func(k, v any) bool {
		resp, err := cli.Get(ctxT(t, testWait), k.(string))
		require.NoError(t, err)
		require.Len(t, resp.Kvs, 1, "acknowledged %s missing", k)
		require.Equal(t, v.(int64), resp.Kvs[0].ModRevision, "key %s", k)
		n++
		return true
	})
	t.Logf("%d acknowledged writes checked", n)
}

// manualPlacement turns off automatic splits and leader balancing: ranges
// and leaders stay where the test puts them.
func manualPlacement(cfg *Config) {
	cfg.RangeMaxBytes, cfg.RangeSplitQPS, cfg.LeaderBalance = 0, 0, false
}

// TestIdleGroupsUnderChurn checks idle groups (rangeraft/idlegroups.go):
// quiesced ranges are closed as groups on every node, and ranges that
// quiesce, join a group and are written to at once (before or after the
// join reached the followers) never see a write at or below a closed
// timestamp. Writers sleep random times around the quiescing delay, so
// ranges keep going in and out of their groups.
func TestIdleGroupsUnderChurn(t *testing.T) {
	c := newTestCluster(t, 3, manualPlacement)
	lead := c.waitLeader()
	keys := []string{"a", "c", "e", "g", "i", "k"}
	for _, k := range []string{"b", "d", "f", "h", "j"} {
		_, _, err := lead.node().splitAt(ctxT(t, testWait), []byte(k))
		require.NoError(t, err)
	}
	cli, err := newTestClient(lead.clientURL())
	require.NoError(t, err)
	defer cli.Close()
	for _, k := range keys {
		_, err := cli.Put(ctxT(t, testWait), k, "v")
		require.NoError(t, err)
	}
	// Every replica of every range ends up in a group once quiesced.
	require.Eventually(t, func() bool {
		for _, m := range c.running() {
			for _, r := range userReplicas(m) {
				if st := r.Status(); !st.Quiesced || !st.IdleGrouped {
					return false
				}
			}
		}
		return true
	}, testWait, 20*time.Millisecond, "ranges did not quiesce into idle groups")
	rev := lead.node().clock.Now()
	waitAllReadable(t, c, rev, time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i, m := range c.members {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(i), 7))
			for j := 0; ctx.Err() == nil; j++ {
				k := keys[rnd.IntN(len(keys))]
				if _, err := m.client.Put(ctx, fmt.Sprintf("%s-%d-%d", k, i, j), "v"); err != nil && ctx.Err() == nil {
					t.Errorf("put: %v", err)
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Duration(250+rnd.IntN(200)) * time.Millisecond):
				}
			}
		})
	}
	wg.Wait()
	waitAllReadable(t, c, lead.node().clock.Now(), 2*time.Second)
	requireClosedTimestampsKept(t, c)
}
