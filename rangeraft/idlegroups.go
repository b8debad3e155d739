package rangeraft

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rangekv/rangekv/txnproto"
)

// Idle groups (docs/closed-timestamps.md, "Idle groups"), after
// CockroachDB's side transport: a leader closes all its quiesced ranges
// with one timestamp per group per round instead of one per range.
//
// A quiesced range this node leads joins the group of its voter set when
// its clock evidence is fresh (every voter's evidence was taken at the
// vote epoch its node still has). Every side-channel round the leader
// computes the group's timestamp T from the node-level clock readings of
// the voters, as quorumClock does for one range, and sends each voter's
// node one update: the leaves and joins since the last round, then T.
// Receivers raise the readable revision of every member replica that has
// applied through its join index to T. Safety is the side channel's
// (sideCloseLocked), for each member:
//
//  1. Members have no proposal in flight and have applied every entry.
//     A member leaves (unquiesceLocked) before it stamps a proposal, and
//     T is read from the clock before the round takes the leaves: a
//     proposal that left after that is stamped above T, and one that left
//     before travels as a leave ahead of T.
//  2. A member joined only with fresh evidence from every voter, at the
//     epochs the group holds; a change of any voter node's epoch (a vote
//     anywhere on it, or its restart) dissolves the group. So T is at
//     most what a majority of voters have shown while casting no vote,
//     and no later leader writes at or below it.
//
// Updates to one node are numbered without gaps. A receiver that sees a
// gap (a batch was dropped) drops every group of that sender, as a leave
// may have been lost, and asks it (idle_groups_lost) to dissolve them;
// their members join new groups, whose joins it then receives.

// idleGroups is the store's state of idle groups: those it leads, and the
// group clocks of other leaders that its replicas read.
type idleGroups struct {
	mu     sync.Mutex
	nextID uint64
	byKey  map[string]*idleGroup
	// seq is the last update number sent to each node; lost the nodes
	// that reported a gap.
	seq  map[uint64]uint64
	lost map[uint64]bool

	// rmu guards remote (lock order: rmu, then a replica's mu; never mu
	// and rmu together).
	rmu    sync.Mutex
	remote map[uint64]*remoteGroups
}

// idleGroup is a group this node leads: ranges with the same voter nodes.
type idleGroup struct {
	id    uint64
	key   string
	nodes []uint64          // the voters' nodes other than this one
	epoch map[uint64]uint64 // each of those nodes' vote epoch
	// members, and the changes not yet sent.
	members   map[uint64]*Replica
	joins     []*txnproto.IdleGroupJoin
	leaves    []uint64
	clock     *groupClock // read by this node's own member replicas
	sent      int64       // the last timestamp sent
	dissolved bool
}

// remoteGroups are one leader node's groups as this node follows them.
type remoteGroups struct {
	lastSeq uint64
	groups  map[uint64]*groupClock
}

// groupClock is a group's closed timestamp as one node's member replicas
// read it (Replica.readableLocked), with those replicas.
type groupClock struct {
	closed  atomic.Int64
	mu      sync.Mutex
	members map[*Replica]struct{}
	// listed is members as a slice, rebuilt after a change (nil): every
	// round walks it, and members change far less often than rounds run.
	listed []*Replica
}

func newGroupClock() *groupClock { return &groupClock{members: map[*Replica]struct{}{}} }

func (g *groupClock) add(r *Replica) {
	g.mu.Lock()
	g.members[r] = struct{}{}
	g.listed = nil
	g.mu.Unlock()
}

func (g *groupClock) remove(r *Replica) {
	g.mu.Lock()
	delete(g.members, r)
	g.listed = nil
	g.mu.Unlock()
}

// drop takes r out of g, on both sides: r stops reading g. The caller
// holds r.mu.
func (g *groupClock) drop(r *Replica) {
	if r.grp == g {
		r.grp = nil
	}
	g.remove(r)
}

// list returns the members; the slice is shared and must not be changed.
func (g *groupClock) list() []*Replica {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.listed == nil {
		g.listed = make([]*Replica, 0, len(g.members))
		for r := range g.members {
			g.listed = append(g.listed, r)
		}
	}
	return g.listed
}

// advance raises the clock to t and wakes the members' waiters; it
// reports whether it rose.
func (g *groupClock) advance(t int64) bool {
	for {
		cur := g.closed.Load()
		if t <= cur {
			return false
		}
		if g.closed.CompareAndSwap(cur, t) {
			break
		}
	}
	for _, r := range g.list() {
		r.wakeReaders()
	}
	return true
}

func newIdleGroups() *idleGroups {
	seed := uint64(time.Now().UnixNano()) // never repeats across restarts
	return &idleGroups{nextID: seed, byKey: map[string]*idleGroup{}, seq: map[uint64]uint64{},
		lost: map[uint64]bool{}, remote: map[uint64]*remoteGroups{}}
}

// joinIdleGroupLocked adds the quiesced range r leads to the idle group
// of its voters when its evidence allows (see above). peerClocks are the
// node-level clock readings.
func (r *Replica) joinIdleGroupLocked(peerClocks map[uint64]clockEvidence) bool {
	if r.idleGroup != nil || !r.quiesced || r.leaderTerm == 0 || r.st.applied.Index < r.leaderSince ||
		len(r.inflight) > 0 || len(r.st.confState.GetVotersOutgoing()) > 0 ||
		len(r.st.confState.GetVoters()) != len(r.desc.Replicas) {
		return false
	}
	var nodes []uint64
	epoch := map[uint64]uint64{}
	for _, rd := range r.desc.Replicas {
		if rd.ReplicaId == r.replicaID {
			continue
		}
		ev := r.evidence[rd.ReplicaId]
		pc, ok := peerClocks[rd.NodeId]
		if ev.stamp == 0 || !ok || pc.epoch != ev.epoch {
			return false
		}
		nodes = append(nodes, rd.NodeId)
		epoch[rd.NodeId] = ev.epoch
	}
	slices.Sort(nodes)
	g := r.store.idle.join(r, nodes, epoch)
	if g == nil {
		return false
	}
	r.idleGroup = g
	r.grp, r.grpIndex = g.clock, r.st.applied.Index
	g.clock.add(r)
	r.grouped.Store(true)
	return true
}

// join adds r to the group of nodes, forming it if needed; nil when a
// group of those nodes holds other epochs (it dissolves at the next
// round).
func (s *idleGroups) join(r *Replica, nodes []uint64, epoch map[uint64]uint64) *idleGroup {
	key := fmt.Sprint(nodes)
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.byKey[key]
	if g == nil {
		s.nextID++
		g = &idleGroup{id: s.nextID, key: key, nodes: nodes, epoch: epoch, members: map[uint64]*Replica{}, clock: newGroupClock()}
		s.byKey[key] = g
	}
	for n, e := range epoch {
		if g.epoch[n] != e {
			return nil
		}
	}
	g.members[r.RangeID] = r
	g.joins = append(g.joins, &txnproto.IdleGroupJoin{RangeId: r.RangeID, AppliedIndex: r.st.applied.Index})
	return g
}

// leaveIdleGroupLocked takes r out of the group it leads (before it
// proposes, wakes or stops leading).
func (r *Replica) leaveIdleGroupLocked() {
	g := r.idleGroup
	if g == nil {
		return
	}
	r.unsetIdleGroupLocked()
	s := r.store.idle
	s.mu.Lock()
	if g.members[r.RangeID] == r {
		delete(g.members, r.RangeID)
		// A join not sent yet is withdrawn instead: receivers take an
		// update's leaves before its joins, so both would leave the
		// range a member there (found by the closed-timestamp check).
		pending := slices.IndexFunc(g.joins, func(j *txnproto.IdleGroupJoin) bool { return j.RangeId == r.RangeID })
		switch {
		case g.dissolved:
		case pending >= 0:
			g.joins = slices.Delete(g.joins, pending, pending+1)
		default:
			g.leaves = append(g.leaves, r.RangeID)
		}
	}
	s.mu.Unlock()
}

// ownClose is a group's timestamp for this node's own member replicas.
type ownClose struct {
	clock  *groupClock
	closed int64
}

// round runs one side-channel round of the groups this node leads: now
// is the clock's reading taken before the round (so before any leave it
// takes), peerClocks the nodes' clock readings. It returns the updates
// for each node, the timestamps of the groups that remain for this
// node's own replicas, and the members of dissolved groups, whose
// replicas must drop their membership.
func (s *idleGroups) round(now int64, peerClocks map[uint64]clockEvidence) (out map[uint64][]*txnproto.IdleGroupUpdate, own []ownClose, dropped []*Replica) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out = map[uint64][]*txnproto.IdleGroupUpdate{}
	send := func(node uint64, u *txnproto.IdleGroupUpdate) {
		s.seq[node]++
		if s.seq[node] == 1 {
			s.seq[node] = uint64(time.Now().UnixNano()) // a fresh sender never continues an old sequence
		}
		out[node] = append(out[node], &txnproto.IdleGroupUpdate{GroupId: u.GroupId, Seq: s.seq[node],
			Leaves: u.Leaves, Joins: u.Joins, Closed: u.Closed, Dissolved: u.Dissolved})
	}
	dissolve := func(g *idleGroup) {
		g.dissolved = true
		delete(s.byKey, g.key)
		for _, n := range g.nodes {
			send(n, &txnproto.IdleGroupUpdate{GroupId: g.id, Dissolved: true})
		}
		for _, r := range g.members {
			dropped = append(dropped, r)
		}
		clear(g.members)
	}
	for _, g := range s.byKey {
		valid := true
		for _, n := range g.nodes {
			if pc, ok := peerClocks[n]; !ok || pc.epoch != g.epoch[n] || s.lost[n] {
				valid = false
			}
		}
		if !valid {
			dissolve(g)
			continue
		}
		stamps := make([]int64, 0, len(g.nodes)+1)
		stamps = append(stamps, now)
		for _, n := range g.nodes {
			stamps = append(stamps, peerClocks[n].stamp)
		}
		t := min(now, quorumOf(stamps))
		u := &txnproto.IdleGroupUpdate{GroupId: g.id, Leaves: g.leaves, Joins: g.joins}
		g.leaves, g.joins = nil, nil
		if t > g.sent {
			u.Closed, g.sent = t, t
		}
		if u.Closed != 0 || len(u.Leaves) > 0 || len(u.Joins) > 0 {
			for _, n := range g.nodes {
				send(n, u)
			}
		}
		if len(g.members) == 0 {
			delete(s.byKey, g.key) // its leaves went out above
			continue
		}
		own = append(own, ownClose{g.clock, g.sent})
	}
	clear(s.lost)
	return out, own, dropped
}

// dropLeaderships clears the membership of replicas whose group
// dissolved.
func dropLeaderships(rs []*Replica) {
	for _, r := range rs {
		r.mu.Lock()
		if g := r.idleGroup; g != nil && g.dissolved {
			r.unsetIdleGroupLocked()
		}
		r.mu.Unlock()
	}
}

// unsetIdleGroupLocked clears r's membership, as leader, of its group,
// on r's side only.
func (r *Replica) unsetIdleGroupLocked() {
	g := r.idleGroup
	r.idleGroup = nil
	r.grouped.Store(false)
	g.clock.drop(r)
}

// markLost records that node lost an update: the groups including it
// dissolve at the next round.
func (s *idleGroups) markLost(node uint64) {
	s.mu.Lock()
	s.lost[node] = true
	s.mu.Unlock()
}

// apply applies a leader node's updates on this node's replicas.
func (s *idleGroups) apply(st *Store, from uint64, updates []*txnproto.IdleGroupUpdate) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	rg := s.remote[from]
	if rg == nil {
		rg = &remoteGroups{groups: map[uint64]*groupClock{}}
		s.remote[from] = rg
	}
	for _, u := range updates {
		if rg.lastSeq != 0 && u.Seq != rg.lastSeq+1 {
			s.dropRemoteLocked(st, rg, from)
		}
		rg.lastSeq = u.Seq
		gc := rg.groups[u.GroupId]
		if u.Dissolved {
			if gc != nil {
				clearMembers(gc)
				delete(rg.groups, u.GroupId)
			}
			continue
		}
		if gc == nil {
			gc = newGroupClock()
			rg.groups[u.GroupId] = gc
		}
		for _, id := range u.Leaves {
			if r := st.Replica(id); r != nil {
				r.mu.Lock()
				gc.drop(r)
				r.mu.Unlock()
			}
		}
		for _, j := range u.Joins {
			r := st.Replica(j.RangeId)
			if r == nil {
				// Not here yet (a split this node has not applied):
				// the group cannot close it here. Have it formed again.
				s.dropRemoteLocked(st, rg, from)
				break
			}
			r.mu.Lock()
			r.grp, r.grpIndex = gc, j.AppliedIndex
			r.mu.Unlock()
			gc.add(r)
		}
		if u.Closed != 0 && rg.groups[u.GroupId] == gc {
			gc.advance(u.Closed)
		}
	}
}

// dropRemoteLocked forgets every group of from (an update may have been
// lost) and asks it to dissolve them.
func (s *idleGroups) dropRemoteLocked(st *Store, rg *remoteGroups, from uint64) {
	for id, gc := range rg.groups {
		clearMembers(gc)
		delete(rg.groups, id)
	}
	st.transport.enqueue(from, outgoing{idleLost: true})
}

// clearMembers takes every replica out of gc.
func clearMembers(gc *groupClock) {
	for _, r := range gc.list() {
		r.mu.Lock()
		gc.drop(r)
		r.mu.Unlock()
	}
}

// groupClosedLocked is the group timestamp r reads, or 0.
func (r *Replica) groupClosedLocked() int64 {
	if r.grp == nil || r.st.applied.Index < r.grpIndex {
		return 0
	}
	return r.grp.closed.Load()
}

// wakeReaders wakes whatever waits on r's readable revision: WaitReadable
// callers and the watchers parked on its feed.
func (r *Replica) wakeReaders() {
	if r.readersWaiting.Load() {
		r.mu.Lock()
		r.signalAppliedLocked()
		r.mu.Unlock()
	}
	r.feed.PokeClosed()
}
