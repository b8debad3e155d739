package node

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestWatchAcrossRanges watches every key while writers put into several
// ranges and the ranges split under the watch, through every node, and
// checks that each watcher sees every acknowledged put exactly once, in
// revision order, with the revision the put returned; a second watch
// started at a past revision replays the same history.
func TestWatchAcrossRanges(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	for _, k := range []string{"c", "f", "k"} {
		_, _, err := lead.node().splitAt(ctxT(t, testWait), []byte(k))
		require.NoError(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	first, err := c.members[0].client.Put(ctx, "a-first", "x")
	require.NoError(t, err)

	type watchResult struct {
		events []*clientv3.Event
		err    error
	}
	const writers, perWriter = 4, 60
	total := writers*perWriter + 1
	watch := func(cli *clientv3.Client, opts ...clientv3.OpOption) <-chan watchResult {
		out := make(chan watchResult, 1)
		wctx, wcancel := context.WithCancel(ctx)
		wch := cli.Watch(wctx, "", append([]clientv3.OpOption{clientv3.WithFromKey()}, opts...)...)
		go func() {
			defer wcancel()
			var res watchResult
			for resp := range wch {
				if err := resp.Err(); err != nil {
					res.err = err
					break
				}
				res.events = append(res.events, resp.Events...)
				if len(res.events) >= total {
					break
				}
			}
			out <- res
		}()
		return out
	}
	// Watchers from "now" on every node need the first put to be older;
	// these start at its revision instead, so all see the same events.
	var watchers []<-chan watchResult
	for _, m := range c.members {
		watchers = append(watchers, watch(m.client, clientv3.WithRev(first.Header.Revision)))
	}

	acked := map[string]int64{"a-first": first.Header.Revision}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			cli := c.members[w%3].client
			for i := range perWriter {
				key := fmt.Sprintf("%c-%d-%d", 'a'+rand.IntN(14), w, i)
				resp, err := cli.Put(ctx, key, "v")
				if !assertNoError(t, err) {
					return
				}
				mu.Lock()
				acked[key] = resp.Header.Revision
				mu.Unlock()
			}
		})
	}
	// Split twice under the writers and watchers.
	for _, k := range []string{"h", "m"} {
		_, _, err := lead.node().splitAt(ctxT(t, testWait), []byte(k))
		require.NoError(t, err)
	}
	wg.Wait()
	require.Len(t, acked, total)

	check := func(name string, res watchResult) {
		t.Helper()
		require.NoError(t, res.err, name)
		seen := map[string]bool{}
		last := int64(0)
		for _, ev := range res.events {
			k := string(ev.Kv.Key)
			require.False(t, seen[k], "%s: %s delivered twice", name, k)
			seen[k] = true
			require.GreaterOrEqual(t, ev.Kv.ModRevision, last, "%s: %s out of revision order", name, k)
			last = ev.Kv.ModRevision
			want, ok := acked[k]
			require.True(t, ok, "%s: unexpected key %s", name, k)
			require.Equal(t, want, ev.Kv.ModRevision, "%s: revision of %s", name, k)
		}
		require.Len(t, seen, total, "%s: events", name)
	}
	for i, ch := range watchers {
		check(fmt.Sprintf("watch through node %d", i), <-ch)
	}
	// A watch created now from the first put's revision replays it all.
	check("replay", <-watch(c.members[1].client, clientv3.WithRev(first.Header.Revision)))
}

// assertNoError reports err as a test error (usable off the test
// goroutine) and whether it was nil.
func assertNoError(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Errorf("unexpected error: %v", err)
		return false
	}
	return true
}

// TestWatchProgressAcrossRanges checks RequestProgress on a watch of keys
// in two idle ranges while another range, outside the watch, takes
// writes: the notification's revision is at least that of a read of the
// written key made before the request (the bookmark kube-apiserver's
// consistent reads from its watch cache wait for).
func TestWatchProgressAcrossRanges(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	for _, k := range []string{"c", "f"} {
		_, _, err := lead.node().splitAt(ctxT(t, testWait), []byte(k))
		require.NoError(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	cli := c.members[1].client
	// Keys a..e: the ranges [.., c) and [c, f).
	wch := cli.Watch(ctx, "a", clientv3.WithRange("e"), clientv3.WithCreatedNotify())
	require.True(t, (<-wch).Created)
	for round := range 3 {
		_, err := c.members[0].client.Put(ctx, fmt.Sprintf("x%d", round), "v")
		require.NoError(t, err)
		read, err := c.members[2].client.Get(ctx, fmt.Sprintf("x%d", round))
		require.NoError(t, err)
		require.NoError(t, cli.RequestProgress(ctx))
		resp := <-wch
		require.NoError(t, resp.Err())
		require.True(t, resp.IsProgressNotify(), "%+v", resp)
		require.GreaterOrEqual(t, resp.Header.Revision, read.Header.Revision, "round %d", round)
	}
}
