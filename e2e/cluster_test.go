package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// clusterTimeout bounds waits on cluster-wide conditions: members
// published, a leader elected, followers caught up.
const clusterTimeout = 30 * time.Second

// leader returns the index of the node leading the user range (etcd's one
// raft group), once every running node in idx (all nodes when empty)
// reports the same leader through `endpoint status`.
func (c *cluster) leader(idx ...int) int {
	c.t.Helper()
	if len(idx) == 0 {
		for i := range c.nodes {
			idx = append(idx, i)
		}
	}
	leader := -1
	waitFor(c.t, clusterTimeout, "one agreed leader", func() (bool, string) {
		res := etcdctl(c.t, c.endpoints(idx...), "", "endpoint", "status", "-w", "json")
		if res.code != 0 {
			return false, res.String()
		}
		var st jsonEndpointStatus
		if err := jsonUnmarshal(res.stdout, &st); err != nil || len(st) != len(idx) {
			return false, res.String()
		}
		byID := map[uint64]int{}
		for k, s := range st {
			byID[s.Status.Header.MemberID] = idx[k]
		}
		id := st[0].Status.Leader
		for _, s := range st {
			if s.Status.Leader == 0 || s.Status.Leader != id {
				return false, res.stdout
			}
		}
		i, ok := byID[id]
		if !ok {
			return false, fmt.Sprintf("leader %x is not among the queried nodes: %s", id, res.stdout)
		}
		leader = i
		return true, ""
	})
	return leader
}

// TestThreeNodeCluster founds a three-node cluster the way etcd's
// documentation does and checks that writes through any node are readable
// through every node, linearizably and (once applied) serializably, that
// member list shows all three started members, and that exactly one node
// leads.
func TestThreeNodeCluster(t *testing.T) {
	c := startCluster(t, 3)

	t.Run("MemberList", func(t *testing.T) {
		c := c.on(t)
		var ml jsonMemberList
		waitFor(t, clusterTimeout, "three started members", func() (bool, string) {
			ml = jsonMemberList{}
			res := c.ctl("member", "list", "-w", "json")
			if res.code != 0 || jsonUnmarshal(res.stdout, &ml) != nil || len(ml.Members) != 3 {
				return false, res.String()
			}
			for _, m := range ml.Members {
				if m.Name == "" || len(m.ClientURLs) == 0 { // not yet published
					return false, res.stdout
				}
			}
			return true, ""
		})
		var want []string
		seen := map[string]bool{}
		for _, m := range ml.Members {
			i := slices.IndexFunc(c.nodes, func(nd *node) bool { return nd.name == m.Name })
			require.GreaterOrEqual(t, i, 0, "unknown member name %q", m.Name)
			require.False(t, seen[m.Name], "member %q listed twice", m.Name)
			seen[m.Name] = true
			require.NotZero(t, m.ID)
			require.False(t, m.IsLearner)
			require.Equal(t, []string{c.nodes[i].peerURL}, m.PeerURLs, m.Name)
			require.Equal(t, []string{c.nodes[i].clientURL}, m.ClientURLs, m.Name)
			want = append(want, fmt.Sprintf("%x, started, %s, %s, %s, false\n", m.ID, m.Name, m.PeerURLs[0], m.ClientURLs[0]))
		}
		require.Equal(t, strings.Join(want, ""), c.mustCtl("member", "list"))
	})

	t.Run("OneLeader", func(t *testing.T) {
		c := c.on(t)
		c.leader() // waits until all three agree
		var st jsonEndpointStatus
		mustCtlJSON(t, c.endpoints(0), &st, "endpoint", "status", "--cluster")
		require.Len(t, st, 3)
		leaders := 0
		var eps []string
		for _, s := range st {
			eps = append(eps, s.Endpoint)
			require.Equal(t, "3.7.0", s.Status.Version)
			require.Equal(t, st[0].Status.Leader, s.Status.Leader, "nodes disagree on the leader")
			require.Equal(t, st[0].Status.Header.ClusterID, s.Status.Header.ClusterID)
			if s.Status.Leader == s.Status.Header.MemberID {
				leaders++
			}
		}
		require.Equal(t, 1, leaders, "exactly one leader: %+v", st)
		// --cluster takes the endpoints from the members' client URLs.
		require.ElementsMatch(t, []string{c.nodes[0].clientURL, c.nodes[1].clientURL, c.nodes[2].clientURL}, eps)
	})

	t.Run("WriteAnywhereReadEverywhere", func(t *testing.T) {
		c := c.on(t)
		for i := range c.nodes {
			require.Equal(t, "OK\n", c.mustCtlOn(i, "put", fmt.Sprintf("via/%d", i), fmt.Sprintf("written-through-%d", i)))
		}
		for i := range c.nodes {
			key, want := fmt.Sprintf("via/%d", i), fmt.Sprintf("via/%d\nwritten-through-%d\n", i, i)
			for j := range c.nodes {
				require.Equal(t, want, c.mustCtlOn(j, "get", key), "write through node %d, linearizable read on node %d", i, j)
			}
		}
		for j := range c.nodes {
			waitFor(t, clusterTimeout, fmt.Sprintf("node %d to apply every write", j), func() (bool, string) {
				out := c.mustCtlOn(j, "get", "--prefix", "via/", "--consistency=s")
				return out == "via/0\nwritten-through-0\nvia/1\nwritten-through-1\nvia/2\nwritten-through-2\n", out
			})
		}

		// A transaction and a delete through followers.
		res := etcdctl(t, c.endpoints(1), "value(\"via/0\") = \"written-through-0\"\n\nput via/txn ok\ndel via/0\n\n\n", "txn")
		require.Zero(t, res.code, "%s", res)
		require.Equal(t, "SUCCESS\n\nOK\n\n1\n", res.stdout)
		require.Equal(t, "2\n", c.mustCtlOn(2, "del", "--range", "via/1", "via/3"))
		for j := range c.nodes {
			require.Equal(t, "via/txn\nok\n", c.mustCtlOn(j, "get", "--prefix", "via/"), "node %d", j)
		}
	})

	t.Run("WatchSeesWritesThroughOtherNodes", func(t *testing.T) {
		c := c.on(t)
		watcher := newClient(t, c.nodes[0].endpoint())
		ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
		defer cancel()
		wch := watcher.Watch(clientv3.WithRequireLeader(ctx), "w3/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
		created := <-wch
		require.NoError(t, created.Err())
		require.True(t, created.Created)
		for i := range c.nodes {
			c.mustCtlOn(i, "put", fmt.Sprintf("w3/%d", i), "v")
		}
		var got []string
		for len(got) < 3 {
			resp, ok := <-wch
			require.True(t, ok, "watch channel closed after %v", got)
			require.NoError(t, resp.Err())
			for _, ev := range resp.Events {
				got = append(got, fmt.Sprintf("%s %s", ev.Type, ev.Kv.Key))
			}
		}
		require.Equal(t, []string{"PUT w3/0", "PUT w3/1", "PUT w3/2"}, got)
	})

	t.Run("FullRestart", func(t *testing.T) {
		c := c.on(t)
		before := c.revisionOf("put", "restart/k", "before")
		c.restartAll()
		for j := range c.nodes {
			require.Equal(t, "via/txn\nok\n", c.mustCtlOn(j, "get", "--prefix", "via/"), "node %d", j)
			require.Equal(t, "restart/k\nbefore\n", c.mustCtlOn(j, "get", "restart/k"), "node %d", j)
		}
		after := c.revisionOf("put", "restart/k", "after")
		require.Greater(t, after, before)
		for j := range c.nodes {
			require.Equal(t, "restart/k\nafter\n", c.mustCtlOn(j, "get", "restart/k"), "node %d", j)
		}
		c.leader()
	})
}

// TestLeaderKill SIGKILLs the leader in the middle of a stream of
// sequential puts sent through the other two nodes, checks that writes keep
// being acknowledged, restarts the killed node and checks that every
// acknowledged write is on every node, exactly once and in key order.
func TestLeaderKill(t *testing.T) {
	c := startCluster(t, 3)
	leader := c.leader()
	var followers []int
	for i := range c.nodes {
		if i != leader {
			followers = append(followers, i)
		}
	}
	cli := newClient(t, c.nodes[followers[0]].endpoint(), c.nodes[followers[1]].endpoint())

	// A watcher on a surviving node sees the writes across the change of
	// leader.
	watcher := newClient(t, c.nodes[followers[0]].endpoint())
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	wch := watcher.Watch(wctx, "w/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	created := <-wch
	require.NoError(t, created.Err())
	require.True(t, created.Created)

	const total, killAt = 300, 100
	key := func(i int) string { return fmt.Sprintf("w/%04d", i) }
	val := func(i int) string { return fmt.Sprintf("value-%04d", i) }

	// The killer SIGKILLs the leader while the writer keeps writing.
	reached := make(chan struct{})
	var killedAt time.Time
	var killerDone sync.WaitGroup
	killerDone.Add(1)
	go func() {
		defer killerDone.Done()
		<-reached
		c.kill(leader)
		killedAt = time.Now()
	}()

	acked := make([]bool, total)
	ackedAt := make([]time.Time, total)
	ackedRev := make([]int64, total) // header revision of the put's response
	var failures []string
	var failureErrs []error
	for i := range total {
		if i == killAt {
			close(reached)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		resp, err := cli.Put(ctx, key(i), val(i))
		cancel()
		if err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", key(i), err))
			failureErrs = append(failureErrs, err)
			continue
		}
		acked[i], ackedAt[i], ackedRev[i] = true, time.Now(), resp.Header.Revision
	}
	killerDone.Wait()

	// Each put began after the previous one was acknowledged, so their
	// revisions increase, across the change of leader too.
	var prev int64
	for i := range total {
		if acked[i] {
			require.Greater(t, ackedRev[i], prev, "revision of %s does not exceed the previous acknowledged put's", key(i))
			prev = ackedRev[i]
		}
	}

	afterKill := 0
	for i := range total {
		if acked[i] && ackedAt[i].After(killedAt) {
			afterKill++
		}
	}
	t.Logf("%d of %d puts acknowledged, %d after the kill; failures: %v", total-len(failures), total, afterKill, failures)
	require.GreaterOrEqual(t, afterKill, (total-killAt)*9/10, "writes must continue after the leader dies")
	require.LessOrEqual(t, len(failures), 5, "puts failed: %v", failures)

	t.Run("FailedPutsReturnEtcdErrors", func(t *testing.T) {
		// A put cut short by the leader's death fails with one of the
		// errors etcd returns then; clientv3 users match them by message.
		etcdErrs := map[string]bool{}
		for _, e := range []error{rpctypes.ErrGRPCTimeout, rpctypes.ErrGRPCTimeoutDueToLeaderFail,
			rpctypes.ErrGRPCTimeoutDueToConnectionLost, rpctypes.ErrGRPCLeaderChanged, rpctypes.ErrGRPCNoLeader} {
			etcdErrs[rpctypes.ErrorDesc(e)] = true
		}
		for _, err := range failureErrs {
			if !etcdErrs[rpctypes.ErrorDesc(err)] {
				t.Fatalf("regression: a put forwarded to a leader that dies fails with the forwarding connection's error, not an etcd error: %v", err)
			}
		}
	})

	// The watch delivers every acknowledged put exactly once, in revision
	// order, with the revision the put returned.
	watched := map[string]int64{}
	var lastRev int64
	allWatched := func() bool {
		for i := range total {
			if _, seen := watched[key(i)]; acked[i] && !seen {
				return false
			}
		}
		return true
	}
	deadline := time.After(clusterTimeout)
	for !allWatched() {
		select {
		case resp, ok := <-wch:
			require.True(t, ok, "watch channel closed")
			require.NoError(t, resp.Err())
			for _, ev := range resp.Events {
				k := string(ev.Kv.Key)
				require.Equal(t, clientv3.EventTypePut, ev.Type, k)
				_, dup := watched[k]
				require.False(t, dup, "event for %s delivered twice", k)
				require.Greater(t, ev.Kv.ModRevision, lastRev, "event for %s out of revision order", k)
				lastRev = ev.Kv.ModRevision
				watched[k] = ev.Kv.ModRevision
			}
		case <-deadline:
			t.Fatalf("watch delivered %d events; some acknowledged puts are missing", len(watched))
		}
	}
	for i := range total {
		if acked[i] {
			require.Equal(t, ackedRev[i], watched[key(i)], "watched revision of %s", key(i))
		}
	}

	c.restart(leader)

	// Every acknowledged put is on every node once it has caught up.
	for i := range c.nodes {
		nodeCli := newClient(t, c.nodes[i].endpoint())
		waitFor(t, clusterTimeout, fmt.Sprintf("node %d to hold every acknowledged put", i), func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			resp, err := nodeCli.Get(ctx, "w/", clientv3.WithPrefix(), clientv3.WithSerializable())
			if err != nil {
				return false, err.Error()
			}
			have := map[string]*mvccpb.KeyValue{}
			for _, kv := range resp.Kvs {
				have[string(kv.Key)] = kv
			}
			for k := range total {
				if !acked[k] {
					continue
				}
				kv := have[key(k)]
				if kv == nil || string(kv.Value) != val(k) {
					return false, fmt.Sprintf("%s is %v (of %d keys)", key(k), kv, len(resp.Kvs))
				}
				// Not retried while polling: the revision is final once the value is there.
				require.Equal(t, ackedRev[k], kv.ModRevision, "node %d: mod_revision of %s differs from its put's revision", i, key(k))
			}
			return true, ""
		})
	}

	// Linearizable prefix reads through each node: sorted, no duplicates,
	// the right values, and the same answer everywhere.
	var outputs []string
	for i := range c.nodes {
		out := c.mustCtlOn(i, "get", "--prefix", "w/")
		outputs = append(outputs, out)
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		require.Equal(t, 0, len(lines)%2, "node %d: odd number of lines", i)
		var keys []string
		for l := 0; l < len(lines); l += 2 {
			k, v := lines[l], lines[l+1]
			var n int
			_, err := fmt.Sscanf(k, "w/%04d", &n)
			require.NoError(t, err, "node %d: unexpected key %q", i, k)
			require.Equal(t, val(n), v, "node %d: value of %s", i, k)
			keys = append(keys, k)
		}
		for l := 1; l < len(keys); l++ {
			require.Less(t, keys[l-1], keys[l], "node %d: keys out of order or repeated", i)
		}
		for k := range total {
			if acked[k] {
				_, found := slices.BinarySearch(keys, key(k))
				require.True(t, found, "node %d: acknowledged %s missing", i, key(k))
			}
		}
	}
	require.Equal(t, outputs[0], outputs[1])
	require.Equal(t, outputs[0], outputs[2])
}
