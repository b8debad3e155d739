package rangeraft

import (
	"sync"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/txnproto"
)

// Quiescence (after CockroachDB's replica quiescence): an idle range whose
// log is fully replicated and applied stops ticking, so it sends no
// heartbeats and costs nothing. The leader decides: after quiesceAfterTicks
// idle ticks it sends each follower one last heartbeat marked quiesce
// and stops ticking; a follower that receives it while
// caught up with that leader stops ticking too (the mark travels in our
// RaftMessage envelope; raft sees a plain heartbeat). Anything that needs raft
// (a proposal, a read, an append, a vote) wakes the replica. Because a
// quiesced follower no longer counts election ticks, leader failure is
// detected per node instead: every node pings every peer each tick (one
// coalesced message per node pair, not per range), and a quiesced follower
// whose leader's node has been silent for an election timeout wakes up and
// may campaign.

// quiesceAfterTicks is how many idle ticks a leader waits before
// quiescing.
const quiesceAfterTicks = 3

// liveness records when each peer node was last heard from, and the clock
// offset its last batch showed.
type liveness struct {
	mu     sync.Mutex
	heard  map[uint64]time.Time
	offset map[uint64]time.Duration
	clock  map[uint64]clockEvidence
}

// record notes that node was heard from and, when measured (a batch
// without a wall-clock reading is not), its clock offset.
func (l *liveness) record(node uint64, offset time.Duration, measured bool, clock clockEvidence) {
	l.mu.Lock()
	if l.heard == nil {
		l.heard, l.offset, l.clock = map[uint64]time.Time{}, map[uint64]time.Duration{}, map[uint64]clockEvidence{}
	}
	l.heard[node] = time.Now()
	if clock.stamp > l.clock[node].stamp {
		l.clock[node] = clock
	}
	if measured {
		l.offset[node] = offset
	} else {
		delete(l.offset, node)
	}
	l.mu.Unlock()
}

// offsets returns the last measured offset of each peer heard from within
// fresh.
func (l *liveness) offsets(fresh time.Duration) map[uint64]time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[uint64]time.Duration{}
	for node, t := range l.heard {
		if off, ok := l.offset[node]; ok && time.Since(t) <= fresh {
			out[node] = off
		}
	}
	return out
}

// clocks returns the newest clock evidence of each peer: its HLC and vote
// epoch when it sent the last batch heard.
func (l *liveness) clocks() map[uint64]clockEvidence {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[uint64]clockEvidence, len(l.clock))
	for n, c := range l.clock {
		out[n] = c
	}
	return out
}

// silentFor reports how long node has been silent (forever if never
// heard).
func (l *liveness) silentFor(node uint64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.heard[node]
	if !ok {
		return time.Duration(1<<63 - 1)
	}
	return time.Since(t)
}

// wakesQuiesced reports whether a message must wake a quiesced replica:
// everything but responses and the quiescing heartbeat itself.
func wakesQuiesced(m *raftpb.Message, quiesce bool) bool {
	switch m.GetType() {
	case raftpb.MsgAppResp, raftpb.MsgHeartbeatResp, raftpb.MsgVoteResp, raftpb.MsgPreVoteResp,
		raftpb.MsgReadIndexResp, raftpb.MsgSnapStatus, raftpb.MsgUnreachable:
		return false
	case raftpb.MsgHeartbeat:
		return !quiesce
	}
	return true
}

// unquiesceLocked wakes the replica.
func (r *Replica) unquiesceLocked() {
	r.leaveIdleGroupLocked()
	r.quiesced = false
	r.idle.Store(false)
	r.idleTicks = 0
}

// tickLocked advances the replica's raft clock unless it is quiesced; a
// quiesced follower whose leader's node went silent wakes first. It
// reports whether the replica ticked.
func (r *Replica) tickLocked() bool {
	if r.quiesced {
		lead := r.raw.BasicStatus().Lead
		if lead == r.replicaID {
			return false
		}
		if node := r.nodeOfReplicaLocked(lead); node != 0 && r.store.live.silentFor(node) < r.store.electionTimeout() {
			return false
		}
		r.unquiesceLocked()
	}
	// Decide before ticking: a tick makes the leader heartbeat, and that
	// plain heartbeat, arriving after the quiescing one, would wake the
	// followers again.
	if r.maybeQuiesceLocked(); r.quiesced {
		return false
	}
	r.raw.Tick()
	r.maybeRecampaignLocked()
	return true
}

// splitCampaignTicks is how many ticks a right-hand replica started by a
// split on the left-hand leader's node keeps campaigning.
//
// Its first campaign reaches the other nodes before their left-hand
// replicas applied the split, so uninitialized replicas answer it, and a
// split applied there a moment later replaces such a replica before its
// answer went out. Without a new campaign the range would wait a whole
// randomized election timeout (one to two seconds) for a leader, and so
// would every request that raced the split.
const splitCampaignTicks = 5

// maybeRecampaignLocked campaigns again while the replica is within its
// split campaign window and not yet leader (or following one).
func (r *Replica) maybeRecampaignLocked() {
	if r.campaignTicks == 0 {
		return
	}
	r.campaignTicks--
	bs := r.raw.BasicStatus()
	if bs.Lead != raft.None {
		r.campaignTicks = 0
		return
	}
	if bs.RaftState == raft.StatePreCandidate || bs.RaftState == raft.StateCandidate {
		_ = r.raw.Campaign()
	}
}

// maybeQuiesceLocked quiesces an idle leader: nothing proposed, read or
// unapplied, no Ready pending, and every follower on a live node has the
// whole log.
func (r *Replica) maybeQuiesceLocked() {
	bs := r.raw.BasicStatus()
	if bs.RaftState != raft.StateLeader || len(r.proposals) > 0 || len(r.pendingReads) > 0 ||
		len(r.inflightReads) > 0 || len(r.indexWaiters) > 0 || bs.LeadTransferee != 0 {
		r.idleTicks = 0
		return
	}
	// The leader's own progress gives raft's last index (Next - 1,
	// unstable entries included) and what it has persisted (Match).
	last := bs.GetCommit()
	caughtUp := r.st.applied.Index == last
	r.raw.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		if id == r.replicaID {
			if pr.Next-1 != last || pr.Match != last {
				caughtUp = false
			}
			return
		}
		if pr.Match == last {
			return
		}
		// A follower on a silent node does not hold the range awake.
		if node := r.nodeOfReplicaLocked(id); node != 0 && r.store.live.silentFor(node) >= r.store.electionTimeout() {
			return
		}
		caughtUp = false
	})
	if !caughtUp {
		r.idleTicks = 0
		return
	}
	r.idleTicks++
	if r.idleTicks < quiesceAfterTicks {
		return
	}
	r.quiesced = true
	r.idle.Store(r.leaderTerm != 0)
	// Closed from now on with its group, if its evidence allows; else
	// alone, every quiescedCloseEvery rounds.
	r.joinIdleGroupLocked(r.store.live.clocks())
	match := map[uint64]uint64{}
	r.raw.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) { match[id] = pr.Match })
	for _, rd := range r.desc.Replicas {
		if rd.ReplicaId == r.replicaID {
			continue
		}
		// As raft's own heartbeats: never a commit index beyond what the
		// follower is known to hold (a follower on a silent node may be
		// behind, and a commit past its log is fatal to it).
		m := &raftpb.Message{
			Type:   raftpb.MsgHeartbeat.Enum(),
			To:     proto.Uint64(rd.ReplicaId),
			From:   proto.Uint64(r.replicaID),
			Term:   proto.Uint64(bs.GetTerm()),
			Commit: proto.Uint64(min(match[rd.ReplicaId], last)),
		}
		data, err := proto.Marshal(m)
		if err != nil {
			continue
		}
		r.store.transport.send(rd.NodeId, []*txnproto.RaftMessage{{RangeId: r.RangeID, Message: data, Quiesce: true}}, clockEvidence{})
	}
}

// maybeQuiesceFollowerLocked quiesces a follower on its leader's
// quiescing heartbeat.
func (r *Replica) maybeQuiesceFollowerLocked(m *raftpb.Message) {
	bs := r.raw.BasicStatus()
	// The leader quiesces only once this follower has persisted its whole
	// log; committed entries apply without ticks, so term and leadership
	// are all that must match.
	if bs.RaftState == raft.StateFollower && bs.Lead == m.GetFrom() && bs.GetTerm() == m.GetTerm() {
		r.quiesced = true
	}
}
