package rangeraft

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/txnproto"
)

// FuzzTxnTableAdd feeds arbitrary persisted intents and records to the
// loader: a corrupt value is an error naming the range, never a panic.
func FuzzTxnTableAdd(f *testing.F) {
	in, _ := proto.Marshal(&txnproto.TxnIntent{Txn: &txnproto.TxnMeta{Id: []byte("0123456789abcdef")},
		Spans: []*txnproto.TxnSpan{{Start: []byte{2, 'a'}, End: []byte{2, 'b'}}}, PrepareRevision: 7})
	rec, _ := proto.Marshal(&txnproto.TxnRecord{Txn: &txnproto.TxnMeta{Id: []byte("0123456789abcdef")}})
	f.Add(kvstore.IntentKey(3, []byte("0123456789abcdef")), in)
	f.Add(kvstore.TxnRecordKey(3, []byte("0123456789abcdef")), rec)
	f.Add(kvstore.IntentKey(3, nil), []byte{0xff, 0x01})
	f.Add([]byte{0, 'r'}, []byte{})
	f.Fuzz(func(t *testing.T, key, value []byte) {
		tbl := &txnTable{intents: map[string]*txnproto.TxnIntent{}, records: map[string]*txnproto.TxnRecord{}}
		_ = tbl.add(3, key, value)
		tbl.recompute()
	})
}

// TestCheckSnapshotKeys: a snapshot may carry its range's MVCC data and
// transaction state, nothing else.
func TestCheckSnapshotKeys(t *testing.T) {
	desc := &txnproto.RangeDescriptor{RangeId: 5, StartKey: kvstore.UserSpanKey([]byte("b")), EndKey: kvstore.UserSpanKey([]byte("d"))}
	ok := []*txnproto.KeyValue{
		{Key: kvstore.EncodeMVCCKey(nil, kvstore.UserSpanKey([]byte("c")), 9)},
		{Key: kvstore.IntentKey(5, []byte("id"))},
		{Key: kvstore.TxnRecordKey(5, []byte("id"))},
	}
	require.NoError(t, checkSnapshotKeys(5, desc, ok))
	for name, k := range map[string][]byte{
		"data outside the span": kvstore.EncodeMVCCKey(nil, kvstore.UserSpanKey([]byte("e")), 9),
		"another range's state": kvstore.IntentKey(6, []byte("id")),
		"raft state":            kvstore.RaftHardStateKey(5),
		"node identity":         kvstore.NodeIdentKey(),
	} {
		require.Error(t, checkSnapshotKeys(5, desc, append(ok, &txnproto.KeyValue{Key: k})), name)
	}
}

// TestPublishAppliedOrdersAPass: a pass that applies a write above an
// intent and then the intent's resolution below it (leaving no intent)
// publishes both in revision order. Published in pass order, the feed
// lost the resolution's events for watchers, or delivered them late.
func TestPublishAppliedOrdersAPass(t *testing.T) {
	r := &Replica{feed: NewFeed(5, 1000)}
	ev := func(k string) []*mvccpb.Event {
		return []*mvccpb.Event{{Type: mvccpb.Event_PUT, Kv: &mvccpb.KeyValue{Key: []byte(k)}}}
	}
	r.publishApplied([]FeedEntry{{Revision: 10, Events: ev("w")}, {Revision: 7, Events: ev("r")}, {Revision: 10, Events: ev("x")}}, 0)
	entries, inWindow, _, _ := r.feed.Since(5, 100)
	require.True(t, inWindow)
	require.Len(t, entries, 2)
	require.Equal(t, int64(7), entries[0].Revision)
	require.Equal(t, int64(10), entries[1].Revision)
	require.Len(t, entries[1].Events, 2, "equal revisions merge")

	// Held above a pending prepare at 12, released once it resolves.
	r.publishApplied([]FeedEntry{{Revision: 13, Events: ev("a")}}, 12)
	entries, _, _, _ = r.feed.Since(10, 100)
	require.Empty(t, entries)
	r.publishApplied([]FeedEntry{{Revision: 12, Events: ev("b")}}, 0)
	entries, _, _, _ = r.feed.Since(10, 100)
	require.Len(t, entries, 2)
	require.Equal(t, int64(12), entries[0].Revision)
	require.Equal(t, int64(13), entries[1].Revision)
}
