package kvstore

import (
	"github.com/stretchr/testify/require"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/zap"
)

// testStore drives one range over a real on-disk engine the way rangeraft
// will: one indexed batch per command, committed on success, with the
// incremental stats kept alongside.
type testStore struct {
	t          testing.TB
	db         *pebble.DB
	span       Span
	ks         Keyspace
	rev        int64 // revision of the last applied command
	compactRev int64
	stats      Stats
	events     []*mvccpb.Event
	// newest, when set, is the WriteBatches' NewestCache, as in the apply
	// path.
	newest *NewestCache
	// presence, when set, is the WriteBatches' KeyPresence.
	presence *KeyPresence
}

func newTestStore(t testing.TB) *testStore {
	t.Helper()
	e, err := Open(t.TempDir(), zap.NewNop())
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return &testStore{t: t, db: e.DB, span: Span{Start: UserSpanStart, End: UserSpanEnd}, ks: UserKeys}
}

// apply runs fn in a WriteBatch at rev and commits it unless fn fails.
func (s *testStore) apply(rev int64, fn func(w *WriteBatch) error) (*WriteBatch, error) {
	s.t.Helper()
	b := s.db.NewIndexedBatch()
	defer b.Close()
	w := &WriteBatch{Batch: b, Rev: rev, Keyspace: s.ks, Span: s.span, CompactRev: s.compactRev, Newest: s.newest, Presence: s.presence}
	if err := fn(w); err != nil {
		return w, err
	}
	require.NoError(s.t, b.Commit(pebble.NoSync))
	s.rev = rev
	s.stats.Add(w.Delta)
	s.events = append(s.events, w.Events...)
	return w, nil
}

func (s *testStore) put(rev int64, key, val string) *pb.PutResponse {
	s.t.Helper()
	return s.putReq(rev, &pb.PutRequest{Key: []byte(key), Value: []byte(val)})
}

func (s *testStore) putReq(rev int64, req *pb.PutRequest) *pb.PutResponse {
	s.t.Helper()
	var resp *pb.PutResponse
	_, err := s.apply(rev, func(w *WriteBatch) (err error) {
		resp, err = ApplyPut(w, req)
		return err
	})
	require.NoError(s.t, err)
	return resp
}

func (s *testStore) del(rev int64, key, end string) *pb.DeleteRangeResponse {
	s.t.Helper()
	var resp *pb.DeleteRangeResponse
	_, err := s.apply(rev, func(w *WriteBatch) (err error) {
		resp, err = ApplyDeleteRange(w, &pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: bytesOrNil(end), PrevKv: true})
		return err
	})
	require.NoError(s.t, err)
	return resp
}

func (s *testStore) txn(rev int64, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	s.t.Helper()
	var resp *pb.TxnResponse
	_, err := s.apply(rev, func(w *WriteBatch) (err error) {
		resp, err = ApplyTxn(w, req)
		return err
	})
	return resp, err
}

func (s *testStore) rng(req *pb.RangeRequest) (*pb.RangeResponse, error) {
	return ExecRange(s.db, s.ks, s.span, req, s.rev, s.compactRev)
}

func (s *testStore) mustRange(req *pb.RangeRequest) *pb.RangeResponse {
	s.t.Helper()
	resp, err := s.rng(req)
	require.NoError(s.t, err)
	return resp
}

func (s *testStore) get(key string, rev int64) *mvccpb.KeyValue {
	s.t.Helper()
	kv, err := MVCCGet(s.db, UserSpanKey([]byte(key)), rev)
	require.NoError(s.t, err)
	return kv
}

func (s *testStore) compact(rev int64) {
	s.t.Helper()
	require.NoError(s.t, Compact(s.db, s.span, rev, func(d Stats) { s.stats.Add(d) }))
	s.compactRev = rev
}

func (s *testStore) checkStats() {
	s.t.Helper()
	got, err := ComputeStats(s.db, s.span)
	require.NoError(s.t, err)
	require.Equal(s.t, got, s.stats, "incremental stats differ from recomputed")
}

func bytesOrNil(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

func keysOf(kvs []*mvccpb.KeyValue) []string {
	out := []string{}
	for _, kv := range kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

func opPut(key, val string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte(val)}}}
}

func opDel(key, end string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: bytesOrNil(end), PrevKv: true}}}
}

func opRange(key, end string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(key), RangeEnd: bytesOrNil(end)}}}
}

func opTxn(t *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: t}}
}
