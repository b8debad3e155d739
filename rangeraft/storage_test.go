package rangeraft

import (
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/txnproto"
)

func openEngine(t *testing.T) *kvstore.Engine {
	t.Helper()
	eng, err := kvstore.Open(t.TempDir(), zap.NewNop())
	require.NoError(t, err)
	t.Cleanup(func() { eng.Close() })
	return eng
}

// newTestStorage writes an empty log of range rangeID truncated and
// applied at index 10 in term 5 (as bootstrap does) and loads it.
func newTestStorage(t *testing.T, eng *kvstore.Engine, rangeID uint64) *raftStorage {
	t.Helper()
	b := eng.DB.NewBatch()
	require.NoError(t, setProto(b, kvstore.RaftTruncatedStateKey(rangeID), &txnproto.TruncatedState{Index: 10, Term: 5}))
	require.NoError(t, setProto(b, kvstore.RangeAppliedStateKey(rangeID), &txnproto.AppliedState{Index: 10, Term: 5}))
	require.NoError(t, b.Commit(pebble.Sync))
	s, err := loadRaftStorage(eng.DB, eng.DB, rangeID, &raftpb.ConfState{Voters: []uint64{1}})
	require.NoError(t, err)
	return s
}

func ent(index, term uint64) *raftpb.Entry {
	return &raftpb.Entry{Index: proto.Uint64(index), Term: proto.Uint64(term), Data: []byte{byte(index)}}
}

// TestRaftStorageAppendConflictAndReload checks the log invariants across
// an append that overwrites a conflicting suffix, and across a reload
// from the engine.
func TestRaftStorageAppendConflictAndReload(t *testing.T) {
	eng := openEngine(t)
	const rangeID = 7
	s := newTestStorage(t, eng, rangeID)
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	require.Equal(t, uint64(11), first)
	require.Equal(t, uint64(10), last)
	term, err := s.Term(10)
	require.NoError(t, err)
	require.Equal(t, uint64(5), term)
	_, err = s.Term(9)
	require.ErrorIs(t, err, raft.ErrCompacted)

	// Append 11..15 in term 6.
	b := eng.DB.NewBatch()
	li, lt, err := s.appendEntries(b, s.lastIndex, []*raftpb.Entry{ent(11, 6), ent(12, 6), ent(13, 6), ent(14, 6), ent(15, 6)})
	require.NoError(t, err)
	require.NoError(t, b.Commit(pebble.Sync))
	s.lastIndex, s.lastTerm = li, lt

	// A new leader overwrites 13.. with a shorter suffix in term 7.
	b = eng.DB.NewBatch()
	li, lt, err = s.appendEntries(b, s.lastIndex, []*raftpb.Entry{ent(13, 7)})
	require.NoError(t, err)
	require.NoError(t, b.Commit(pebble.Sync))
	s.lastIndex, s.lastTerm = li, lt
	require.Equal(t, uint64(13), s.lastIndex)

	ents, err := s.Entries(11, 14, 1<<20)
	require.NoError(t, err)
	require.Len(t, ents, 3)
	require.Equal(t, uint64(7), ents[2].GetTerm())
	_, err = s.Entries(11, 15, 1<<20)
	require.Error(t, err, "entries beyond the last index must not be served")

	// maxSize returns at least one entry.
	ents, err = s.Entries(11, 14, 1)
	require.NoError(t, err)
	require.Len(t, ents, 1)

	// Reload: the stale entries 14 and 15 are gone.
	s2, err := loadRaftStorage(eng.DB, eng.DB, rangeID, &raftpb.ConfState{Voters: []uint64{1}})
	require.NoError(t, err)
	require.Equal(t, uint64(13), s2.lastIndex)
	require.Equal(t, uint64(7), s2.lastTerm)
	_, err = s2.Term(14)
	require.ErrorIs(t, err, raft.ErrUnavailable)
}

// TestRaftStorageRejectsMissingLog checks that a hard state committing
// beyond the persisted log fails the load with a clear error instead of
// running raft on a broken log.
func TestRaftStorageRejectsMissingLog(t *testing.T) {
	eng := openEngine(t)
	const rangeID = 3
	b := eng.DB.NewBatch()
	require.NoError(t, setProto(b, kvstore.RaftTruncatedStateKey(rangeID), &txnproto.TruncatedState{Index: 10, Term: 5}))
	require.NoError(t, setProto(b, kvstore.RangeAppliedStateKey(rangeID), &txnproto.AppliedState{Index: 10, Term: 5}))
	require.NoError(t, setProto(b, kvstore.RaftHardStateKey(rangeID), &raftpb.HardState{Term: proto.Uint64(6), Commit: proto.Uint64(20)}))
	require.NoError(t, b.Commit(pebble.Sync))
	_, err := loadRaftStorage(eng.DB, eng.DB, rangeID, &raftpb.ConfState{Voters: []uint64{1}})
	require.ErrorContains(t, err, "missing entries")
}

// TestRaftStorageCorruptEntry checks that a corrupt log entry surfaces as
// an error, not a panic.
func TestRaftStorageCorruptEntry(t *testing.T) {
	eng := openEngine(t)
	const rangeID = 4
	b := eng.DB.NewBatch()
	require.NoError(t, setProto(b, kvstore.RaftTruncatedStateKey(rangeID), &txnproto.TruncatedState{Index: 10, Term: 5}))
	require.NoError(t, b.Set(kvstore.RaftLogKey(rangeID, 11), []byte{0xff, 0xff, 0xff}, nil))
	require.NoError(t, b.Commit(pebble.Sync))
	_, err := loadRaftStorage(eng.DB, eng.DB, rangeID, &raftpb.ConfState{Voters: []uint64{1}})
	require.ErrorContains(t, err, "corrupt log entry")
}

// TestRaftStorageEntryCache checks that the entry cache answers exactly
// as the engine does: across appends, a conflicting suffix, size limits,
// trims at the applied index, and reads that fall below the cache.
func TestRaftStorageEntryCache(t *testing.T) {
	eng := openEngine(t)
	const rangeID = 9
	s := newTestStorage(t, eng, rangeID)

	appendAndCache := func(ents ...*raftpb.Entry) {
		t.Helper()
		b := eng.DB.NewBatch()
		li, lt, err := s.appendEntries(b, s.lastIndex, ents)
		require.NoError(t, err)
		require.NoError(t, b.Commit(pebble.Sync))
		s.lastIndex, s.lastTerm = li, lt
		s.cacheAppend(ents)
	}
	// check compares every [lo, hi) read, with several size limits, with
	// the same read with the cache emptied.
	check := func() {
		t.Helper()
		saved := s.cache
		for lo := uint64(11); lo <= s.lastIndex; lo++ {
			for hi := lo + 1; hi <= s.lastIndex+1; hi++ {
				for _, max := range []uint64{0, 8, 1 << 20} {
					s.cache = saved
					got, err1 := s.Entries(lo, hi, max)
					gotTerm, errT1 := s.Term(lo)
					s.cache = nil
					want, err2 := s.Entries(lo, hi, max)
					wantTerm, errT2 := s.Term(lo)
					require.Equal(t, err2, err1, "[%d,%d) max %d", lo, hi, max)
					require.Equal(t, len(want), len(got), "[%d,%d) max %d", lo, hi, max)
					for i := range want {
						require.True(t, proto.Equal(want[i], got[i]), "[%d,%d) entry %d", lo, hi, i)
					}
					require.Equal(t, errT2, errT1)
					require.Equal(t, wantTerm, gotTerm, "term %d", lo)
				}
			}
		}
		s.cache = saved
	}

	appendAndCache(ent(11, 5), ent(12, 5), ent(13, 5))
	require.Len(t, s.cache, 3)
	check()
	appendAndCache(ent(14, 6), ent(15, 6))
	require.Len(t, s.cache, 5)
	check()
	// A new leader overwrites a conflicting suffix.
	appendAndCache(ent(13, 7), ent(14, 7))
	require.Equal(t, uint64(14), s.lastIndex)
	require.Len(t, s.cache, 4)
	check()
	// Entries applied leave the cache; reads below it use the engine.
	s.cacheTrim(12)
	require.Len(t, s.cache, 2)
	require.Equal(t, uint64(13), s.cache[0].GetIndex())
	check()
	// Appending to the cached tail keeps it contiguous.
	appendAndCache(ent(15, 7))
	check()
	s.cacheTrim(15)
	require.Empty(t, s.cache)
	check()
	appendAndCache(ent(16, 7))
	require.Len(t, s.cache, 1)
	check()
	// What the cache returned stays intact when the cache trims or
	// rewrites its tail (raft keeps such slices in messages across
	// passes).
	appendAndCache(ent(17, 7), ent(18, 7))
	held, err := s.Entries(16, 19, 1<<20)
	require.NoError(t, err)
	s.cacheTrim(17)
	appendAndCache(ent(18, 8))
	require.Len(t, held, 3)
	for i, e := range held {
		require.NotNil(t, e, "entry %d of a returned slice cleared", i)
		require.Equal(t, uint64(16+i), e.GetIndex())
		require.Equal(t, uint64(7), e.GetTerm(), "entry %d of a returned slice rewritten", i)
	}
	check()
	s.cacheTrim(^uint64(0))
	appendAndCache(ent(19, 8))

	// Whatever raft appends to a returned slice must not reach the cache.
	got, err := s.Entries(19, 20, 1<<20)
	require.NoError(t, err)
	_ = append(got, ent(99, 9))
	require.Len(t, s.cache, 1)
	require.Equal(t, uint64(19), s.cache[0].GetIndex())
}
