package kvstore

import (
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"
)

func kv(key, val string, create, mod, ver int64) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: []byte(key), Value: bytesOrNil(val), CreateRevision: create, ModRevision: mod, Version: ver}
}

func requireKV(t *testing.T, want, got *mvccpb.KeyValue) {
	t.Helper()
	if want == nil || got == nil {
		require.Equal(t, want == nil, got == nil, "want %v got %v", want, got)
		return
	}
	require.True(t, proto.Equal(want, got), "want %v\ngot  %v", want, got)
}

func TestPutGetVersions(t *testing.T) {
	s := newTestStore(t)
	resp := s.put(100, "a", "1")
	assert.Equal(t, int64(100), resp.Header.Revision)
	assert.Nil(t, resp.PrevKv)

	resp = s.putReq(200, &pb.PutRequest{Key: []byte("a"), Value: []byte("2"), PrevKv: true})
	requireKV(t, kv("a", "1", 100, 100, 1), resp.PrevKv)
	s.put(300, "b", "x")

	for _, tc := range []struct {
		key  string
		rev  int64
		want *mvccpb.KeyValue
	}{
		{"a", 50, nil},
		{"a", 100, kv("a", "1", 100, 100, 1)},
		{"a", 199, kv("a", "1", 100, 100, 1)},
		{"a", 200, kv("a", "2", 100, 200, 2)},
		{"a", 1000, kv("a", "2", 100, 200, 2)},
		{"a", 0, kv("a", "2", 100, 200, 2)},
		{"b", 299, nil},
		{"b", 300, kv("b", "x", 300, 300, 1)},
		{"c", 300, nil},
	} {
		requireKV(t, tc.want, s.get(tc.key, tc.rev))
	}
	s.checkStats()
}

func TestDeleteThenRecreate(t *testing.T) {
	s := newTestStore(t)
	s.put(100, "a", "1")
	s.put(200, "a", "2")
	d := s.del(300, "a", "")
	assert.Equal(t, int64(1), d.Deleted)
	assert.Equal(t, int64(300), d.Header.Revision)
	require.Len(t, d.PrevKvs, 1)
	requireKV(t, kv("a", "2", 100, 200, 2), d.PrevKvs[0])

	// Deleting an absent key writes nothing.
	d = s.del(400, "a", "")
	assert.Equal(t, int64(0), d.Deleted)
	assert.Empty(t, d.PrevKvs)
	s.checkStats()
	assert.Equal(t, int64(3), s.stats.Versions)
	assert.Equal(t, int64(0), s.stats.LiveKeys)

	s.put(500, "a", "3")
	requireKV(t, kv("a", "3", 500, 500, 1), s.get("a", 500))
	requireKV(t, kv("a", "2", 100, 200, 2), s.get("a", 250))
	assert.Nil(t, s.get("a", 300))
	assert.Nil(t, s.get("a", 499))

	r := s.mustRange(&pb.RangeRequest{Key: []byte("a"), Revision: 350})
	assert.Equal(t, int64(0), r.Count)
	assert.Empty(t, r.Kvs)
	s.checkStats()
	assert.Equal(t, int64(1), s.stats.LiveKeys)
}

// sortFixture leaves:
//
//	a: value "4", version 2, create 100, mod 400
//	b: value "6", version 3, create 200, mod 700
//	c: value "2", version 1, create 300, mod 300
//	d: value "0", version 4, create 500, mod 1000
func sortFixture(t *testing.T) *testStore {
	s := newTestStore(t)
	for _, p := range []struct {
		rev      int64
		key, val string
	}{
		{100, "a", "3"}, {200, "b", "1"}, {300, "c", "2"}, {400, "a", "4"}, {500, "d", "x"},
		{600, "b", "5"}, {700, "b", "6"}, {800, "d", "y"}, {900, "d", "z"}, {1000, "d", "0"},
	} {
		s.put(p.rev, p.key, p.val)
	}
	return s
}

func TestRangeSortLimitFilters(t *testing.T) {
	s := sortFixture(t)
	all := func(r *pb.RangeRequest) *pb.RangeRequest {
		r.Key, r.RangeEnd = []byte("a"), []byte("z")
		return r
	}
	const (
		KEY     = pb.RangeRequest_KEY
		VERSION = pb.RangeRequest_VERSION
		CREATE  = pb.RangeRequest_CREATE
		MOD     = pb.RangeRequest_MOD
		VALUE   = pb.RangeRequest_VALUE
		NONE    = pb.RangeRequest_NONE
		ASC     = pb.RangeRequest_ASCEND
		DESC    = pb.RangeRequest_DESCEND
	)
	for _, tc := range []struct {
		name  string
		req   *pb.RangeRequest
		keys  []string
		more  bool
		count int64
	}{
		{"all", &pb.RangeRequest{}, []string{"a", "b", "c", "d"}, false, 4},
		{"limit 2", &pb.RangeRequest{Limit: 2}, []string{"a", "b"}, true, 4},
		{"limit 4", &pb.RangeRequest{Limit: 4}, []string{"a", "b", "c", "d"}, false, 4},
		{"limit 5", &pb.RangeRequest{Limit: 5}, []string{"a", "b", "c", "d"}, false, 4},
		{"negative limit", &pb.RangeRequest{Limit: -1}, []string{"a", "b", "c", "d"}, false, 4},
		{"key asc", &pb.RangeRequest{SortTarget: KEY, SortOrder: ASC}, []string{"a", "b", "c", "d"}, false, 4},
		{"key desc", &pb.RangeRequest{SortTarget: KEY, SortOrder: DESC}, []string{"d", "c", "b", "a"}, false, 4},
		{"key desc limit", &pb.RangeRequest{SortTarget: KEY, SortOrder: DESC, Limit: 1}, []string{"d"}, true, 4},
		{"version asc", &pb.RangeRequest{SortTarget: VERSION, SortOrder: ASC}, []string{"c", "a", "b", "d"}, false, 4},
		{"version desc", &pb.RangeRequest{SortTarget: VERSION, SortOrder: DESC}, []string{"d", "b", "a", "c"}, false, 4},
		{"version none means asc", &pb.RangeRequest{SortTarget: VERSION}, []string{"c", "a", "b", "d"}, false, 4},
		{"create asc", &pb.RangeRequest{SortTarget: CREATE, SortOrder: ASC}, []string{"a", "b", "c", "d"}, false, 4},
		{"create desc", &pb.RangeRequest{SortTarget: CREATE, SortOrder: DESC}, []string{"d", "c", "b", "a"}, false, 4},
		{"mod asc", &pb.RangeRequest{SortTarget: MOD, SortOrder: ASC}, []string{"c", "a", "b", "d"}, false, 4},
		{"mod desc", &pb.RangeRequest{SortTarget: MOD, SortOrder: DESC}, []string{"d", "b", "a", "c"}, false, 4},
		{"mod desc limit 2", &pb.RangeRequest{SortTarget: MOD, SortOrder: DESC, Limit: 2}, []string{"d", "b"}, true, 4},
		// etcd quirk: order NONE keeps the limit+1 fetch, then sorts
		// that prefix ascending by the target.
		{"mod none limit 2", &pb.RangeRequest{SortTarget: MOD, Limit: 2}, []string{"c", "a"}, true, 4},
		{"value asc", &pb.RangeRequest{SortTarget: VALUE, SortOrder: ASC}, []string{"d", "c", "a", "b"}, false, 4},
		{"value desc", &pb.RangeRequest{SortTarget: VALUE, SortOrder: DESC}, []string{"b", "a", "c", "d"}, false, 4},
		{"min mod", &pb.RangeRequest{MinModRevision: 400}, []string{"a", "b", "d"}, false, 4},
		{"max mod", &pb.RangeRequest{MaxModRevision: 700}, []string{"a", "b", "c"}, false, 4},
		{"create window", &pb.RangeRequest{MinCreateRevision: 200, MaxCreateRevision: 300}, []string{"b", "c"}, false, 4},
		{"min mod limit", &pb.RangeRequest{MinModRevision: 400, Limit: 2}, []string{"a", "b"}, true, 4},
		{"filter sort limit", &pb.RangeRequest{MaxCreateRevision: 300, SortTarget: VALUE, SortOrder: DESC, Limit: 2}, []string{"b", "a"}, true, 4},
		{"filter to nothing", &pb.RangeRequest{MinCreateRevision: 5000}, []string{}, false, 4},
		{"at old revision", &pb.RangeRequest{Revision: 450}, []string{"a", "b", "c"}, false, 3},
		{"old revision limit", &pb.RangeRequest{Revision: 450, Limit: 1}, []string{"a"}, true, 3},
		{"count only", &pb.RangeRequest{CountOnly: true}, []string{}, false, 4},
		{"count only limit", &pb.RangeRequest{CountOnly: true, Limit: 1}, []string{}, false, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := s.mustRange(all(tc.req))
			assert.Equal(t, tc.keys, keysOf(resp.Kvs))
			assert.Equal(t, tc.more, resp.More, "more")
			assert.Equal(t, tc.count, resp.Count, "count")
			assert.Equal(t, int64(1000), resp.Header.Revision)
		})
	}
}

func TestRangeKeysOnlyAndLease(t *testing.T) {
	s := newTestStore(t)
	s.putReq(100, &pb.PutRequest{Key: []byte("a"), Value: []byte("va"), Lease: 7})
	s.put(200, "b", "vb")

	full := s.mustRange(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("c")})
	require.Len(t, full.Kvs, 2)
	assert.Equal(t, int64(7), full.Kvs[0].Lease)
	assert.Equal(t, []byte("va"), full.Kvs[0].Value)

	ko := s.mustRange(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("c"), KeysOnly: true})
	require.Len(t, ko.Kvs, 2)
	// etcd's index-only keys_only path: no value, no lease.
	requireKV(t, &mvccpb.KeyValue{Key: []byte("a"), CreateRevision: 100, ModRevision: 100, Version: 1}, ko.Kvs[0])
	assert.Equal(t, int64(2), ko.Count)

	// Sorting by value reads full KVs, then drops values: lease stays.
	kv := s.mustRange(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("c"), KeysOnly: true,
		SortTarget: pb.RangeRequest_VALUE, SortOrder: pb.RangeRequest_DESCEND})
	assert.Equal(t, []string{"b", "a"}, keysOf(kv.Kvs))
	assert.Nil(t, kv.Kvs[1].Value)
	assert.Equal(t, int64(7), kv.Kvs[1].Lease)
}

func TestRangeKeyForms(t *testing.T) {
	s := newTestStore(t)
	for i, k := range []string{"\x01", "a", "ab", "a\x00", "b", "c"} {
		s.put(int64(100*(i+1)), k, "v")
	}
	for _, tc := range []struct {
		name, key, end string
		want           []string
	}{
		{"single", "ab", "", []string{"ab"}},
		{"single missing", "zz", "", []string{}},
		{"prefix a", "a", "b", []string{"a", "a\x00", "ab"}},
		{"from key", "ab", "\x00", []string{"ab", "b", "c"}},
		{"all keys", "\x00", "\x00", []string{"\x01", "a", "a\x00", "ab", "b", "c"}},
		{"end before key", "c", "a", []string{}},
		{"end equals key", "b", "b", []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := s.mustRange(&pb.RangeRequest{Key: []byte(tc.key), RangeEnd: bytesOrNil(tc.end)})
			assert.Equal(t, tc.want, keysOf(resp.Kvs))
			assert.Equal(t, int64(len(tc.want)), resp.Count)
		})
	}
}

func TestRangeRevisionChecks(t *testing.T) {
	s := newTestStore(t)
	s.put(100, "a", "1")
	s.put(200, "a", "2")
	s.put(300, "a", "3")
	s.compact(200)

	_, err := s.rng(&pb.RangeRequest{Key: []byte("a"), Revision: 301})
	assert.ErrorIs(t, err, rpctypes.ErrGRPCFutureRev)
	_, err = s.rng(&pb.RangeRequest{Key: []byte("a"), Revision: 199})
	assert.ErrorIs(t, err, rpctypes.ErrGRPCCompacted)

	for _, tc := range []struct {
		rev     int64
		wantVal string
	}{{200, "2"}, {250, "2"}, {300, "3"}, {0, "3"}, {-1, "3"}} {
		resp := s.mustRange(&pb.RangeRequest{Key: []byte("a"), Revision: tc.rev})
		require.Len(t, resp.Kvs, 1, "rev %d", tc.rev)
		assert.Equal(t, tc.wantVal, string(resp.Kvs[0].Value))
		// etcd reports the current revision even for historical reads.
		assert.Equal(t, int64(300), resp.Header.Revision)
	}
}

func TestRangeClippedToSpan(t *testing.T) {
	s := newTestStore(t)
	for i, k := range []string{"a", "b", "c", "d"} {
		s.put(int64(100*(i+1)), k, "v")
	}
	span := Span{Start: UserSpanKey([]byte("b")), End: UserSpanKey([]byte("d"))}
	resp, err := ExecRange(s.db, UserKeys, span, &pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00")}, 400, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{"b", "c"}, keysOf(resp.Kvs))
	assert.Equal(t, int64(2), resp.Count)

	resp, err = ExecRange(s.db, UserKeys, span, &pb.RangeRequest{Key: []byte("a")}, 400, 0)
	require.NoError(t, err)
	assert.Empty(t, resp.Kvs)
	assert.Equal(t, int64(0), resp.Count)

	// The meta keyspace is separate from the user keyspace.
	resp, err = ExecRange(s.db, MetaKeys, Span{Start: MetaSpanStart, End: MetaSpanEnd},
		&pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00")}, 400, 0)
	require.NoError(t, err)
	assert.Equal(t, int64(0), resp.Count)
}

func TestMetaKeyspace(t *testing.T) {
	s := newTestStore(t)
	s.ks, s.span = MetaKeys, Span{Start: MetaSpanStart, End: MetaSpanEnd}
	s.put(100, "range/1", "desc")
	resp := s.mustRange(&pb.RangeRequest{Key: []byte("range/"), RangeEnd: []byte("\x00")})
	assert.Equal(t, []string{"range/1"}, keysOf(resp.Kvs))
	kv, err := MVCCGet(s.db, MetaSpanKey([]byte("range/1")), 0)
	require.NoError(t, err)
	assert.Equal(t, "range/1", string(kv.Key))
	// Nothing leaked into the user keyspace.
	n, err := MVCCScan(s.db, UserSpanStart, UserSpanEnd, 0, 0, nil)
	require.NoError(t, err)
	assert.Equal(t, int64(0), n)
	s.checkStats()
}

func TestMVCCScan(t *testing.T) {
	s := newTestStore(t)
	for i, k := range []string{"a", "b", "c", "d", "e"} {
		s.put(int64(100*(i+1)), k, "v"+k)
	}
	s.del(600, "c", "")
	var got []string
	n, err := MVCCScan(s.db, UserSpanStart, UserSpanEnd, 0, 2, func(kv *mvccpb.KeyValue) bool {
		got = append(got, string(kv.Key)+"="+string(kv.Value))
		return true
	})
	require.NoError(t, err)
	assert.Equal(t, []string{"a=va", "b=vb"}, got)
	assert.Equal(t, int64(4), n)

	n, err = MVCCScan(s.db, UserSpanStart, UserSpanEnd, 550, 0, nil)
	require.NoError(t, err)
	assert.Equal(t, int64(5), n)

	got = nil
	n, err = MVCCScan(s.db, UserSpanKey([]byte("b")), nil, 0, 0, func(kv *mvccpb.KeyValue) bool {
		got = append(got, string(kv.Key))
		return len(got) < 2
	})
	require.NoError(t, err)
	assert.Equal(t, []string{"b", "d"}, got)
	assert.Equal(t, int64(2), n)
}

func TestPutIgnoreValueAndLease(t *testing.T) {
	s := newTestStore(t)
	for _, req := range []*pb.PutRequest{
		{Key: []byte("a"), IgnoreValue: true},
		{Key: []byte("a"), IgnoreLease: true},
		{Key: []byte("a"), IgnoreValue: true, IgnoreLease: true},
	} {
		_, err := s.apply(50, func(w *WriteBatch) error { _, err := ApplyPut(w, req); return err })
		assert.ErrorIs(t, err, rpctypes.ErrGRPCKeyNotFound)
	}

	s.putReq(100, &pb.PutRequest{Key: []byte("a"), Value: []byte("v1"), Lease: 5})
	s.putReq(200, &pb.PutRequest{Key: []byte("a"), IgnoreValue: true, Lease: 6})
	got := s.get("a", 0)
	assert.Equal(t, "v1", string(got.Value))
	assert.Equal(t, int64(6), got.Lease)

	s.putReq(300, &pb.PutRequest{Key: []byte("a"), Value: []byte("v2"), IgnoreLease: true})
	got = s.get("a", 0)
	assert.Equal(t, "v2", string(got.Value))
	assert.Equal(t, int64(6), got.Lease)

	resp := s.putReq(400, &pb.PutRequest{Key: []byte("a"), IgnoreValue: true, IgnoreLease: true, PrevKv: true})
	assert.Equal(t, "v2", string(resp.PrevKv.Value))
	got = s.get("a", 0)
	requireKV(t, &mvccpb.KeyValue{Key: []byte("a"), Value: []byte("v2"), Lease: 6, CreateRevision: 100, ModRevision: 400, Version: 4}, got)

	s.put(500, "a", "v3")
	assert.Equal(t, int64(0), s.get("a", 0).Lease)

	// After a delete the key is missing again.
	s.del(600, "a", "")
	_, err := s.apply(700, func(w *WriteBatch) error {
		_, err := ApplyPut(w, &pb.PutRequest{Key: []byte("a"), IgnoreValue: true})
		return err
	})
	assert.ErrorIs(t, err, rpctypes.ErrGRPCKeyNotFound)
	s.checkStats()
}

func TestDeleteRangeForms(t *testing.T) {
	s := newTestStore(t)
	for i, k := range []string{"a", "a1", "a2", "b", "c"} {
		s.put(int64(100*(i+1)), k, "v"+k)
	}
	d := s.del(600, "a", "b")
	assert.Equal(t, int64(3), d.Deleted)
	assert.Equal(t, []string{"a", "a1", "a2"}, keysOf(d.PrevKvs))
	assert.Equal(t, "va1", string(d.PrevKvs[1].Value))

	// Without prev_kv nothing is returned but keys are deleted.
	var resp *pb.DeleteRangeResponse
	_, err := s.apply(700, func(w *WriteBatch) (err error) {
		resp, err = ApplyDeleteRange(w, &pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte("\x00")})
		return err
	})
	require.NoError(t, err)
	assert.Equal(t, int64(2), resp.Deleted)
	assert.Nil(t, resp.PrevKvs)
	assert.Equal(t, int64(0), s.mustRange(&pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00")}).Count)
	assert.Equal(t, int64(2), s.mustRange(&pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00"), Revision: 650}).Count)
	assert.Equal(t, int64(5), s.mustRange(&pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00"), Revision: 550}).Count)
	s.checkStats()
	assert.Equal(t, Stats{}, Stats{LiveKeys: s.stats.LiveKeys, LiveBytes: s.stats.LiveBytes})
}

func TestEventsAndSubRevisions(t *testing.T) {
	s := newTestStore(t)
	s.put(100, "a", "1")
	s.put(100+1, "b", "1")
	w, err := s.apply(200, func(w *WriteBatch) error {
		_, err := ApplyTxn(w, &pb.TxnRequest{Success: []*pb.RequestOp{
			opPut("c", "1"), opDel("a", "b"), opRange("a", "z"), opPut("b", "2"),
		}})
		return err
	})
	require.NoError(t, err)
	require.Len(t, w.Events, 3)
	want := []*mvccpb.Event{
		{Type: mvccpb.Event_PUT, Kv: kv("c", "1", 200, 200, 1)},
		{Type: mvccpb.Event_DELETE, Kv: &mvccpb.KeyValue{Key: []byte("a"), ModRevision: 200}, PrevKv: kv("a", "1", 100, 100, 1)},
		{Type: mvccpb.Event_PUT, Kv: kv("b", "2", 101, 200, 2), PrevKv: kv("b", "1", 101, 101, 1)},
	}
	for i := range want {
		assert.True(t, proto.Equal(want[i], w.Events[i]), "event %d: want %v got %v", i, want[i], w.Events[i])
	}
	// Stored sub-revisions follow operation order.
	for i, k := range []string{"c", "a", "b"} {
		raw, closer, err := s.db.Get(EncodeMVCCKey(nil, UserSpanKey([]byte(k)), 200))
		require.NoError(t, err)
		v, err := DecodeVersion(UserSpanKey([]byte(k)), 200, raw)
		closer.Close()
		require.NoError(t, err)
		assert.Equal(t, int64(i), v.Sub, k)
	}
	s.checkStats()
}

func TestKeyOutsideSpan(t *testing.T) {
	s := newTestStore(t)
	s.put(100, "m", "1")
	s.span = Span{Start: UserSpanKey([]byte("b")), End: UserSpanKey([]byte("n"))}
	for name, fn := range map[string]func(w *WriteBatch) error{
		"put before": func(w *WriteBatch) error { _, err := ApplyPut(w, &pb.PutRequest{Key: []byte("a")}); return err },
		"put at end": func(w *WriteBatch) error { _, err := ApplyPut(w, &pb.PutRequest{Key: []byte("n")}); return err },
		"delete crossing end": func(w *WriteBatch) error {
			_, err := ApplyDeleteRange(w, &pb.DeleteRangeRequest{Key: []byte("m"), RangeEnd: []byte("z")})
			return err
		},
		"delete from key": func(w *WriteBatch) error {
			_, err := ApplyDeleteRange(w, &pb.DeleteRangeRequest{Key: []byte("m"), RangeEnd: []byte("\x00")})
			return err
		},
		"txn compare": func(w *WriteBatch) error {
			_, err := ApplyTxn(w, &pb.TxnRequest{Compare: []*pb.Compare{{Key: []byte("z"), Target: pb.Compare_VERSION}}})
			return err
		},
		"txn put": func(w *WriteBatch) error {
			_, err := ApplyTxn(w, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("c", "1"), opPut("z", "1")}})
			return err
		},
		"txn range": func(w *WriteBatch) error {
			_, err := ApplyTxn(w, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("c", "1"), opRange("a", "c")}})
			return err
		},
		"nested txn delete": func(w *WriteBatch) error {
			_, err := ApplyTxn(w, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("c", "1"), opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("x", "")}})}})
			return err
		},
	} {
		w, err := s.apply(200, fn)
		assert.ErrorIs(t, err, ErrKeyOutsideSpan, name)
		assert.Equal(t, uint32(0), w.Batch.Count(), "%s: nothing written", name)
	}
	// Inside the span works, and the failure branch's keys are not checked.
	_, err := s.txn(300, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("c", "1"), opDel("b", "n")}, Failure: []*pb.RequestOp{opPut("z", "")}})
	require.NoError(t, err)
}

func TestLargeRevisions(t *testing.T) {
	s := newTestStore(t)
	base := int64(1_700_000_000_000) << 20 // an HLC revision, ~2^60
	r := func(i int64) int64 { return base + i<<20 + i }
	s.put(r(1), "a", "1")
	s.put(r(2), "a", "2")
	s.del(r(3), "a", "")
	s.put(r(4), "a", "3")
	s.put(r(4)+1, "b", "1")
	requireKV(t, kv("a", "2", r(1), r(2), 2), s.get("a", r(3)-1))
	assert.Nil(t, s.get("a", r(3)))
	requireKV(t, kv("a", "3", r(4), r(4), 1), s.get("a", 0))

	resp := s.mustRange(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("c"), SortTarget: pb.RangeRequest_MOD, SortOrder: pb.RangeRequest_DESCEND})
	assert.Equal(t, []string{"b", "a"}, keysOf(resp.Kvs))

	tr, err := s.txn(r(5), &pb.TxnRequest{
		Compare: []*pb.Compare{{Key: []byte("a"), Target: pb.Compare_MOD, Result: pb.Compare_EQUAL, TargetUnion: &pb.Compare_ModRevision{ModRevision: r(4)}}},
		Success: []*pb.RequestOp{opPut("a", "4")},
	})
	require.NoError(t, err)
	assert.True(t, tr.Succeeded)
	assert.Equal(t, r(5), tr.Header.Revision)

	var evs []*mvccpb.Event
	require.NoError(t, MVCCHistory(s.db, s.span, r(2), r(5), func(ev *mvccpb.Event) bool { evs = append(evs, ev); return true }))
	var revs []int64
	for _, ev := range evs {
		revs = append(revs, ev.Kv.ModRevision)
	}
	assert.Equal(t, []int64{r(2), r(3), r(4), r(4) + 1, r(5)}, revs)

	s.compact(r(3))
	requireKV(t, kv("a", "4", r(4), r(5), 2), s.get("a", 0))
	assert.Nil(t, s.get("a", r(3)))
	s.checkStats()

	// Revisions at the top of the int64 range.
	top := int64(1<<63 - 2)
	s.put(top, "z", "top")
	requireKV(t, kv("z", "top", top, top, 1), s.get("z", top))
	requireKV(t, kv("z", "top", top, top, 1), s.get("z", 0))
	s.checkStats()
}
