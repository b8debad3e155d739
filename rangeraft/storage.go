package rangeraft

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/txnproto"
)

// raftStorage implements raft.Storage for one replica over the node's
// shared engine. Every method runs with the replica's mutex held (raft only
// calls Storage from inside RawNode methods), and the cached fields change
// only after the batch that persists them has committed.
//
// Invariants: truncated.Index < firstIndex() <= lastIndex+1; the log holds
// exactly the entries (truncated.Index, lastIndex]; applied.Index >=
// truncated.Index. The entry cache, when not empty, holds the persisted
// entries [cache[0].Index, lastIndex] exactly as written, so reads in that
// window never touch the engine.
type raftStorage struct {
	db      *pebble.DB
	rangeID uint64

	hardState *raftpb.HardState
	confState *raftpb.ConfState
	truncated *txnproto.TruncatedState
	lastIndex uint64
	lastTerm  uint64
	applied   *txnproto.AppliedState

	// cache holds the log's unapplied tail (see cacheAppend), contiguous
	// and ending at lastIndex. Committed entries are read back as soon as
	// they commit, one pass after they were written; without the cache
	// every replica with work would seek the engine every pass.
	// (CockroachDB's raftentry.Cache does the same.)
	cache []*raftpb.Entry
}

// cacheAppend records entries just persisted (ents follow or replace part
// of the cached tail) and must be called with the new lastIndex already
// set. Entries are shared with raft, which never modifies them.
func (s *raftStorage) cacheAppend(ents []*raftpb.Entry) {
	if len(ents) == 0 {
		return
	}
	first := ents[0].GetIndex()
	if len(s.cache) > 0 && first >= s.cache[0].GetIndex() && first <= s.cache[len(s.cache)-1].GetIndex()+1 {
		s.cache = append(s.cache[:first-s.cache[0].GetIndex()], ents...)
	} else {
		s.cache = append(s.cache[:0], ents...)
	}
	if last := s.cache[len(s.cache)-1].GetIndex(); last != s.lastIndex {
		// Not the log's tail (cannot happen when called as documented):
		// keep nothing rather than something wrong.
		s.cache = s.cache[:0]
	}
}

// cacheTrim drops cached entries at or below index (applied, or replaced
// by a snapshot); a follower that lags reads them from the engine.
func (s *raftStorage) cacheTrim(index uint64) {
	if len(s.cache) == 0 || s.cache[0].GetIndex() > index {
		return
	}
	if index >= s.cache[len(s.cache)-1].GetIndex() {
		clear(s.cache)
		s.cache = s.cache[:0]
		return
	}
	n := index - s.cache[0].GetIndex() + 1
	clear(s.cache[:n])
	s.cache = s.cache[n:]
}

// cachedEntries returns entries [lo, hi) capped at maxSize bytes (at least
// one) from the cache, and false when the cache does not hold lo.
func (s *raftStorage) cachedEntries(lo, hi, maxSize uint64) ([]*raftpb.Entry, bool) {
	if len(s.cache) == 0 || lo < s.cache[0].GetIndex() || hi > s.lastIndex+1 || lo >= hi {
		return nil, false
	}
	off := s.cache[0].GetIndex()
	ents := s.cache[lo-off : hi-off]
	var size uint64
	for i, e := range ents {
		size += uint64(proto.Size(e))
		if i > 0 && size > maxSize {
			ents = ents[:i]
			break
		}
	}
	// A copy: raft keeps what it gets (in messages, in a Ready) across
	// passes, and the cache rewrites its own array (trims, conflicting
	// appends); only the entries themselves, never modified, are shared.
	return slices.Clone(ents), true
}

// loadRaftStorage reads a replica's raft state from from, a consistent
// view of db (a snapshot, or db itself when nothing can write the range
// meanwhile): separate reads of a live engine could see half of a split
// that commits between them, such as an applied index above the commit
// index, which raft refuses with a panic. Later reads go to db.
func loadRaftStorage(db *pebble.DB, from pebble.Reader, rangeID uint64, conf *raftpb.ConfState) (*raftStorage, error) {
	s := &raftStorage{db: db, rangeID: rangeID, confState: conf}
	s.hardState = &raftpb.HardState{}
	if err := getProto(from, kvstore.RaftHardStateKey(rangeID), s.hardState); err != nil {
		return nil, fmt.Errorf("range %d: hard state: %w", rangeID, err)
	}
	s.truncated = &txnproto.TruncatedState{}
	if err := getProto(from, kvstore.RaftTruncatedStateKey(rangeID), s.truncated); err != nil {
		return nil, fmt.Errorf("range %d: truncated state: %w", rangeID, err)
	}
	s.applied = &txnproto.AppliedState{}
	if err := getProto(from, kvstore.RangeAppliedStateKey(rangeID), s.applied); err != nil {
		return nil, fmt.Errorf("range %d: applied state: %w", rangeID, err)
	}
	s.lastIndex, s.lastTerm = s.truncated.Index, s.truncated.Term
	// Find the last log entry.
	it, err := from.NewIter(&pebble.IterOptions{
		LowerBound: kvstore.RaftLogPrefix(rangeID),
		UpperBound: kvstore.RaftLogKey(rangeID, ^uint64(0)),
	})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	if it.Last() {
		var e raftpb.Entry
		if err := proto.Unmarshal(it.Value(), &e); err != nil {
			return nil, fmt.Errorf("range %d: corrupt log entry %x: %w", rangeID, it.Key(), err)
		}
		if e.GetIndex() > s.lastIndex {
			s.lastIndex, s.lastTerm = e.GetIndex(), e.GetTerm()
		}
	}
	if s.applied.Index < s.truncated.Index {
		return nil, fmt.Errorf("range %d: applied index %d below truncated index %d", rangeID, s.applied.Index, s.truncated.Index)
	}
	if s.hardState.GetCommit() > s.lastIndex {
		return nil, fmt.Errorf("range %d: commit index %d beyond last log index %d: the raft log is missing entries",
			rangeID, s.hardState.GetCommit(), s.lastIndex)
	}
	return s, nil
}

// InitialState implements raft.Storage.
func (s *raftStorage) InitialState() (*raftpb.HardState, *raftpb.ConfState, error) {
	return proto.Clone(s.hardState).(*raftpb.HardState), proto.Clone(s.confState).(*raftpb.ConfState), nil
}

// Entries implements raft.Storage: entries [lo, hi) capped at maxSize bytes
// (at least one entry).
func (s *raftStorage) Entries(lo, hi, maxSize uint64) ([]*raftpb.Entry, error) {
	if lo <= s.truncated.Index {
		return nil, raft.ErrCompacted
	}
	if hi > s.lastIndex+1 {
		return nil, fmt.Errorf("range %d: entries [%d,%d) beyond last index %d", s.rangeID, lo, hi, s.lastIndex)
	}
	if ents, ok := s.cachedEntries(lo, hi, maxSize); ok {
		return ents, nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: kvstore.RaftLogKey(s.rangeID, lo),
		UpperBound: kvstore.RaftLogKey(s.rangeID, hi),
	})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	out := make([]*raftpb.Entry, 0, min(hi-lo, 64))
	var size uint64
	want := lo
	for valid := it.First(); valid; valid = it.Next() {
		e := &raftpb.Entry{}
		if err := proto.Unmarshal(it.Value(), e); err != nil {
			return nil, fmt.Errorf("range %d: corrupt log entry at %x: %w", s.rangeID, it.Key(), err)
		}
		if e.GetIndex() != want {
			return nil, raft.ErrUnavailable
		}
		size += uint64(proto.Size(e))
		if len(out) > 0 && size > maxSize {
			break
		}
		out = append(out, e)
		want++
	}
	if len(out) == 0 {
		return nil, raft.ErrUnavailable
	}
	return out, nil
}

// Term implements raft.Storage.
func (s *raftStorage) Term(i uint64) (uint64, error) {
	switch {
	case i == s.truncated.Index:
		return s.truncated.Term, nil
	case i < s.truncated.Index:
		return 0, raft.ErrCompacted
	case i > s.lastIndex:
		return 0, raft.ErrUnavailable
	case i == s.lastIndex:
		return s.lastTerm, nil
	case len(s.cache) > 0 && i >= s.cache[0].GetIndex():
		return s.cache[i-s.cache[0].GetIndex()].GetTerm(), nil
	}
	v, closer, err := s.db.Get(kvstore.RaftLogKey(s.rangeID, i))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, raft.ErrUnavailable
	}
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	var e raftpb.Entry
	if err := proto.Unmarshal(v, &e); err != nil {
		return 0, fmt.Errorf("range %d: corrupt log entry %d: %w", s.rangeID, i, err)
	}
	return e.GetTerm(), nil
}

// LastIndex implements raft.Storage.
func (s *raftStorage) LastIndex() (uint64, error) { return s.lastIndex, nil }

// FirstIndex implements raft.Storage.
func (s *raftStorage) FirstIndex() (uint64, error) { return s.truncated.Index + 1, nil }

// Snapshot implements raft.Storage. It returns only metadata at the applied
// index; the transport streams the data from an engine snapshot and
// rewrites the metadata to that snapshot's applied state (as CockroachDB
// generates snapshots at send time).
func (s *raftStorage) Snapshot() (*raftpb.Snapshot, error) {
	return &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
		Index:     proto.Uint64(s.applied.Index),
		Term:      proto.Uint64(s.applied.Term),
		ConfState: proto.Clone(s.confState).(*raftpb.ConfState),
	}}, nil
}

// appendEntries stages ents in b after a log whose last index is
// prevLast, removing any conflicting suffix. It returns the new last index
// and term to publish after b commits; it does not modify s.
func (s *raftStorage) appendEntries(b *pebble.Batch, prevLast uint64, ents []*raftpb.Entry) (lastIndex, lastTerm uint64, err error) {
	for _, e := range ents {
		data, err := proto.Marshal(e)
		if err != nil {
			return 0, 0, err
		}
		if err := b.Set(kvstore.RaftLogKey(s.rangeID, e.GetIndex()), data, nil); err != nil {
			return 0, 0, err
		}
	}
	last := ents[len(ents)-1]
	if last.GetIndex() < prevLast {
		// Drop the conflicting tail beyond the new last entry.
		if err := b.DeleteRange(kvstore.RaftLogKey(s.rangeID, last.GetIndex()+1),
			kvstore.RaftLogKey(s.rangeID, prevLast+1), nil); err != nil {
			return 0, 0, err
		}
	}
	return last.GetIndex(), last.GetTerm(), nil
}

func getProto(r pebble.Reader, key []byte, m proto.Message) error {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer closer.Close()
	return proto.Unmarshal(v, m)
}

func setProto(b *pebble.Batch, key []byte, m proto.Message) error {
	data, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	return b.Set(key, data, nil)
}
