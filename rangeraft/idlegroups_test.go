package rangeraft

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/rangekv/rangekv/txnproto"
)

// groupTestReplica is a replica with just what idle groups touch.
func groupTestReplica(s *Store, id, applied uint64) *Replica {
	r := &Replica{store: s, RangeID: id, log: zap.NewNop(), feed: NewFeed(0, 16),
		st: &raftStorage{applied: &txnproto.AppliedState{Index: applied}}}
	s.replicas[id] = r
	return r
}

func groupTestStore() *Store {
	return &Store{idle: newIdleGroups(), replicas: map[uint64]*Replica{}}
}

// joinForTest is joinIdleGroupLocked past its checks of raft state.
func joinForTest(t *testing.T, r *Replica, epochs map[uint64]uint64) {
	t.Helper()
	g := r.store.idle.join(r, []uint64{2, 3}, epochs)
	require.NotNil(t, g)
	r.idleGroup, r.grp, r.grpIndex = g, g.clock, r.st.applied.Index
	r.grouped.Store(true)
	g.clock.add(r)
}

// TestIdleGroupLeaveWithdrawsUnsentJoin: a range that joins and leaves
// between two rounds must reach the receivers neither as a join nor as a
// leave. (Receivers take an update's leaves before its joins: sent both,
// it would end a member there while it writes; the benchmark's closed
// timestamp check caught that.)
func TestIdleGroupLeaveWithdrawsUnsentJoin(t *testing.T) {
	leader, follower := groupTestStore(), groupTestStore()
	epochs := map[uint64]uint64{2: 1, 3: 1}
	clocks := map[uint64]clockEvidence{2: {stamp: 90, epoch: 1}, 3: {stamp: 95, epoch: 1}}
	x, y := groupTestReplica(leader, 7, 12), groupTestReplica(leader, 8, 20)
	fx, fy := groupTestReplica(follower, 7, 12), groupTestReplica(follower, 8, 20)

	// x joins and leaves within a round; y stays.
	joinForTest(t, x, epochs)
	joinForTest(t, y, epochs)
	x.leaveIdleGroupLocked()
	out, _, dropped := leader.idle.round(100, clocks)
	require.Empty(t, dropped)
	require.Len(t, out[2], 1)
	u := out[2][0]
	require.Empty(t, u.Leaves)
	require.Equal(t, []*txnproto.IdleGroupJoin{{RangeId: 8, AppliedIndex: 20}}, u.Joins)
	require.Equal(t, int64(95), u.Closed, "the quorum's clock: this node at 100, the others at 90 and 95")
	follower.idle.apply(follower, 1, out[2])
	require.Nil(t, fx.grp)
	require.NotNil(t, fy.grp)
	require.Equal(t, int64(95), fy.groupClosedLocked())

	// y, whose join went out, leaves and joins again in one round: the
	// receiver takes the leave, then the join.
	y.leaveIdleGroupLocked()
	y.st.applied.Index = 25
	joinForTest(t, y, epochs)
	out, _, _ = leader.idle.round(110, map[uint64]clockEvidence{2: {stamp: 105, epoch: 1}, 3: {stamp: 108, epoch: 1}})
	u = out[2][0]
	require.Equal(t, []uint64{8}, u.Leaves)
	require.Equal(t, []*txnproto.IdleGroupJoin{{RangeId: 8, AppliedIndex: 25}}, u.Joins)
	follower.idle.apply(follower, 1, out[2])
	require.Equal(t, uint64(25), fy.grpIndex)
	require.Zero(t, fy.groupClosedLocked(), "not applied through the new join index yet")
	fy.st.applied.Index = 25
	require.Equal(t, int64(108), fy.groupClosedLocked())
}

// TestIdleGroupDissolvesOnVote: a vote on any voter node (its epoch moves)
// dissolves the group, on the leader and on the receivers.
func TestIdleGroupDissolvesOnVote(t *testing.T) {
	leader, follower := groupTestStore(), groupTestStore()
	x := groupTestReplica(leader, 7, 12)
	fx := groupTestReplica(follower, 7, 12)
	joinForTest(t, x, map[uint64]uint64{2: 1, 3: 1})
	out, _, _ := leader.idle.round(100, map[uint64]clockEvidence{2: {stamp: 90, epoch: 1}, 3: {stamp: 95, epoch: 1}})
	follower.idle.apply(follower, 1, out[2])
	require.NotNil(t, fx.grp)

	out, _, dropped := leader.idle.round(120, map[uint64]clockEvidence{2: {stamp: 110, epoch: 1}, 3: {stamp: 115, epoch: 2}})
	require.Equal(t, []*Replica{x}, dropped)
	require.True(t, out[2][0].Dissolved)
	require.Zero(t, out[2][0].Closed, "no timestamp from a dissolved group")
	dropLeaderships(dropped)
	require.Nil(t, x.idleGroup)
	require.Nil(t, x.grp)
	follower.idle.apply(follower, 1, out[2])
	require.Nil(t, fx.grp)
	require.Zero(t, fx.groupClosedLocked())
}

// TestIdleGroupGapDropsEverything: a receiver that misses an update (a
// dropped batch may have held a leave) stops reading every group of that
// leader and asks it to dissolve them.
func TestIdleGroupGapDropsEverything(t *testing.T) {
	leader, follower := groupTestStore(), groupTestStore()
	follower.cfg.Resolve = func(uint64) (string, error) { return "127.0.0.1:1", nil }
	follower.log = zap.NewNop()
	follower.metrics = newMetrics(nil)
	follower.transport = newTransport(follower)
	t.Cleanup(follower.transport.stop)
	x, y := groupTestReplica(leader, 7, 12), groupTestReplica(leader, 8, 12)
	fx, fy := groupTestReplica(follower, 7, 12), groupTestReplica(follower, 8, 12)
	epochs := map[uint64]uint64{2: 1, 3: 1}
	joinForTest(t, x, epochs)
	joinForTest(t, y, epochs)
	out, _, _ := leader.idle.round(100, map[uint64]clockEvidence{2: {stamp: 90, epoch: 1}, 3: {stamp: 95, epoch: 1}})
	follower.idle.apply(follower, 1, out[2])
	require.NotNil(t, fx.grp)

	y.leaveIdleGroupLocked()
	lost, _, _ := leader.idle.round(110, map[uint64]clockEvidence{2: {stamp: 105, epoch: 1}, 3: {stamp: 108, epoch: 1}})
	require.Equal(t, []uint64{8}, lost[2][0].Leaves)
	next, _, _ := leader.idle.round(120, map[uint64]clockEvidence{2: {stamp: 115, epoch: 1}, 3: {stamp: 118, epoch: 1}})
	follower.idle.apply(follower, 1, next[2]) // the update with y's leave never came
	require.Nil(t, fx.grp, "every group of the sender is dropped")
	require.Nil(t, fy.grp)

	// Its request (idle_groups_lost) dissolves them on the leader, and x
	// joins a new group whose join the receiver gets.
	leader.idle.markLost(2)
	out, _, dropped := leader.idle.round(130, map[uint64]clockEvidence{2: {stamp: 125, epoch: 1}, 3: {stamp: 128, epoch: 1}})
	require.Equal(t, []*Replica{x}, dropped)
	dropLeaderships(dropped)
	joinForTest(t, x, epochs)
	more, _, _ := leader.idle.round(140, map[uint64]clockEvidence{2: {stamp: 135, epoch: 1}, 3: {stamp: 138, epoch: 1}})
	follower.idle.apply(follower, 1, append(out[2], more[2]...))
	require.NotNil(t, fx.grp)
	require.Equal(t, int64(138), fx.groupClosedLocked())
}

// TestFeedPokeClosedWakesOnlyClosedReaders: a move of the readable
// revision wakes the readers that wait for it (watchers over several
// ranges) and leaves readers of events alone: before this, every side-
// channel round woke every idle single-range watcher of the range.
func TestFeedPokeClosedWakesOnlyClosedReaders(t *testing.T) {
	f := NewFeed(0, 16)
	events, closed := make(chan struct{}, 1), make(chan struct{}, 1)
	_, _, _, wait := f.Since(0, 0)
	require.True(t, f.Park("events", wait, func() { events <- struct{}{} }))
	_, _, _, wait = f.Since(0, 0)
	require.True(t, f.ParkClosed("closed", wait, f.ClosedWait(), func() { closed <- struct{}{} }))

	f.PokeClosed()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the closed reader was not woken")
	}
	f.mu.Lock()
	_, stillParked := f.parked["events"]
	f.mu.Unlock()
	require.True(t, stillParked, "a reader of events was woken by a closed timestamp")

	// A stale closed wait is refused: the reader must look again.
	_, _, _, wait = f.Since(0, 0)
	cw := f.ClosedWait()
	f.PokeClosed()
	require.False(t, f.ParkClosed("closed", wait, cw, func() {}))

	f.Publish(1, nil)
	select {
	case <-events:
	case <-time.After(5 * time.Second):
		t.Fatal("a publish did not wake the reader of events")
	}
}

// TestApplyWakesClosedReadersWhenReadableMoves: an apply that raises the
// range's readable revision wakes the watchers waiting for it even when
// it publishes no event (here a Close command). Watchers over several
// ranges used to sleep through such a move until the next event or their
// 100 ms fallback; the same gap, after an apply that did publish, was
// most of the watch-latency tail (bench/RESULTS.md).
func TestApplyWakesClosedReadersWhenReadableMoves(t *testing.T) {
	s, _ := startSingleStore(t)
	res := put(t, s, "a")
	r := s.Replica(FirstUserRangeID)
	f := r.Feed()
	woken := make(chan struct{}, 1)
	_, _, _, wait := f.Since(res.Revision, 0)
	require.True(t, f.ParkClosed("reader", wait, f.ClosedWait(), func() { woken <- struct{}{} }))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, r.Close(ctx, s.cfg.Clock.Now()))
	select {
	case <-woken:
	case <-time.After(5 * time.Second):
		t.Fatal("a close that moved the readable revision woke nobody")
	}
}
