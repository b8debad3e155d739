package node

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/rangekv/rangekv/kvstore"
)

// Regression tests for bugs a review of the watch code found.

// TestWatchEngineCatchUpAfterSplit: a single-range watcher whose range
// split under it must not read the narrowed range's history and advance
// past the events of keys that moved to the new range; catchUpFromEngine
// leaves next alone so that run follows the keys first.
func TestWatchEngineCatchUpAfterSplit(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	n := lead.node()
	ctx := ctxT(t, testWait)
	cli := lead.client
	p0, err := cli.Put(ctx, "b", "0")
	require.NoError(t, err)

	ws := &watchStream{n: n, ctx: ctx, sendc: make(chan *pb.WatchResponse, 1024), watchers: map[int64]*watcher{}}
	w := &watcher{ws: ws, key: []byte("a"), end: []byte("z"), cancelc: make(chan struct{})}
	w.span = kvstore.Span{Start: kvstore.UserSpanKey(w.key), End: kvstore.UserSpanEndKey(w.end)}
	rs, err := n.spanRanges(w.span.Start, w.span.End)
	require.NoError(t, err)
	require.Len(t, rs, 1)
	w.r = rs[0]
	w.next = p0.Header.Revision + 1

	_, _, err = n.splitAt(ctx, []byte("m"))
	require.NoError(t, err)
	py, err := cli.Put(ctx, "y", "1") // the new right range
	require.NoError(t, err)
	pc, err := cli.Put(ctx, "c", "1") // the narrowed left range
	require.NoError(t, err)
	require.NoError(t, w.r.WaitReadable(ctx, pc.Header.Revision))

	require.True(t, w.catchUpFromEngine(w.next, pc.Header.Revision))
	require.Zero(t, len(ws.sendc), "nothing delivered from a range that no longer holds the keys")
	require.LessOrEqual(t, w.next, py.Header.Revision, "next must not pass the moved key's put")
}

// TestWatchProgressNotBelowNoopWrite: a progress notification requested
// after a no-op write returned reports at least that write's revision.
func TestWatchProgressNotBelowNoopWrite(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	ctx := ctxT(t, testWait)
	cli := lead.client
	_, err := cli.Put(ctx, "k", "v")
	require.NoError(t, err)
	wctx := clientv3.WithRequireLeader(ctx)
	wch := cli.Watch(wctx, "k", clientv3.WithCreatedNotify())
	<-wch
	del, err := cli.Delete(ctx, "nothing-here")
	require.NoError(t, err)
	require.NoError(t, cli.RequestProgress(wctx))
	select {
	case resp := <-wch:
		require.True(t, resp.IsProgressNotify(), "%+v", resp)
		require.GreaterOrEqual(t, resp.Header.Revision, del.Header.Revision)
	case <-time.After(testWait):
		t.Fatal("no progress notification")
	}
}
