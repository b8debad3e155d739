package node

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestClusterPutsReadableEverywhere writes through every node and reads
// every write back through every node, linearizably and (once applied
// there) serializably. Every response header names the contacted node.
func TestClusterPutsReadableEverywhere(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := ctxT(t, testWait)
	clusterID := uint64(0)
	for i, m := range c.members {
		resp, err := m.client.Put(ctx, fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i))
		require.NoError(t, err)
		require.Equal(t, m.id(), resp.Header.MemberId, "put through %s", m.name)
		require.NotZero(t, resp.Header.Revision)
		if clusterID == 0 {
			clusterID = resp.Header.ClusterId
		}
		require.Equal(t, clusterID, resp.Header.ClusterId)
	}
	for _, m := range c.members {
		for i := range c.members {
			key, want := fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i)
			resp, err := m.client.Get(ctx, key)
			require.NoError(t, err)
			require.Equal(t, m.id(), resp.Header.MemberId, "linearizable get through %s", m.name)
			require.Equal(t, clusterID, resp.Header.ClusterId)
			require.Len(t, resp.Kvs, 1, "get %s through %s", key, m.name)
			require.Equal(t, want, string(resp.Kvs[0].Value))

			require.Eventually(t, func() bool {
				resp, err := m.client.Get(ctx, key, clientv3.WithSerializable())
				return err == nil && resp.Header.MemberId == m.id() && len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == want
			}, testWait, 10*time.Millisecond, "serializable get %s through %s", key, m.name)
		}
		// A prefix read sees all of them, in key order.
		resp, err := m.client.Get(ctx, "k", clientv3.WithPrefix())
		require.NoError(t, err)
		require.Len(t, resp.Kvs, len(c.members))
		for i, kv := range resp.Kvs {
			require.Equal(t, fmt.Sprintf("k%d", i), string(kv.Key))
		}
	}
}

// TestClusterHeaderMemberID checks that every kind of response carries the
// ID of the node the client talked to, whether it leads or forwarded.
func TestClusterHeaderMemberID(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := ctxT(t, testWait)
	lead := c.waitLeader()
	for _, m := range c.members {
		what := fmt.Sprintf("%s (leader: %v)", m.name, m == lead)
		put, err := m.client.Put(ctx, "h", m.name)
		require.NoError(t, err)
		require.Equal(t, m.id(), put.Header.MemberId, "put via %s", what)
		get, err := m.client.Get(ctx, "h")
		require.NoError(t, err)
		require.Equal(t, m.id(), get.Header.MemberId, "get via %s", what)
		sget, err := m.client.Get(ctx, "h", clientv3.WithSerializable())
		require.NoError(t, err)
		require.Equal(t, m.id(), sget.Header.MemberId, "serializable get via %s", what)
		txn, err := m.client.Txn(ctx).If(clientv3.Compare(clientv3.Value("h"), "=", m.name)).
			Then(clientv3.OpPut("h2", "x")).Commit()
		require.NoError(t, err)
		require.True(t, txn.Succeeded)
		require.Equal(t, m.id(), txn.Header.MemberId, "txn via %s", what)
		rtxn, err := m.client.Txn(ctx).Then(clientv3.OpGet("h")).Commit()
		require.NoError(t, err)
		require.Equal(t, m.id(), rtxn.Header.MemberId, "read-only txn via %s", what)
		del, err := m.client.Delete(ctx, "h2")
		require.NoError(t, err)
		require.Equal(t, m.id(), del.Header.MemberId, "delete via %s", what)
		require.EqualValues(t, 1, del.Deleted)
		st, err := m.client.Status(ctx, m.clientURL())
		require.NoError(t, err)
		require.Equal(t, m.id(), st.Header.MemberId, "status via %s", what)
		require.Equal(t, lead.id(), st.Leader, "status via %s", what)
		ml, err := m.client.MemberList(ctx)
		require.NoError(t, err)
		require.Equal(t, m.id(), ml.Header.MemberId, "member list via %s", what)
	}
}

// TestClusterTxnCompareAndSwap checks Txn compare semantics when the
// competing transactions arrive through different nodes.
func TestClusterTxnCompareAndSwap(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := ctxT(t, testWait)
	a, b, d := c.members[0].client, c.members[1].client, c.members[2].client

	put, err := a.Put(ctx, "cas", "0")
	require.NoError(t, err)
	rev0 := put.Header.Revision

	// mod_revision compare through another node: succeeds once.
	tx1, err := b.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision("cas"), "=", rev0)).
		Then(clientv3.OpPut("cas", "1", clientv3.WithPrevKV())).Else(clientv3.OpGet("cas")).Commit()
	require.NoError(t, err)
	require.True(t, tx1.Succeeded)
	require.Greater(t, tx1.Header.Revision, rev0)
	prev := tx1.Responses[0].GetResponsePut().PrevKv
	require.NotNil(t, prev)
	require.Equal(t, "0", string(prev.Value))
	require.Equal(t, rev0, prev.ModRevision)

	// The same compare through a third node now fails and runs Else.
	tx2, err := d.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision("cas"), "=", rev0)).
		Then(clientv3.OpPut("cas", "stale")).Else(clientv3.OpGet("cas")).Commit()
	require.NoError(t, err)
	require.False(t, tx2.Succeeded)
	kvs := tx2.Responses[0].GetResponseRange().Kvs
	require.Len(t, kvs, 1)
	require.Equal(t, "1", string(kvs[0].Value))
	require.Equal(t, tx1.Header.Revision, kvs[0].ModRevision, "mod_revision of a txn write is the txn's revision")
	require.Equal(t, rev0, kvs[0].CreateRevision)
	require.EqualValues(t, 2, kvs[0].Version)
	require.GreaterOrEqual(t, tx2.Header.Revision, tx1.Header.Revision)

	// Value compare through the first node.
	tx3, err := a.Txn(ctx).If(clientv3.Compare(clientv3.Value("cas"), "=", "1")).
		Then(clientv3.OpPut("cas", "2")).Commit()
	require.NoError(t, err)
	require.True(t, tx3.Succeeded)
	tx4, err := b.Txn(ctx).If(clientv3.Compare(clientv3.Value("cas"), "=", "1")).
		Then(clientv3.OpPut("cas", "bad")).Commit()
	require.NoError(t, err)
	require.False(t, tx4.Succeeded)

	// create_revision == 0 ("create if absent") from all nodes at once:
	// exactly one wins.
	var wins atomic.Int32
	var wg sync.WaitGroup
	for _, m := range c.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := m.client.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision("lock"), "=", 0)).
				Then(clientv3.OpPut("lock", m.name)).Commit()
			if err == nil && r.Succeeded {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	require.EqualValues(t, 1, wins.Load())

	// A CAS counter incremented concurrently through every node: the final
	// value equals the number of successful swaps.
	var succeeded atomic.Int64
	_, err = a.Put(ctx, "counter", "0")
	require.NoError(t, err)
	for _, m := range c.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 15 {
				g, err := m.client.Get(ctx, "counter")
				if err != nil {
					t.Errorf("get counter: %v", err)
					return
				}
				var v int
				fmt.Sscan(string(g.Kvs[0].Value), &v)
				r, err := m.client.Txn(ctx).
					If(clientv3.Compare(clientv3.ModRevision("counter"), "=", g.Kvs[0].ModRevision)).
					Then(clientv3.OpPut("counter", fmt.Sprint(v+1))).Commit()
				if err != nil {
					t.Errorf("cas counter: %v", err)
					return
				}
				if r.Succeeded {
					succeeded.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	g, err := d.Get(ctx, "counter")
	require.NoError(t, err)
	require.Equal(t, fmt.Sprint(succeeded.Load()), string(g.Kvs[0].Value))
	require.Positive(t, succeeded.Load())
}

// TestClusterReadRevisionCoversAcknowledgedWrites: a linearizable read's
// header revision is at least the revision of every write acknowledged
// (through any node) before the read began, and the read sees those
// writes.
func TestClusterReadRevisionCoversAcknowledgedWrites(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := ctxT(t, testWait)

	// Sequential: write through one node, read through the next.
	for i := range 12 {
		w, r := c.members[i%3], c.members[(i+1)%3]
		key := fmt.Sprintf("seq%d", i%4)
		put, err := w.client.Put(ctx, key, fmt.Sprint(i))
		require.NoError(t, err)
		get, err := r.client.Get(ctx, key)
		require.NoError(t, err)
		require.GreaterOrEqual(t, get.Header.Revision, put.Header.Revision, "read via %s after write via %s", r.name, w.name)
		require.Len(t, get.Kvs, 1)
		require.Equal(t, fmt.Sprint(i), string(get.Kvs[0].Value))
		require.Equal(t, put.Header.Revision, get.Kvs[0].ModRevision)
	}

	// Concurrent: writers through every node publish the highest
	// acknowledged revision; readers through every node check their
	// header against the value seen before they started.
	var maxAcked atomic.Int64
	stop := time.Now().Add(time.Second)
	var wg sync.WaitGroup
	var violations atomic.Int32
	for i, m := range c.members {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for n := 0; time.Now().Before(stop); n++ {
				resp, err := m.client.Put(ctx, fmt.Sprintf("conc%d", i), fmt.Sprint(n))
				if err != nil {
					t.Errorf("put via %s: %v", m.name, err)
					return
				}
				for {
					cur := maxAcked.Load()
					if resp.Header.Revision <= cur || maxAcked.CompareAndSwap(cur, resp.Header.Revision) {
						break
					}
				}
			}
		}()
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				before := maxAcked.Load()
				resp, err := m.client.Get(ctx, "conc", clientv3.WithPrefix())
				if err != nil {
					t.Errorf("get via %s: %v", m.name, err)
					return
				}
				if resp.Header.Revision < before {
					violations.Add(1)
					t.Errorf("linearizable read via %s at revision %d, but revision %d was acknowledged before it began",
						m.name, resp.Header.Revision, before)
				}
				for _, kv := range resp.Kvs {
					if kv.ModRevision > resp.Header.Revision {
						t.Errorf("read via %s at revision %d returned %s with mod_revision %d", m.name, resp.Header.Revision, kv.Key, kv.ModRevision)
					}
				}
			}
		}()
	}
	wg.Wait()
	require.Zero(t, violations.Load())
	require.NotZero(t, maxAcked.Load())
}

// revChecker asserts that the header revisions one client observes never
// decrease, and that every write gets a revision above everything seen
// before it.
type revChecker struct {
	t    *testing.T
	name string
	last int64
}

func (rc *revChecker) read(op string, rev int64) {
	rc.t.Helper()
	if rev < rc.last {
		rc.t.Errorf("%s: %s header revision %d went backward (client had seen %d)", rc.name, op, rev, rc.last)
	}
	rc.last = max(rc.last, rev)
}

func (rc *revChecker) write(op string, rev int64) {
	rc.t.Helper()
	if rev <= rc.last {
		rc.t.Errorf("%s: %s got revision %d, not above %d the client had already seen", rc.name, op, rev, rc.last)
	}
	rc.last = max(rc.last, rev)
}

// TestClusterRevisionsMonotonicAcrossLeaderChange: a client's header
// revisions never go backward while the leader is stopped (forcing a new
// election) and restarted.
func TestClusterRevisionsMonotonicAcrossLeaderChange(t *testing.T) {
	c := newTestCluster(t, 3)
	oldLead := c.waitLeader()
	survivor := c.followers(oldLead)[0]

	// A client of the old leader: it has seen the old leader's revisions
	// and must not see smaller ones after the restart.
	leadRC := &revChecker{t: t, name: "client of old leader " + oldLead.name}
	for i := range 5 {
		ctx := ctxT(t, 5*time.Second)
		put, err := oldLead.client.Put(ctx, "mono", fmt.Sprint(i))
		require.NoError(t, err)
		leadRC.write("put", put.Header.Revision)
		get, err := oldLead.client.Get(ctx, "mono")
		require.NoError(t, err)
		leadRC.read("get", get.Header.Revision)
	}

	var (
		mu       sync.Mutex
		okOps    int
		afterOps int
		stopped  bool
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		rc := &revChecker{t: t, name: "client of " + survivor.name}
		deadline := time.Now().Add(testWait)
		for i := 0; time.Now().Before(deadline); i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			var err error
			switch i % 3 {
			case 0:
				var r *clientv3.PutResponse
				if r, err = survivor.client.Put(ctx, "mono", fmt.Sprint(i)); err == nil {
					rc.write("put", r.Header.Revision)
				}
			case 1:
				var r *clientv3.GetResponse
				if r, err = survivor.client.Get(ctx, "mono"); err == nil {
					rc.read("linearizable get", r.Header.Revision)
				}
			case 2:
				var r *clientv3.TxnResponse
				if r, err = survivor.client.Txn(ctx).If(clientv3.Compare(clientv3.Version("mono"), ">", 0)).
					Then(clientv3.OpPut("mono2", fmt.Sprint(i))).Commit(); err == nil {
					rc.write("txn", r.Header.Revision)
				}
			}
			cancel()
			if err != nil {
				// Unknown outcome during the election: it may have
				// applied, which the checker tolerates (later revisions
				// are only compared with acknowledged ones).
				continue
			}
			mu.Lock()
			okOps++
			if stopped {
				afterOps++
			}
			enough := stopped && afterOps >= 30
			mu.Unlock()
			if enough {
				return
			}
		}
		t.Errorf("client of %s did not complete 30 operations after the leader stopped", survivor.name)
	}()

	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return okOps >= 20 }, testWait, 5*time.Millisecond)
	c.stop(oldLead)
	mu.Lock()
	stopped = true
	mu.Unlock()
	<-done
	newLead := c.waitLeader()
	require.NotEqual(t, oldLead, newLead)

	c.restart(oldLead)
	c.waitReady()
	for i := range 5 {
		ctx := ctxT(t, 5*time.Second)
		get, err := oldLead.client.Get(ctx, "mono")
		require.NoError(t, err)
		leadRC.read("get after restart", get.Header.Revision)
		put, err := oldLead.client.Put(ctx, "mono", fmt.Sprint(100+i))
		require.NoError(t, err)
		leadRC.write("put after restart", put.Header.Revision)
	}
}

// TestClusterReadYourWritesSerializable: etcd answers a write, and a
// linearizable read, only once the member the client talks to has applied
// up to it, so a serializable read through the same member right after
// sees the write and a header revision at least as high. rangekv promises
// that "header revisions never go backward for a client" (DESIGN.md) and
// that etcd's observable behaviour wins.
func TestClusterReadYourWritesSerializable(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	f := c.followers(lead)[0]
	ctx := ctxT(t, testWait)
	const n = 50
	staleAfterPut, staleAfterGet := 0, 0
	for i := range n {
		put, err := f.client.Put(ctx, "ryw", fmt.Sprint(i))
		require.NoError(t, err)
		get, err := f.client.Get(ctx, "ryw", clientv3.WithSerializable())
		require.NoError(t, err)
		if get.Header.Revision < put.Header.Revision || len(get.Kvs) != 1 || string(get.Kvs[0].Value) != fmt.Sprint(i) {
			staleAfterPut++
		}
	}
	for i := range n {
		// A write through another node, then a linearizable read through
		// f, then a serializable read through f.
		_, err := lead.client.Put(ctx, "ryw2", fmt.Sprint(i))
		require.NoError(t, err)
		lin, err := f.client.Get(ctx, "ryw2")
		require.NoError(t, err)
		ser, err := f.client.Get(ctx, "ryw2", clientv3.WithSerializable())
		require.NoError(t, err)
		if ser.Header.Revision < lin.Header.Revision {
			staleAfterGet++
		}
	}
	if staleAfterPut+staleAfterGet > 0 {
		t.Fatalf("regression: through follower %s, %d/%d serializable reads right after an acknowledged Put, and %d/%d right "+
			"after a linearizable Get, returned an older revision (and value) than that Put/Get: forwarded requests are "+
			"answered before the forwarding node has applied up to them, unlike etcd",
			f.name, staleAfterPut, n, staleAfterGet, n)
	}
}

// TestClusterWatchAcrossNodes: a watch through one node sees, in order and
// with prev_kv, the writes made through another node; a watch from a past
// revision through a third node replays the same events.
func TestClusterWatchAcrossNodes(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	fs := c.followers(lead)
	watchNode, writeNode, replayNode := fs[0], fs[1], lead
	ctx := ctxT(t, testWait)

	wch := watchNode.client.Watch(clientv3.WithRequireLeader(ctx), "w/", clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithCreatedNotify())
	created := <-wch
	require.NoError(t, created.Err())
	require.True(t, created.Created)
	require.Equal(t, watchNode.id(), created.Header.MemberId)

	type want struct {
		typ  mvccpb.Event_EventType
		key  string
		val  string
		prev string // "" = no prev_kv
		rev  int64
	}
	var wants []want
	put := func(k, v, prev string) {
		r, err := writeNode.client.Put(ctx, k, v)
		require.NoError(t, err)
		wants = append(wants, want{mvccpb.PUT, k, v, prev, r.Header.Revision})
	}
	put("w/a", "1", "")
	put("w/a", "2", "1")
	put("w/b", "1", "")
	put("other", "x", "") // outside the prefix
	wants = wants[:len(wants)-1]
	del, err := writeNode.client.Delete(ctx, "w/a")
	require.NoError(t, err)
	wants = append(wants, want{mvccpb.DELETE, "w/a", "", "2", del.Header.Revision})
	txn, err := writeNode.client.Txn(ctx).Then(clientv3.OpPut("w/c", "1"), clientv3.OpPut("w/d", "1"), clientv3.OpPut("w/b", "2")).Commit()
	require.NoError(t, err)
	wants = append(wants,
		want{mvccpb.PUT, "w/c", "1", "", txn.Header.Revision},
		want{mvccpb.PUT, "w/d", "1", "", txn.Header.Revision},
		want{mvccpb.PUT, "w/b", "2", "1", txn.Header.Revision})

	collect := func(wch clientv3.WatchChan, who *testMember) {
		t.Helper()
		var got []*clientv3.Event
		lastRev := int64(0)
		timeout := time.After(testWait)
		for len(got) < len(wants) {
			select {
			case resp, ok := <-wch:
				require.True(t, ok, "watch through %s closed", who.name)
				require.NoError(t, resp.Err())
				if len(resp.Events) == 0 {
					continue
				}
				require.Equal(t, who.id(), resp.Header.MemberId)
				// All events of one revision come in one response.
				rev := resp.Events[0].Kv.ModRevision
				require.Greater(t, rev, lastRev, "watch through %s: revisions must increase across responses", who.name)
				for _, ev := range resp.Events {
					require.GreaterOrEqual(t, resp.Header.Revision, ev.Kv.ModRevision)
				}
				lastRev = resp.Events[len(resp.Events)-1].Kv.ModRevision
				got = append(got, resp.Events...)
			case <-timeout:
				t.Fatalf("watch through %s: got %d of %d events", who.name, len(got), len(wants))
			}
		}
		for i, w := range wants {
			ev := got[i]
			require.Equal(t, w.typ, ev.Type, "event %d", i)
			require.Equal(t, w.key, string(ev.Kv.Key), "event %d", i)
			require.Equal(t, w.rev, ev.Kv.ModRevision, "event %d mod_revision", i)
			if w.typ == mvccpb.PUT {
				require.Equal(t, w.val, string(ev.Kv.Value), "event %d", i)
			}
			if w.prev == "" {
				require.Nil(t, ev.PrevKv, "event %d prev_kv", i)
			} else {
				require.NotNil(t, ev.PrevKv, "event %d prev_kv", i)
				require.Equal(t, w.prev, string(ev.PrevKv.Value), "event %d prev_kv", i)
			}
		}
		// The txn's three events came together.
		txnIdx := len(wants) - 3
		require.Equal(t, got[txnIdx].Kv.ModRevision, got[txnIdx+2].Kv.ModRevision)
	}
	collect(wch, watchNode)

	// Replay from the first write's revision through another node.
	rch := replayNode.client.Watch(ctx, "w/", clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(wants[0].rev))
	collect(rch, replayNode)
	require.True(t, slices.IsSortedFunc(wants, func(a, b want) int { return int(a.rev - b.rev) }))
}

// TestClusterMemberList: every node lists every member with its name, peer
// URLs and (once published) client URLs.
func TestClusterMemberList(t *testing.T) {
	c := newTestCluster(t, 3)
	for _, m := range c.members {
		var last string
		ok := assertEventually(testWait, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			resp, err := m.client.MemberList(ctx)
			if err != nil {
				last = err.Error()
				return false
			}
			last = fmt.Sprint(resp.Members)
			if len(resp.Members) != len(c.members) {
				return false
			}
			for _, want := range c.members {
				found := false
				for _, got := range resp.Members {
					if got.ID != want.id() {
						continue
					}
					found = slices.Equal(got.ClientURLs, []string{want.clientURL()}) &&
						slices.Equal(got.PeerURLs, []string{want.cfg.InitialAdvertisePeerURLs[0].String()}) &&
						got.Name == want.name
				}
				if !found {
					return false
				}
			}
			return true
		})
		require.True(t, ok, "MemberList through %s never listed every member with client URLs; last: %s", m.name, last)
	}
}

// assertEventually polls cond every 10ms until it holds or d passes.
func assertEventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestClusterWatchAcrossLeaderChange: a watch through one surviving node
// delivers every write acknowledged through another surviving node, in
// revision order, without gaps or duplicates, while the leader is stopped.
// The key's events form a chain: each event's prev_kv is the previous
// event's kv.
func TestClusterWatchAcrossLeaderChange(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	fs := c.followers(lead)
	watcher, writer := fs[0], fs[1]
	ctx := ctxT(t, 2*testWait)

	wch := watcher.client.Watch(ctx, "wl", clientv3.WithPrevKV(), clientv3.WithCreatedNotify())
	require.True(t, (<-wch).Created)

	type ack struct {
		val string
		rev int64
	}
	var (
		mu      sync.Mutex
		acked   []ack
		unknown = map[string]bool{}
	)
	writes := func(from, n int) {
		for i := from; i < from+n; i++ {
			v := fmt.Sprint(i)
			wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			r, err := writer.client.Put(wctx, "wl", v)
			cancel()
			mu.Lock()
			if err == nil {
				acked = append(acked, ack{v, r.Header.Revision})
			} else {
				unknown[v] = true // may or may not have applied
			}
			mu.Unlock()
		}
	}
	writes(0, 20)
	c.stop(lead)
	writes(20, 40)

	mu.Lock()
	wantAcks := slices.Clone(acked)
	mu.Unlock()
	var events []*clientv3.Event
	timeout := time.After(testWait)
	lastAck := wantAcks[len(wantAcks)-1].rev
	for len(events) == 0 || events[len(events)-1].Kv.ModRevision < lastAck {
		select {
		case resp := <-wch:
			require.NoError(t, resp.Err())
			events = append(events, resp.Events...)
		case <-timeout:
			t.Fatalf("watch through %s: %d events, none at revision %d", watcher.name, len(events), lastAck)
		}
	}
	byRev := map[int64]*clientv3.Event{}
	for i, ev := range events {
		if i > 0 {
			prev := events[i-1]
			require.Greater(t, ev.Kv.ModRevision, prev.Kv.ModRevision, "event %d out of order or duplicated", i)
			require.NotNil(t, ev.PrevKv, "event %d", i)
			require.Equal(t, string(prev.Kv.Value), string(ev.PrevKv.Value), "event %d prev_kv", i)
			require.Equal(t, prev.Kv.ModRevision, ev.PrevKv.ModRevision, "event %d prev_kv", i)
		}
		byRev[ev.Kv.ModRevision] = ev
	}
	for _, a := range wantAcks {
		ev, ok := byRev[a.rev]
		require.True(t, ok, "acknowledged write %s at revision %d never delivered", a.val, a.rev)
		require.Equal(t, a.val, string(ev.Kv.Value))
	}
	for _, ev := range events {
		v := string(ev.Kv.Value)
		if !unknown[v] && !slices.ContainsFunc(wantAcks, func(a ack) bool { return a.val == v }) {
			t.Errorf("watch delivered value %s that was never written", v)
		}
	}
	c.restart(lead)
	c.waitReady()
}
