package rangeraft

import (
	"cmp"
	"context"
	"encoding/binary"
	"slices"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"

	"github.com/rangekv/rangekv/hlc"
	"github.com/rangekv/rangekv/txnproto"
)

// Side-channel closed timestamps (docs/closed-timestamps.md, "The side
// channel"). A range leader closes its range at T without a raft command
// when:
//
//  1. no write of its log can still apply at or below T: it has applied
//     every entry of earlier terms (applied index ≥ leaderSince), and T is
//     below the timestamp of each of its own proposals not yet applied
//     (inflight), so everything past its applied index a applies above T;
//  2. no later leader can write at or below T: a majority of the voters
//     (itself included) have shown a clock at least T while still in its
//     term (clockEvidence), and every vote a node casts afterwards travels
//     in a batch stamped at least that high, so a new leader's clock is
//     past T before it proposes anything.
//
// The leader then treats the range as readable at T, and sends (T, a) to
// the followers, which do the same once they have applied through a.

// quiescedCloseEvery is how many side-channel rounds pass between closes
// of a quiesced range (every round for the others): it publishes nothing
// new most rounds but would cost a lock, a clock comparison and ~20 bytes
// per peer each time, which with a thousand ranges is most of an idle
// node's CPU. A watch or read that needs one sooner closes it through the
// log, which also wakes it.
const quiescedCloseEvery = 10

// maxPendingCloses bounds the closes a follower holds for indexes it has
// not applied yet; more are dropped (the next interval brings newer ones).
const maxPendingCloses = 8

// evidenceWakeEvery is the least time, as an HLC difference (one second),
// between two wakes of a quiesced range to renew its clock evidence.
const evidenceWakeEvery = int64(1000) << hlc.LogicalBits

// clockEvidence is a lower bound on a node's clock: the node's HLC was at
// least stamp while its vote epoch was epoch.
type clockEvidence struct {
	stamp int64
	epoch uint64
}

// pendingClose is a side-channel close awaiting the apply of index.
type pendingClose struct {
	rev   int64
	index uint64
}

// inflightProposal is a proposal of this leader not yet applied.
type inflightProposal struct {
	ts   int64
	term uint64
}

// resetLeadershipLocked starts or ends the replica's side-channel closing
// for the raft state bs it now has: as leader, only entries from lastIndex
// on are its own.
func (r *Replica) resetLeadershipLocked(bs raft.BasicStatus, lastIndex uint64) {
	if bs.RaftState != raft.StateLeader {
		r.leaveIdleGroupLocked()
		if r.leaderTerm != 0 {
			r.leaderTerm, r.leaderSince = 0, 0
			r.leading.Store(false)
			clear(r.inflight)
			clear(r.evidence)
		}
		return
	}
	if bs.GetTerm() == r.leaderTerm {
		return
	}
	r.leaveIdleGroupLocked()
	r.leaderTerm, r.leaderSince = bs.GetTerm(), lastIndex
	r.leading.Store(true)
	for id, p := range r.inflight {
		if p.term < bs.GetTerm() {
			delete(r.inflight, id)
		}
	}
	clear(r.evidence)
}

// recordEvidenceLocked notes, on the leader, that the voter that sent m (a
// response of the leader's term) had a clock at least stamp in that term.
func (r *Replica) recordEvidenceLocked(m *raftpb.Message, ev clockEvidence) {
	if ev.stamp == 0 || r.leaderTerm == 0 || m.GetTerm() != r.leaderTerm {
		return
	}
	switch m.GetType() {
	case raftpb.MsgAppResp, raftpb.MsgHeartbeatResp:
	default:
		return
	}
	if ev.stamp > r.evidence[m.GetFrom()].stamp {
		r.evidence[m.GetFrom()] = ev
	}
}

// sideCloseLocked returns the revision the leader can close its range at
// and its applied index, or ok false when it cannot close above what the
// range already promises. now is the clock's reading for this round,
// taken before mu; peerClocks holds the newest clock evidence of every
// peer node, from any batch.
//
// Whether this replica still leads is not part of the safety argument
// (a deposed leader's evidence still binds every later leader), so the
// replica's own notion of its term, refreshed every scheduler pass, is
// enough: it spares raft's status on every replica every round.
func (r *Replica) sideCloseLocked(now int64, peerClocks map[uint64]clockEvidence) (rev int64, index uint64, ok bool) {
	if r.leaderTerm == 0 || r.st.applied.Index < r.leaderSince ||
		len(r.st.confState.GetVotersOutgoing()) > 0 || len(r.st.confState.GetVoters()) != len(r.desc.Replicas) {
		return 0, 0, false
	}
	t := now
	if len(r.inflight) > 0 {
		for _, p := range r.inflight {
			t = min(t, p.ts-1)
		}
	}
	q, stale := quorumClock(r.desc.Replicas, r.replicaID, now, r.evidence, peerClocks)
	if lag := r.store.renewLag(); lag > 0 && stale && !r.quiesced && q < t-lag && now-r.evidenceWake > lag/2 {
		// An awake range whose voters voted since their last responses
		// (a leader moved somewhere on their nodes) closes only as far
		// as those responses, which come with its next write or
		// heartbeat. Ask for them now (a heartbeat round through
		// ReadIndex, whose answer nobody awaits), so that an election
		// elsewhere delays this range's closes by one round trip rather
		// than up to a heartbeat interval. At most twice per lag.
		r.evidenceWake = now
		r.readSeq++
		r.raw.ReadIndex(binary.BigEndian.AppendUint64([]byte("renew"), r.readSeq))
		r.store.enqueue(r.RangeID)
	}
	t = min(t, q)
	if t <= r.readableLocked() {
		if stale && r.quiesced && now-r.evidenceWake > evidenceWakeEvery {
			// The evidence that let this quiesced range close went stale
			// (its voters cast votes since, elsewhere most likely): one
			// round of heartbeats renews it, then it quiesces again. At
			// most once a second per range: a burst of elections (a
			// rebalance) would otherwise wake every range over and over.
			// Demand (a watch or read closing through the log) wakes it
			// sooner.
			r.evidenceWake = now
			r.unquiesceLocked()
			r.store.enqueue(r.RangeID)
		}
		return 0, 0, false
	}
	return t, r.st.applied.Index, true
}

// renewLag is how far, as an HLC difference, an awake range's clock
// evidence may trail the other bounds on its close before the leader asks
// its voters for fresh responses: two side-channel intervals.
func (s *Store) renewLag() int64 {
	return 2 * s.cfg.ClosedTimestampInterval.Milliseconds() << hlc.LogicalBits
}

// quorumClock returns the highest timestamp that a majority of the
// range's replicas (all voters) have shown their clocks to be at while in
// the leader's term: self counts at now; another replica at its evidence,
// raised to its node's newest batch stamp when the node has cast no vote
// since (equal vote epochs). A replica without evidence counts as 0.
// stale reports a replica without evidence or whose node has voted since.
func quorumClock(replicas []*txnproto.ReplicaDescriptor, self uint64, now int64, evidence map[uint64]clockEvidence,
	peerClocks map[uint64]clockEvidence) (q int64, stale bool) {
	if len(replicas) == 0 {
		return 0, false
	}
	var buf [7]int64
	stamps := buf[:0]
	for _, rd := range replicas {
		if rd.ReplicaId == self {
			stamps = append(stamps, now)
			continue
		}
		ev := evidence[rd.ReplicaId]
		s := ev.stamp
		switch pc, ok := peerClocks[rd.NodeId]; {
		case s == 0:
			stale = true
		case ok && pc.epoch == ev.epoch:
			s = max(s, pc.stamp)
		case ok:
			stale = true
		}
		stamps = append(stamps, s)
	}
	return quorumOf(stamps), stale
}

// quorumOf returns the quorum-th highest of stamps (one per voter, in any
// order; sorted in place): a majority of the voters are at least there.
func quorumOf(stamps []int64) int64 {
	slices.Sort(stamps)
	return stamps[len(stamps)-(len(stamps)/2+1)]
}

// readableLocked is ReadableRevision with mu held.
func (r *Replica) readableLocked() int64 {
	return r.cappedLocked(max(r.st.applied.Revision, r.st.applied.ClosedRevision, r.sideClosed, r.groupClosedLocked()))
}

// cappedLocked lowers rev below the range's lowest unresolved prepare:
// a transaction may still commit there (txn.go).
func (r *Replica) cappedLocked(rev int64) int64 {
	if r.txns != nil && r.txns.minPrepare > 0 {
		return min(rev, r.txns.minPrepare-1)
	}
	return rev
}

// InstallClosed records a side-channel close from the range's leader:
// the range never applies a write at or below rev, and once this replica
// has applied through index it has applied every write at or below rev.
// It reports whether the replica's readable revision moved.
func (r *Replica) InstallClosed(rev int64, index uint64) bool {
	moved := r.installClosed(rev, index)
	if moved {
		r.feed.PokeClosed()
	}
	return moved
}

// installClosed is InstallClosed except that the caller pokes the feed
// when it reports true.
func (r *Replica) installClosed(rev int64, index uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.installClosedLocked(rev, index)
}

// pokeAll tells the readers of rs's feeds that their readable revisions
// moved.
func pokeAll(rs []*Replica) {
	for _, r := range rs {
		r.feed.PokeClosed()
	}
}

// installClosedLocked is InstallClosed with mu held, except that the
// caller pokes the feed (outside mu) when it reports true.
func (r *Replica) installClosedLocked(rev int64, index uint64) bool {
	before := r.readableLocked()
	if index <= r.st.applied.Index {
		r.sideClosed = max(r.sideClosed, rev)
	} else if len(r.pendingCloses) < maxPendingCloses &&
		(len(r.pendingCloses) == 0 || r.pendingCloses[len(r.pendingCloses)-1].rev < rev) {
		r.pendingCloses = append(r.pendingCloses, pendingClose{rev: rev, index: index})
		// Indexes arrive in order from one leader; a new leader's may be
		// lower: keep the list ordered by index.
		slices.SortFunc(r.pendingCloses, func(a, b pendingClose) int { return cmp.Compare(a.index, b.index) })
	}
	moved := r.readableLocked() > before
	if moved {
		r.signalAppliedLocked()
	}
	return moved
}

// promoteClosesLocked activates the pending closes whose index has
// applied.
func (r *Replica) promoteClosesLocked() {
	n := 0
	for n < len(r.pendingCloses) && r.pendingCloses[n].index <= r.st.applied.Index {
		r.sideClosed = max(r.sideClosed, r.pendingCloses[n].rev)
		n++
	}
	r.pendingCloses = r.pendingCloses[n:]
}

// checkClosed reports a write applying at or below the replica's
// side-channel closed revision: a broken promise, which the protocol
// rules out. It is counted and logged, for tests and operators.
func (r *Replica) checkClosed(floor, rev int64, index uint64) {
	if rev > floor {
		return
	}
	r.store.metrics.closedViolations.Inc()
	r.log.Error("write applied at or below the range's closed timestamp",
		zap.Int64("revision", rev), zap.Int64("closed", floor), zap.Uint64("index", index))
}

// publishClosed runs one side-channel round (every
// StoreConfig.ClosedTimestampInterval): each range this node leads is
// closed as far as sideCloseLocked allows, locally and on the nodes of its
// other replicas. Every quiescedCloseEvery rounds every peer gets a batch,
// entries or not: the node-level clock evidence quiesced ranges close on.
func (s *Store) publishClosed() {
	peerClocks := s.live.clocks()
	out := map[uint64][]*txnproto.ClosedTimestamp{}
	s.closing = s.replicaList(s.closing[:0])
	s.closeRound++
	quiescedToo := s.closeRound%quiescedCloseEvery == 0
	now := s.cfg.Clock.Now()
	// The idle groups first: now was read before they take their leaves.
	groupUpdates, own, dropped := s.idle.round(now, peerClocks)
	dropLeaderships(dropped)
	for _, o := range own {
		o.clock.advance(o.closed)
	}
	for _, r := range s.closing {
		if !r.leading.Load() || r.grouped.Load() {
			continue
		}
		if r.idle.Load() {
			// A quiesced range out of the groups (it quiesced with stale
			// evidence, or its group dissolved) joins one or is closed
			// alone, every quiescedCloseEvery rounds. (It tries to join
			// when it quiesces, too.)
			if !quiescedToo {
				continue
			}
			r.mu.Lock()
			joined := r.joinIdleGroupLocked(peerClocks)
			r.mu.Unlock()
			if joined {
				continue
			}
		}
		r.mu.Lock()
		rev, index, ok := r.sideCloseLocked(now, peerClocks)
		moved := false
		if ok {
			moved = r.installClosedLocked(rev, index)
			ct := &txnproto.ClosedTimestamp{RangeId: r.RangeID, Revision: rev, AppliedIndex: index}
			for _, rd := range r.desc.Replicas {
				if rd.NodeId != s.cfg.NodeID {
					out[rd.NodeId] = append(out[rd.NodeId], ct)
				}
			}
		}
		r.mu.Unlock()
		if moved {
			s.poked = append(s.poked, r)
		}
	}
	// Watchers wake once every range of the round has moved, not at the
	// first: a watch over many ranges then pulls once per round.
	pokeAll(s.poked)
	clear(s.poked)
	s.poked = s.poked[:0]
	// Rounds that close quiesced ranges ping every peer, entries or not:
	// the clock evidence those ranges close on.
	sends := map[uint64]outgoing{}
	if quiescedToo {
		s.mu.RLock()
		for _, n := range s.peers {
			sends[n] = outgoing{}
		}
		s.mu.RUnlock()
	}
	for n, cts := range out {
		o := sends[n]
		o.closed = cts
		sends[n] = o
	}
	for n, us := range groupUpdates {
		o := sends[n]
		o.idle = us
		sends[n] = o
	}
	for n, o := range sends {
		s.transport.enqueue(n, o)
	}
}

// closeAtAttempts bounds the side-channel attempts of CloseAt before it
// closes through the raft log.
const closeAtAttempts = 4

// CloseAt makes this replica, as leader, readable at target: every write
// at or below target has applied here and none will apply there again.
// It closes on the side channel when it can (the conditions of
// sideCloseLocked), waiting for its own proposals stamped at or below
// target to apply and running ReadIndex rounds to refresh the clock
// evidence of its voters; after closeAtAttempts tries it proposes a Close
// command instead. This node's clock should be at least target (a clock
// round or Update), or it closes through the log at once. It returns
// *NotLeaderError on followers.
func (r *Replica) CloseAt(ctx context.Context, target int64) error {
	for attempt := 0; ; attempt++ {
		if r.ReadableRevision() >= target {
			return nil
		}
		peerClocks := r.store.live.clocks()
		now := r.store.cfg.Clock.Now()
		r.mu.Lock()
		if r.readableLocked() >= target {
			r.mu.Unlock()
			return nil
		}
		if err := r.notLeaderLocked(); err != nil {
			r.mu.Unlock()
			return err
		}
		if r.txns != nil && r.txns.minPrepare > 0 && r.txns.minPrepare <= target {
			// An unresolved transaction may commit at or below target:
			// only its resolution (an apply) lets the range be read there.
			applied := r.appliedWaitLocked()
			r.mu.Unlock()
			select {
			case <-applied:
			case <-ctx.Done():
				return ctx.Err()
			}
			attempt--
			continue
		}
		if attempt == closeAtAttempts || target > now {
			// Beyond the clock, the side channel cannot reach target.
			r.mu.Unlock()
			if err := r.Close(ctx, target); err != nil {
				return err
			}
			// A prepare applied before the close holds the range below it.
			return r.WaitReadable(ctx, target)
		}
		moved := false
		if rev, index, ok := r.sideCloseLocked(now, peerClocks); ok {
			moved = r.installClosedLocked(rev, index)
		}
		done := r.readableLocked() >= target
		// Not yet: either entries at or below target still have to apply
		// (earlier terms' entries, or this leader's proposals stamped at
		// or below it), or the voters' clock evidence is short of it.
		applying := r.st.applied.Index < r.leaderSince
		for _, p := range r.inflight {
			applying = applying || p.ts <= target
		}
		applied := r.appliedWaitLocked()
		r.mu.Unlock()
		if moved {
			r.feed.PokeClosed()
		}
		switch {
		case done:
			return nil
		case applying:
			select {
			case <-applied:
			case <-ctx.Done():
				return ctx.Err()
			}
		default:
			if err := r.ReadIndex(ctx); err != nil {
				return err
			}
		}
	}
}

// ClosedPromise returns what this replica can promise other replicas of
// its range: the range never applies a write at or below rev, and a
// replica that has applied through index has applied every write at or
// below it (the form of a side-channel close).
func (r *Replica) ClosedPromise() (rev int64, index uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.readableLocked(), r.st.applied.Index
}
