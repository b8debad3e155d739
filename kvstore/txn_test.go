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

func cmpVersion(key, end string, res pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: []byte(key), RangeEnd: bytesOrNil(end), Target: pb.Compare_VERSION, Result: res, TargetUnion: &pb.Compare_Version{Version: v}}
}

func cmpCreate(key, end string, res pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: []byte(key), RangeEnd: bytesOrNil(end), Target: pb.Compare_CREATE, Result: res, TargetUnion: &pb.Compare_CreateRevision{CreateRevision: v}}
}

func cmpMod(key, end string, res pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: []byte(key), RangeEnd: bytesOrNil(end), Target: pb.Compare_MOD, Result: res, TargetUnion: &pb.Compare_ModRevision{ModRevision: v}}
}

func cmpValue(key, end string, res pb.Compare_CompareResult, v string) *pb.Compare {
	return &pb.Compare{Key: []byte(key), RangeEnd: bytesOrNil(end), Target: pb.Compare_VALUE, Result: res, TargetUnion: &pb.Compare_Value{Value: []byte(v)}}
}

func cmpLease(key, end string, res pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: []byte(key), RangeEnd: bytesOrNil(end), Target: pb.Compare_LEASE, Result: res, TargetUnion: &pb.Compare_Lease{Lease: v}}
}

// TestTxnCompares checks etcd's compare semantics, reading the engine and,
// as the apply path does, through the NewestCache and KeyPresence set
// (one-key compares then take the key's newest version from them).
func TestTxnCompares(t *testing.T) {
	t.Run("engine", func(t *testing.T) { txnCompares(t, false) })
	t.Run("apply-path", func(t *testing.T) { txnCompares(t, true) })
}

func txnCompares(t *testing.T, applyPath bool) {
	const (
		EQ  = pb.Compare_EQUAL
		NE  = pb.Compare_NOT_EQUAL
		GT  = pb.Compare_GREATER
		LT  = pb.Compare_LESS
		inf = "\x00"
	)
	s := newTestStore(t)
	if applyPath {
		var err error
		s.presence, err = LoadKeyPresence(s.db)
		require.NoError(t, err)
		s.newest = NewNewestCache(1 << 20)
	}
	// a: value "1", version 2, create 100, mod 200, lease 0
	// b: value "2", version 1, create 300, mod 300, lease 7
	// c: deleted at 400
	s.put(100, "a", "0")
	s.put(200, "a", "1")
	s.putReq(300, &pb.PutRequest{Key: []byte("b"), Value: []byte("2"), Lease: 7})
	s.put(350, "c", "x")
	s.del(400, "c", "")
	if applyPath {
		s.newest.Clear() // first compares of a key read the engine, later ones the cache
	}

	rev := int64(1000)
	for _, tc := range []struct {
		name string
		cmps []*pb.Compare
		want bool
	}{
		{"no compares", nil, true},
		{"version eq", []*pb.Compare{cmpVersion("a", "", EQ, 2)}, true},
		{"version gt", []*pb.Compare{cmpVersion("a", "", GT, 1)}, true},
		{"version lt false", []*pb.Compare{cmpVersion("a", "", LT, 2)}, false},
		{"version ne false", []*pb.Compare{cmpVersion("a", "", NE, 2)}, false},
		{"create eq", []*pb.Compare{cmpCreate("a", "", EQ, 100)}, true},
		{"create gt false", []*pb.Compare{cmpCreate("a", "", GT, 100)}, false},
		{"mod eq", []*pb.Compare{cmpMod("a", "", EQ, 200)}, true},
		{"mod lt", []*pb.Compare{cmpMod("a", "", LT, 201)}, true},
		{"value eq", []*pb.Compare{cmpValue("a", "", EQ, "1")}, true},
		{"value gt", []*pb.Compare{cmpValue("a", "", GT, "0")}, true},
		{"value lt false", []*pb.Compare{cmpValue("a", "", LT, "1")}, false},
		{"value ne false", []*pb.Compare{cmpValue("a", "", NE, "1")}, false},
		{"lease eq", []*pb.Compare{cmpLease("b", "", EQ, 7)}, true},
		{"lease none", []*pb.Compare{cmpLease("a", "", EQ, 0)}, true},
		{"lease ne", []*pb.Compare{cmpLease("b", "", NE, 0)}, true},
		{"missing version 0", []*pb.Compare{cmpVersion("z", "", EQ, 0)}, true},
		{"missing create 0", []*pb.Compare{cmpCreate("z", "", EQ, 0)}, true},
		{"missing mod lt", []*pb.Compare{cmpMod("z", "", LT, 1)}, true},
		{"missing lease 0", []*pb.Compare{cmpLease("z", "", EQ, 0)}, true},
		{"missing value eq empty fails", []*pb.Compare{cmpValue("z", "", EQ, "")}, false},
		{"missing value ne fails", []*pb.Compare{cmpValue("z", "", NE, "x")}, false},
		{"deleted key version 0", []*pb.Compare{cmpVersion("c", "", EQ, 0)}, true},
		{"deleted key value fails", []*pb.Compare{cmpValue("c", "", NE, "y")}, false},
		{"range version gt all", []*pb.Compare{cmpVersion("a", "c", GT, 0)}, true},
		{"range version eq not all", []*pb.Compare{cmpVersion("a", "c", EQ, 2)}, false},
		{"range mod lt all", []*pb.Compare{cmpMod("a", "z", LT, 301)}, true},
		{"range mod lt not all", []*pb.Compare{cmpMod("a", "z", LT, 250)}, false},
		{"range value lt", []*pb.Compare{cmpValue("a", "z", LT, "3")}, true},
		{"range lease eq 0 not all", []*pb.Compare{cmpLease("a", "z", EQ, 0)}, false},
		{"range skips deleted", []*pb.Compare{cmpCreate("a", inf, LT, 301)}, true},
		{"empty range zero kv", []*pb.Compare{cmpVersion("x", "y", EQ, 0)}, true},
		{"empty range value fails", []*pb.Compare{cmpValue("x", "y", EQ, "")}, false},
		{"from key", []*pb.Compare{cmpCreate("a", inf, GT, 0)}, true},
		{"all must hold", []*pb.Compare{cmpVersion("a", "", EQ, 2), cmpVersion("b", "", EQ, 2)}, false},
		{"all hold", []*pb.Compare{cmpVersion("a", "", EQ, 2), cmpVersion("b", "", EQ, 1)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rev++
			resp, err := s.txn(rev, &pb.TxnRequest{Compare: tc.cmps, Success: []*pb.RequestOp{opRange("a", "")}})
			require.NoError(t, err)
			assert.Equal(t, tc.want, resp.Succeeded)
			if tc.want {
				require.Len(t, resp.Responses, 1)
			} else {
				assert.Empty(t, resp.Responses)
			}
		})
	}
}

func TestTxnNestedAndResponseShapes(t *testing.T) {
	s := newTestStore(t)
	s.put(100, "a", "1")

	resp, err := s.txn(200, &pb.TxnRequest{
		Compare: []*pb.Compare{cmpVersion("a", "", pb.Compare_EQUAL, 1)},
		Success: []*pb.RequestOp{
			opPut("b", "x"),
			// Nested compares see the state before the txn: b is absent.
			opTxn(&pb.TxnRequest{
				Compare: []*pb.Compare{cmpVersion("b", "", pb.Compare_EQUAL, 0)},
				Success: []*pb.RequestOp{opPut("c", "y"), opRange("b", "")},
				Failure: []*pb.RequestOp{opPut("d", "z")},
			}),
			opTxn(&pb.TxnRequest{
				Compare: []*pb.Compare{cmpVersion("a", "", pb.Compare_EQUAL, 5)},
				Failure: []*pb.RequestOp{opRange("a", "\x00")},
			}),
		},
		Failure: []*pb.RequestOp{opPut("never", "1")},
	})
	require.NoError(t, err)

	rangeB := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: 200}, Kvs: []*mvccpb.KeyValue{kv("b", "x", 200, 200, 1)}, Count: 1}
	rangeAll := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: 200}, Count: 3, Kvs: []*mvccpb.KeyValue{
		kv("a", "1", 100, 100, 1), kv("b", "x", 200, 200, 1), kv("c", "y", 200, 200, 1)}}
	want := &pb.TxnResponse{
		Header:    &pb.ResponseHeader{Revision: 200},
		Succeeded: true,
		Responses: []*pb.ResponseOp{
			{Response: &pb.ResponseOp_ResponsePut{ResponsePut: &pb.PutResponse{Header: &pb.ResponseHeader{Revision: 200}}}},
			{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: &pb.TxnResponse{
				Header:    &pb.ResponseHeader{},
				Succeeded: true,
				Responses: []*pb.ResponseOp{
					{Response: &pb.ResponseOp_ResponsePut{ResponsePut: &pb.PutResponse{Header: &pb.ResponseHeader{Revision: 200}}}},
					{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rangeB}},
				},
			}}},
			{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: &pb.TxnResponse{
				Header:    &pb.ResponseHeader{},
				Succeeded: false,
				Responses: []*pb.ResponseOp{{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rangeAll}}},
			}}},
		},
	}
	assert.True(t, proto.Equal(want, resp), "want %v\ngot  %v", want, resp)
	assert.Nil(t, s.get("d", 0))
	assert.Nil(t, s.get("never", 0))
	s.checkStats()

	// Failure branch with a delete and a read of the deleted key.
	resp, err = s.txn(300, &pb.TxnRequest{
		Compare: []*pb.Compare{cmpValue("a", "", pb.Compare_EQUAL, "nope")},
		Success: []*pb.RequestOp{opPut("x", "1")},
		Failure: []*pb.RequestOp{opDel("a", "c"), opRange("a", "c"), opPut("a", "again")},
	})
	require.NoError(t, err)
	assert.False(t, resp.Succeeded)
	dr := resp.Responses[0].GetResponseDeleteRange()
	assert.Equal(t, int64(2), dr.Deleted)
	assert.Equal(t, []string{"a", "b"}, keysOf(dr.PrevKvs))
	assert.Equal(t, int64(0), resp.Responses[1].GetResponseRange().Count)
	requireKV(t, kv("a", "again", 300, 300, 1), s.get("a", 0))
	s.checkStats()
}

func TestTxnRangeOptionsAndRevisions(t *testing.T) {
	s := newTestStore(t)
	s.put(100, "a", "1")
	s.put(200, "a", "2")
	s.put(300, "b", "1")
	s.compact(200)

	rangeOp := func(r *pb.RangeRequest) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
	}
	resp, err := s.txn(400, &pb.TxnRequest{Success: []*pb.RequestOp{
		opPut("c", "1"),
		rangeOp(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), Revision: 200}),
		rangeOp(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), Limit: 1, SortTarget: pb.RangeRequest_MOD, SortOrder: pb.RangeRequest_DESCEND}),
		rangeOp(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), CountOnly: true}),
	}})
	require.NoError(t, err)
	r1 := resp.Responses[1].GetResponseRange()
	assert.Equal(t, []string{"a"}, keysOf(r1.Kvs))
	assert.Equal(t, "2", string(r1.Kvs[0].Value))
	r2 := resp.Responses[2].GetResponseRange()
	assert.Equal(t, []string{"c"}, keysOf(r2.Kvs))
	assert.True(t, r2.More)
	assert.Equal(t, int64(3), r2.Count)
	assert.Equal(t, int64(3), resp.Responses[3].GetResponseRange().Count)

	for _, tc := range []struct {
		rev int64
		err error
	}{{501, rpctypes.ErrGRPCFutureRev}, {199, rpctypes.ErrGRPCCompacted}, {-5, rpctypes.ErrGRPCCompacted}} {
		w, err := s.apply(500, func(w *WriteBatch) error {
			_, err := ApplyTxn(w, &pb.TxnRequest{Success: []*pb.RequestOp{
				opPut("d", "1"), rangeOp(&pb.RangeRequest{Key: []byte("a"), Revision: tc.rev}),
			}})
			return err
		})
		assert.ErrorIs(t, err, tc.err, "rev %d", tc.rev)
		assert.Equal(t, uint32(0), w.Batch.Count(), "checked before writing")
	}
	// A nested txn's put with ignore_value on a missing key fails before
	// any write.
	w, err := s.apply(500, func(w *WriteBatch) error {
		_, err := ApplyTxn(w, &pb.TxnRequest{Success: []*pb.RequestOp{
			opPut("d", "1"),
			opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("zz"), IgnoreValue: true}}}}}),
		}})
		return err
	})
	assert.ErrorIs(t, err, rpctypes.ErrGRPCKeyNotFound)
	assert.Equal(t, uint32(0), w.Batch.Count())
	s.checkStats()
}

func TestTxnPutPrevKvAndIgnoreInTxn(t *testing.T) {
	s := newTestStore(t)
	s.putReq(100, &pb.PutRequest{Key: []byte("a"), Value: []byte("1"), Lease: 3})
	put := func(r *pb.PutRequest) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: r}}
	}
	resp, err := s.txn(200, &pb.TxnRequest{Success: []*pb.RequestOp{
		put(&pb.PutRequest{Key: []byte("a"), IgnoreValue: true, IgnoreLease: true, PrevKv: true}),
		put(&pb.PutRequest{Key: []byte("b"), Value: []byte("2"), PrevKv: true}),
	}})
	require.NoError(t, err)
	pa := resp.Responses[0].GetResponsePut()
	requireKV(t, &mvccpb.KeyValue{Key: []byte("a"), Value: []byte("1"), Lease: 3, CreateRevision: 100, ModRevision: 100, Version: 1}, pa.PrevKv)
	assert.Nil(t, resp.Responses[1].GetResponsePut().PrevKv)
	requireKV(t, &mvccpb.KeyValue{Key: []byte("a"), Value: []byte("1"), Lease: 3, CreateRevision: 100, ModRevision: 200, Version: 2}, s.get("a", 0))
}

// Requests ValidateTxn rejects must still keep the stats right: a key
// written twice at one revision overwrites its own version.
func TestTxnSameKeyTwiceStats(t *testing.T) {
	s := newTestStore(t)
	s.put(100, "a", "1")
	_, err := s.txn(200, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "2"), opPut("a", "3"), opPut("b", "1"), opDel("b", "")}})
	require.NoError(t, err)
	requireKV(t, kv("a", "3", 100, 200, 3), s.get("a", 0))
	assert.Nil(t, s.get("b", 0))
	s.checkStats()
	_, err = s.txn(300, &pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", ""), opPut("a", "4")}})
	require.NoError(t, err)
	requireKV(t, kv("a", "4", 300, 300, 1), s.get("a", 0))
	s.checkStats()
	_, err = s.txn(400, &pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", "z"), opDel("a", "\x00")}})
	require.NoError(t, err)
	s.checkStats()
	assert.Equal(t, int64(0), s.stats.LiveKeys)
}
