package rangeraft

import (
	"context"
	"errors"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/tracker"

	"github.com/rangekv/rangekv/txnproto"
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
				// Only to a node heard from lately: a transfer to a dead
				// node stalls proposals until raft gives it up.
				live := s.live.silentFor(r.nodeOfReplicaLocked(id)) < s.electionTimeout()
				if id != r.replicaID && typ == raft.ProgressTypePeer && !pr.IsLearner && live && pr.Match >= best {
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

// ErrNotVoterNode is returned by MoveLeader for a target node that holds
// no voter of the range.
var ErrNotVoterNode = errors.New("rangekv: the target node holds no voter of the range")

// MoveLeader transfers the range's leadership to its voter on targetNode
// (raft's leadership transfer: the leader brings the target up to date and
// tells it to campaign at once) and waits, within ctx, until the target
// leads. It fails with NotLeaderError if this replica does not lead and
// with ErrNotVoterNode for a node without a voter of the range.
func (r *Replica) MoveLeader(ctx context.Context, targetNode uint64) error {
	r.mu.Lock()
	if err := r.notLeaderLocked(); err != nil {
		r.mu.Unlock()
		return err
	}
	target := uint64(0)
	for _, rd := range r.desc.Replicas {
		if rd.NodeId == targetNode && rd.Type != txnproto.ReplicaType_LEARNER {
			target = rd.ReplicaId
		}
	}
	if target == 0 {
		r.mu.Unlock()
		return ErrNotVoterNode
	}
	if target != r.replicaID {
		r.unquiesceLocked()
		r.raw.TransferLeader(target)
	}
	r.mu.Unlock()
	r.store.enqueue(r.RangeID)
	for {
		if r.Status().LeaderNode == targetNode {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}
