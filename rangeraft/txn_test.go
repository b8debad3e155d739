package rangeraft

import (
	"testing"

	"github.com/stretchr/testify/require"
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
