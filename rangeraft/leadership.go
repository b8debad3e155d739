package rangeraft

import (
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/tracker"
)

// PeerClockOffsets returns, for each peer node heard from within fresh,
// how far the timestamp on its last raft batch was ahead of this node's
// wall clock (negative: behind).
func (s *Store) PeerClockOffsets(fresh time.Duration) map[uint64]time.Duration {
	return s.live.offsets(fresh)
}

// ShedLeadership asks every range this node leads to transfer leadership
// to its most caught-up voter on another node (raft's leadership
// transfer: the target campaigns at once once it has the whole log). It
// returns how many transfers it started.
func (s *Store) ShedLeadership() int {
	started := 0
	for _, r := range s.Replicas() {
		transferred := false
		r.mu.Lock()
		if r.raw.BasicStatus().RaftState == raft.StateLeader && r.raw.BasicStatus().LeadTransferee == raft.None {
			var target, best uint64
			r.raw.WithProgress(func(id uint64, typ raft.ProgressType, pr tracker.Progress) {
				if id != r.replicaID && typ == raft.ProgressTypePeer && !pr.IsLearner && pr.Match >= best {
					target, best = id, pr.Match
				}
			})
			if target != raft.None {
				r.unquiesceLocked()
				r.raw.TransferLeader(target)
				transferred = true
				started++
			}
		}
		r.mu.Unlock()
		if transferred {
			s.enqueue(r.RangeID)
		}
	}
	return started
}
