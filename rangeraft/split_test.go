package rangeraft

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/txnproto"
)

func putOn(t *testing.T, r *Replica, key string) (ApplyResult, error) {
	t.Helper()
	data, err := proto.Marshal(&pb.PutRequest{Key: []byte(key), Value: []byte("v-" + key)})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		res, err := r.Propose(ctx, &txnproto.Command{Put: data})
		if _, ok := err.(*NotLeaderError); ok && ctx.Err() == nil {
			time.Sleep(2 * time.Millisecond)
			continue
		}
		return res, err
	}
}

func scanAll(t *testing.T, r *Replica) []string {
	t.Helper()
	view := r.NewReadView()
	defer view.Close()
	resp, err := kvstore.ExecRange(view.Reader, kvstore.UserKeys, view.Span,
		&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}, view.Revision, view.CompactRevision)
	require.NoError(t, err)
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys
}

// TestSplitThroughRaftLog splits the user range of a one-node store and
// checks descriptors, routing, data placement, stats, span enforcement on
// the left-hand side, writes to the new range, and that a restarted store
// loads both ranges with the same state.
func TestSplitThroughRaftLog(t *testing.T) {
	s, _ := startSingleStore(t)
	left := s.Replica(FirstUserRangeID)
	for _, k := range []string{"a", "b", "m", "n", "z"} {
		_, err := putOn(t, left, k)
		require.NoError(t, err)
	}
	revBefore := left.Status().Revision

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, err := left.ProposeSplit(ctx, kvstore.UserSpanStart, 3)
	require.ErrorIs(t, err, ErrBadSplitKey, "splitting at the range start")
	l, r, err := left.ProposeSplit(ctx, kvstore.UserSpanKey([]byte("m")), 3)
	require.NoError(t, err)
	require.Equal(t, kvstore.UserSpanKey([]byte("m")), l.EndKey)
	require.Equal(t, uint64(3), r.RangeId)

	right := s.Replica(3)
	require.NotNil(t, right)
	require.Same(t, left, s.ReplicaForKey(kvstore.UserSpanKey([]byte("b"))))
	require.Same(t, right, s.ReplicaForKey(kvstore.UserSpanKey([]byte("m"))))
	require.Same(t, right, s.ReplicaForKey(kvstore.UserSpanKey([]byte("zzz"))))
	require.Equal(t, []string{"a", "b"}, scanAll(t, left))
	require.Equal(t, []string{"m", "n", "z"}, scanAll(t, right))
	require.Equal(t, int64(2), left.Status().Stats.LiveKeys)
	require.Equal(t, int64(3), right.Status().Stats.LiveKeys)
	require.GreaterOrEqual(t, right.Status().Revision, revBefore, "the new range starts at the left range's revision")

	// The same split again no longer matches the descriptor.
	_, _, err = left.ProposeSplit(ctx, kvstore.UserSpanKey([]byte("m")), 4)
	require.ErrorIs(t, err, ErrBadSplitKey)

	// The left-hand side refuses keys it gave away, writing nothing.
	res, err := putOn(t, left, "x")
	require.ErrorIs(t, err, kvstore.ErrKeyOutsideSpan, "%+v", res)
	res, err = putOn(t, right, "x")
	require.NoError(t, err)
	require.Greater(t, res.Revision, revBefore)
	require.Equal(t, []string{"m", "n", "x", "z"}, scanAll(t, right))

	// A restart loads three ranges with the split state.
	eng := s.cfg.Engine
	s.Stop()
	s2 := loadSingleStore(t, eng)
	s2.Start()
	defer s2.Stop()
	require.Len(t, s2.Replicas(), 3)
	require.Equal(t, []string{"a", "b"}, scanAll(t, s2.Replica(FirstUserRangeID)))
	require.Equal(t, []string{"m", "n", "x", "z"}, scanAll(t, s2.Replica(3)))
	_, err = putOn(t, s2.Replica(3), "y")
	require.NoError(t, err)
}

// TestFailedSplitWritesNothing splits a range through the locked keys of
// a prepared transaction: the split fails, and a restarted store still
// loads the range whole with the transaction's record. A failed split used
// to leave its descriptors and the right-hand range in the pass's batch,
// so a restart loaded a split that the other replicas never made, and the
// restarted replica then dropped the range's later writes as outside its
// span (found by the robustness suite: a stale read after a crash in a
// split).
func TestFailedSplitWritesNothing(t *testing.T) {
	s, _ := startSingleStore(t)
	r := s.Replica(FirstUserRangeID)
	for _, k := range []string{"a", "m", "z"} {
		_, err := putOn(t, r, k)
		require.NoError(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	anchor := kvstore.UserSpanKey([]byte("a"))
	req, err := proto.Marshal(&pb.TxnRequest{})
	require.NoError(t, err)
	meta := &txnproto.TxnMeta{Id: []byte("0123456789abcdef"), AnchorKey: anchor, Coordinator: 0xa1,
		ExpiryMs: time.Now().Add(time.Hour).UnixMilli()}
	res, err := r.Propose(ctx, &txnproto.Command{TxnKey: anchor, TxnPrepare: &txnproto.TxnPrepareCommand{
		Intent: &txnproto.TxnIntent{Txn: meta, Spans: []*txnproto.TxnSpan{{Start: anchor, End: kvstore.UserSpanKey([]byte("zz"))}}},
		Anchor: true, Request: req, Participants: [][]byte{anchor}}})
	require.NoError(t, err)
	require.NoError(t, res.Err)
	before := r.Descriptor()

	_, _, err = r.ProposeSplit(ctx, kvstore.UserSpanKey([]byte("m")), 3)
	require.ErrorIs(t, err, ErrSplitThroughIntent)
	require.Equal(t, before.Generation, r.Descriptor().Generation)

	eng := s.cfg.Engine
	s.Stop()
	s2 := loadSingleStore(t, eng)
	require.Len(t, s2.Replicas(), 2, "the failed split's right-hand range was stored")
	r2 := s2.Replica(FirstUserRangeID)
	require.True(t, proto.Equal(before, r2.Descriptor()), "stored descriptor %v, want %v", r2.Descriptor(), before)
	r2.mu.Lock()
	_, held := r2.txns.records[string(meta.Id)]
	r2.mu.Unlock()
	require.True(t, held, "the transaction's record was lost")
}
