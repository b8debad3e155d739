package node

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/rangeraft"
	"github.com/rangekv/rangekv/txnproto"
)

// TestCrossRangeTxn runs transactions over keys of two ranges through
// every node: compares on both sides decide the branch, both writes get
// one revision, a watch over both ranges delivers them in one response,
// and a delete over both ranges removes every key at one revision.
func TestCrossRangeTxn(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	_, _, err := lead.node().splitAt(ctxT(t, testWait), []byte("m"))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	cli := c.members[0].client
	a, err := cli.Put(ctx, "a", "1")
	require.NoError(t, err)
	z, err := cli.Put(ctx, "z", "1")
	require.NoError(t, err)

	wch := cli.Watch(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(z.Header.Revision+1))
	for i, m := range c.members {
		resp, err := m.client.Txn(ctx).If(
			clientv3.Compare(clientv3.Value("a"), "=", fmt.Sprint(i+1)),
			clientv3.Compare(clientv3.Value("z"), "=", fmt.Sprint(i+1)),
		).Then(
			clientv3.OpPut("a", fmt.Sprint(i+2)), clientv3.OpPut("z", fmt.Sprint(i+2), clientv3.WithPrevKV()), clientv3.OpGet("a"),
		).Else(clientv3.OpGet("a")).Commit()
		require.NoError(t, err, "node %d", i)
		require.True(t, resp.Succeeded, "node %d", i)
		rev := resp.Header.Revision
		require.Greater(t, rev, z.Header.Revision)
		require.Equal(t, fmt.Sprint(i+1), string(resp.Responses[1].GetResponsePut().PrevKv.Value))
		require.Equal(t, fmt.Sprint(i+2), string(resp.Responses[2].GetResponseRange().Kvs[0].Value))
		require.Equal(t, rev, resp.Responses[2].GetResponseRange().Kvs[0].ModRevision)

		got, err := m.client.Get(ctx, "z")
		require.NoError(t, err)
		require.Equal(t, fmt.Sprint(i+2), string(got.Kvs[0].Value))
		require.Equal(t, rev, got.Kvs[0].ModRevision)
		require.Equal(t, a.Header.Revision, mustGet(t, m.client, "a").Kvs[0].CreateRevision)

		wr := <-wch
		require.NoError(t, wr.Err())
		require.Len(t, wr.Events, 2, "node %d: both writes in one response", i)
		for _, ev := range wr.Events {
			require.Equal(t, rev, ev.Kv.ModRevision)
		}
	}
	// A failing compare on one side: nothing written.
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("z"), "=", "nope")).
		Then(clientv3.OpPut("a", "x"), clientv3.OpPut("z", "x")).Else(clientv3.OpGet("a"), clientv3.OpGet("z")).Commit()
	require.NoError(t, err)
	require.False(t, resp.Succeeded)
	require.Equal(t, "4", string(resp.Responses[1].GetResponseRange().Kvs[0].Value))

	// DeleteRange over both ranges.
	del, err := c.members[1].client.Delete(ctx, "", clientv3.WithFromKey(), clientv3.WithPrevKV())
	require.NoError(t, err)
	require.EqualValues(t, 2, del.Deleted)
	require.Len(t, del.PrevKvs, 2)
	all, err := cli.Get(ctx, "", clientv3.WithFromKey())
	require.NoError(t, err)
	require.Zero(t, all.Count)
	wr := <-wch
	require.NoError(t, wr.Err())
	require.Len(t, wr.Events, 2)
}

func mustGet(t *testing.T, cli *clientv3.Client, key string) *clientv3.GetResponse {
	t.Helper()
	resp, err := cli.Get(ctxT(t, testWait), key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	return resp
}

// TestCrossRangeTxnBadInput checks that a txn over several ranges gets
// etcd's errors for too many operations, duplicate keys and an oversized
// request, and that nothing is written.
func TestCrossRangeTxnBadInput(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	_, _, err := lead.node().splitAt(ctxT(t, testWait), []byte("m"))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	cli := c.members[0].client

	var ops []clientv3.Op
	for i := range 129 {
		ops = append(ops, clientv3.OpPut(fmt.Sprintf("%c%03d", 'a'+i%26, i), "v"))
	}
	_, err = cli.Txn(ctx).Then(ops...).Commit()
	require.ErrorIs(t, err, rpctypes.ErrTooManyOps)

	_, err = cli.Txn(ctx).Then(clientv3.OpPut("a", "1"), clientv3.OpPut("z", "1"), clientv3.OpPut("a", "2")).Commit()
	require.ErrorIs(t, err, rpctypes.ErrDuplicateKey)

	big := strings.Repeat("x", 800<<10) // two: over 1.5 MiB, under the client's 2 MiB
	_, err = cli.Txn(ctx).Then(clientv3.OpPut("a", big), clientv3.OpPut("z", big)).Commit()
	require.ErrorIs(t, err, rpctypes.ErrRequestTooLarge)

	all, err := cli.Get(ctx, "", clientv3.WithFromKey())
	require.NoError(t, err)
	require.Zero(t, all.Count)
}

// TestTxnServiceRejectsMalformedCommands: the peer-port TxnService takes
// exactly one transaction command, and a prepare needs spans and an ID.
func TestTxnServiceRejectsMalformedCommands(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	svc := &txnServer{n: lead.node()}
	ctx := ctxT(t, testWait)
	for name, cmd := range map[string]*txnproto.Command{
		"none":       nil,
		"empty":      {},
		"two":        {TxnForget: &txnproto.TxnForgetCommand{}, TxnRecover: &txnproto.TxnRecoverCommand{}},
		"with a put": {Put: []byte{1}, TxnForget: &txnproto.TxnForgetCommand{}},
	} {
		_, err := svc.TxnCommand(ctx, &txnproto.TxnCommandRequest{Key: kvstore.UserSpanKey([]byte("a")), Command: cmd})
		require.Equal(t, codes.InvalidArgument, status.Code(err), name)
	}
	// A prepare without spans, through the coordinator's path (routed to
	// the range's leader).
	_, _, err := lead.node().txnCommand(ctx, kvstore.UserSpanKey([]byte("a")), &txnproto.Command{
		TxnPrepare: &txnproto.TxnPrepareCommand{Intent: &txnproto.TxnIntent{Txn: &txnproto.TxnMeta{Id: []byte("x"), ExpiryMs: math.MaxInt64}}}})
	require.ErrorContains(t, err, rangeraft.ErrMalformedTxnCommand.Error())
	// The node still serves.
	_, err = c.members[0].client.Put(ctx, "a", "1")
	require.NoError(t, err)
}

// TestCrossRangeTxnReadsHistory: Range operations at an explicit revision
// inside a txn over several ranges read that revision, including keys
// deleted since, while compares and plain reads see the present; a
// compacted revision gets etcd's error.
func TestCrossRangeTxnReadsHistory(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	_, _, err := lead.node().splitAt(ctxT(t, testWait), []byte("m"))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	cli := c.members[1].client
	_, err = cli.Put(ctx, "a", "old-a")
	require.NoError(t, err)
	then, err := cli.Put(ctx, "z", "old-z")
	require.NoError(t, err)
	_, err = cli.Put(ctx, "a", "new-a")
	require.NoError(t, err)
	_, err = cli.Delete(ctx, "z")
	require.NoError(t, err)

	r1 := then.Header.Revision
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Version("z"), "=", 0)).Then(
		clientv3.OpGet("", clientv3.WithFromKey(), clientv3.WithRev(r1)),
		clientv3.OpGet("", clientv3.WithFromKey()),
		clientv3.OpPut("b", "x"), clientv3.OpPut("y", "x"),
	).Commit()
	require.NoError(t, err)
	require.True(t, resp.Succeeded, "z is deleted now")
	past := resp.Responses[0].GetResponseRange()
	require.Len(t, past.Kvs, 2)
	require.Equal(t, "old-a", string(past.Kvs[0].Value))
	require.Equal(t, "old-z", string(past.Kvs[1].Value))
	now := resp.Responses[1].GetResponseRange()
	require.Len(t, now.Kvs, 1)
	require.Equal(t, "new-a", string(now.Kvs[0].Value))

	_, err = cli.Compact(ctx, resp.Header.Revision)
	require.NoError(t, err)
	_, err = cli.Txn(ctx).Then(clientv3.OpGet("a", clientv3.WithRev(r1)), clientv3.OpPut("b", "1"), clientv3.OpPut("y", "1")).Commit()
	require.ErrorIs(t, err, rpctypes.ErrCompacted)
}

// TestMultiRangeTxnRereadsAcrossSplit checks that a multi-range read-only
// txn whose ranges split between listing them and choosing its revision
// T lists them again. Without it, T is read from the left-hand range
// alone while the keys that moved (and a cross-range transaction's
// intent on them) are no longer capping it, and a commit can land below
// T: the robustness suite's bank saw a transfer torn that way.
func TestMultiRangeTxnRereadsAcrossSplit(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	ctx := ctxT(t, testWait)
	_, _, err := lead.node().splitAt(ctx, []byte("m"))
	require.NoError(t, err)
	cli := c.members[1].client
	_, err = cli.Put(ctx, "a", "1")
	require.NoError(t, err)
	_, err = cli.Put(ctx, "z", "1")
	require.NoError(t, err)
	// Serializable reads on this member see both puts once it applied them.
	require.Eventually(t, func() bool {
		resp, err := cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithSerializable())
		return err == nil && resp.Count == 2
	}, testWait, 5*time.Millisecond)

	for _, serializable := range []bool{true, false} {
		splitKey := map[bool]string{true: "x", false: "y"}[serializable]
		var opts []clientv3.OpOption
		if serializable {
			opts = append(opts, clientv3.WithSerializable())
		}
		calls := 0
		testHookTxnRangesListed = func(n *Node) {
			if n != c.members[1].node() {
				return
			}
			calls++
			if calls > 1 {
				return
			}
			_, _, err := lead.node().splitAt(ctx, []byte(splitKey))
			require.NoError(t, err)
			// Wait until the serving node has applied the split too.
			require.Eventually(t, func() bool {
				rs, err := n.spanRanges(kvstore.UserSpanKey([]byte("z")), kvstore.UserSpanKey([]byte("z\x00")))
				if err != nil || len(rs) != 1 {
					return false
				}
				start, _ := rs[0].Span()
				return string(start) == string(kvstore.UserSpanKey([]byte(splitKey)))
			}, testWait, 5*time.Millisecond)
		}
		resp, err := cli.Txn(ctx).Then(clientv3.OpGet("a", opts...), clientv3.OpGet("z", opts...)).Commit()
		testHookTxnRangesListed = nil
		require.NoError(t, err, "serializable %v", serializable)
		require.Equal(t, "1", string(resp.Responses[0].GetResponseRange().Kvs[0].Value))
		require.Equal(t, "1", string(resp.Responses[1].GetResponseRange().Kvs[0].Value))
		require.Equal(t, 2, calls, "serializable %v: the txn listed its ranges again after the split", serializable)
	}
}
