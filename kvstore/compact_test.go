package kvstore

import (
	"fmt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// storedVersions lists every stored version in the user keyspace as
// "key@rev" (with "!" for tombstones), in engine order.
func storedVersions(t *testing.T, db *pebble.DB) []string {
	t.Helper()
	it, err := db.NewIter(spanIterOptions(UserSpanStart, UserSpanEnd))
	require.NoError(t, err)
	defer it.Close()
	out := []string{}
	for ok := it.First(); ok; ok = it.Next() {
		k, rev, err := DecodeMVCCKey(it.Key())
		require.NoError(t, err)
		v, err := DecodeVersion(k, rev, it.Value())
		require.NoError(t, err)
		mark := ""
		if v.Tombstone {
			mark = "!"
		}
		out = append(out, fmt.Sprintf("%s@%d%s", k[1:], rev, mark))
	}
	return out
}

func allAt(s *testStore, rev int64) *pb.RangeResponse {
	return s.mustRange(&pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00"), Revision: rev})
}

func TestCompactKeepsExactlyTheRightVersions(t *testing.T) {
	s := newTestStore(t)
	s.put(100, "a", "1")
	s.put(200, "a", "2")
	s.put(300, "a", "3")
	s.put(100+1, "b", "1")
	s.del(150, "b", "")
	s.put(100+2, "c", "1")
	s.del(250, "c", "") // tombstone exactly at the compaction revision
	s.put(100+3, "d", "1")
	s.del(200+1, "d", "")
	s.put(300+1, "d", "2")
	s.put(260, "e", "1")
	s.rev = 301
	require.Equal(t, []string{
		"a@300", "a@200", "a@100", "b@150!", "b@101", "c@250!", "c@102", "d@301", "d@201!", "d@103", "e@260",
	}, storedVersions(t, s.db))

	before := map[int64]*pb.RangeResponse{}
	for _, rev := range []int64{250, 255, 260, 300, 301} {
		before[rev] = allAt(s, rev)
	}
	var histBefore []*mvccpb.Event
	require.NoError(t, MVCCHistory(s.db, s.span, 250, 301, func(ev *mvccpb.Event) bool { histBefore = append(histBefore, ev); return true }))

	s.compact(250)
	assert.Equal(t, []string{"a@300", "a@200", "c@250!", "d@301", "e@260"}, storedVersions(t, s.db))
	s.checkStats()
	for rev, want := range before {
		assert.True(t, proto.Equal(want, allAt(s, rev)), "read at %d changed", rev)
	}
	var histAfter []*mvccpb.Event
	require.NoError(t, MVCCHistory(s.db, s.span, 250, 301, func(ev *mvccpb.Event) bool { histAfter = append(histAfter, ev); return true }))
	require.Len(t, histAfter, len(histBefore))
	for i := range histBefore {
		// The c tombstone at 250 lost its PrevKv (c@102 is gone), like a
		// compacted etcd; everything else is unchanged.
		if histBefore[i].Type == mvccpb.Event_DELETE && string(histBefore[i].Kv.Key) == "c" {
			assert.Nil(t, histAfter[i].PrevKv)
			histBefore[i].PrevKv = nil
		}
		assert.True(t, proto.Equal(histBefore[i], histAfter[i]), "event %d", i)
	}

	// Compacting again is idempotent.
	s.compact(250)
	assert.Equal(t, []string{"a@300", "a@200", "c@250!", "d@301", "e@260"}, storedVersions(t, s.db))

	s.compact(400)
	assert.Equal(t, []string{"a@300", "d@301", "e@260"}, storedVersions(t, s.db))
	s.checkStats()
	assert.Equal(t, int64(3), s.stats.LiveKeys)
	_, err := s.rng(&pb.RangeRequest{Key: []byte("a"), Revision: 399})
	assert.Error(t, err)
}

func TestCompactChunksAndConcurrentWrites(t *testing.T) {
	s := newTestStore(t)
	// One batch holding many commands: 2500 versions of "big", 700 of
	// each of 4 small keys.
	b := s.db.NewIndexedBatch()
	rev := int64(0)
	for i := 0; i < 2500; i++ {
		rev += 100
		w := &WriteBatch{Batch: b, Rev: rev, Keyspace: UserKeys, Span: s.span}
		_, err := ApplyPut(w, &pb.PutRequest{Key: []byte("big"), Value: []byte(fmt.Sprint(i))})
		require.NoError(t, err)
		for k := 0; k < 4 && i < 700; k++ {
			_, err := ApplyPut(w, &pb.PutRequest{Key: []byte(fmt.Sprintf("k%d", k)), Value: []byte("v")})
			require.NoError(t, err)
		}
		s.stats.Add(w.Delta)
	}
	require.NoError(t, b.Commit(pebble.NoSync))
	require.NoError(t, b.Close())
	s.rev = rev
	s.checkStats()

	var calls int
	var writerDelta Stats
	errc := make(chan error, 1)
	go func() {
		// A writer above the compaction revision runs concurrently.
		for i := 0; i < 50; i++ {
			b := s.db.NewIndexedBatch()
			w := &WriteBatch{Batch: b, Rev: rev + int64(i+1), Keyspace: UserKeys, Span: s.span}
			_, err := ApplyPut(w, &pb.PutRequest{Key: []byte("k1"), Value: []byte("new")})
			if err == nil {
				err = b.Commit(pebble.NoSync)
			}
			b.Close()
			if err != nil {
				errc <- err
				return
			}
			writerDelta.Add(w.Delta)
		}
		errc <- nil
	}()
	var compactDelta Stats
	require.NoError(t, Compact(s.db, s.span, rev, func(d Stats) { calls++; compactDelta.Add(d) }))
	require.NoError(t, <-errc)
	assert.Greater(t, calls, 2, "work is chunked")
	assert.Equal(t, int64(0), compactDelta.LiveKeys)
	assert.Equal(t, int64(0), compactDelta.LiveBytes)
	assert.Equal(t, int64(-(2500-1)-4*(700-1)), compactDelta.Versions)
	s.stats.Add(writerDelta)
	s.stats.Add(compactDelta)
	s.checkStats()
	s.compactRev = rev
	s.rev = rev + 50
	requireKV(t, kv("big", "2499", 100, rev, 2500), s.get("big", rev))
	requireKV(t, kv("k1", "new", 100, rev+50, 750), s.get("k1", 0))
	requireKV(t, kv("k2", "v", 100, 70000, 700), s.get("k2", rev))
}

func TestHistoryOrderAndPrevKv(t *testing.T) {
	s := newTestStore(t)
	s.put(100, "a", "1")
	_, err := s.txn(200, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("c", "1"), opPut("a", "2"), opPut("b", "1")}})
	require.NoError(t, err)
	s.del(300, "a", "")
	s.put(400, "a", "3")
	_, err = s.txn(500, &pb.TxnRequest{Success: []*pb.RequestOp{opDel("b", "d"), opPut("a", "4")}})
	require.NoError(t, err)

	collect := func(from, to int64, max int) []*mvccpb.Event {
		var evs []*mvccpb.Event
		require.NoError(t, MVCCHistory(s.db, s.span, from, to, func(ev *mvccpb.Event) bool {
			evs = append(evs, ev)
			return len(evs) < max
		}))
		return evs
	}
	all := collect(0, 1000, 100)
	// History reproduces exactly the events the writes emitted.
	require.Len(t, all, len(s.events))
	for i := range all {
		assert.True(t, proto.Equal(s.events[i], all[i]), "event %d: want %v got %v", i, s.events[i], all[i])
	}
	desc := func(evs []*mvccpb.Event) []string {
		out := []string{}
		for _, ev := range evs {
			prev := ""
			if ev.PrevKv != nil {
				prev = "<" + string(ev.PrevKv.Value)
			}
			out = append(out, fmt.Sprintf("%s %s@%d%s", ev.Type, ev.Kv.Key, ev.Kv.ModRevision, prev))
		}
		return out
	}
	assert.Equal(t, []string{
		"PUT a@100", "PUT c@200", "PUT a@200<1", "PUT b@200", "DELETE a@300<2", "PUT a@400",
		"DELETE b@500<1", "DELETE c@500<1", "PUT a@500<3",
	}, desc(all))
	assert.Equal(t, []string{"PUT c@200", "PUT a@200<1", "PUT b@200", "DELETE a@300<2"}, desc(collect(200, 300, 100)))
	assert.Equal(t, []string{"DELETE a@300<2", "PUT a@400"}, desc(collect(250, 499, 100)))
	assert.Equal(t, []string{"PUT c@200", "PUT a@200<1"}, desc(collect(150, 1000, 2)))
	assert.Empty(t, collect(600, 1000, 100))
	assert.Empty(t, collect(300, 200, 100))
}
