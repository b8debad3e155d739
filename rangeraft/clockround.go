package rangeraft

import (
	"context"
	"sync"
	"time"
)

// Clock rounds carry real-time order across ranges
// (docs/revisions.md, "Real-time order across ranges"). Revisions come
// from each range leader's HLC, and a client may go from one range's
// leader to another's between two requests, with nothing of the first
// node's clock travelling along. Two rules close that gap:
//
//  1. Acknowledgement: a response with revision R leaves only once a
//     majority of the cluster's nodes are known to have clocks at least R
//     (WaitClockQuorum); usually the raft round that committed it showed
//     that already.
//  2. Start: before a leader stamps a write or picks a read's revision it
//     runs a clock round (ClockRound): it asks every peer for its clock
//     and waits for answers sent after the question from a majority,
//     folding each into its HLC. That majority shares a node with the one
//     of rule 1, so the leader's clock is then past every revision
//     acknowledged before the request arrived.
//
// A round is a number in the clock_round field of the node's next batch
// to every peer; a peer echoes the highest round it received in
// clock_echo on every batch it sends, and sends one at once when asked.
// Concurrent requests share rounds.
//
// A restarted node's HLC starts from its wall clock, which can be behind
// a reading it vouched for before (one a faster peer pushed it to, by at
// most --max-clock-offset). So for that long after a restart it does not
// vouch: it answers no round and does not count itself in a majority
// (StoreConfig.ClockSettledAt).

// clockRounds is the node's side of clock rounds: what each peer echoed,
// and the requests waiting for a round.
type clockRounds struct {
	mu sync.Mutex
	// issued is the last round number handed out.
	issued uint64
	// echoed and stamp hold, per peer node, the highest round it echoed
	// and the newest HLC reading it sent (its clock was at least that).
	echoed map[uint64]uint64
	stamp  map[uint64]int64
	// waiters wait for their round, in issue (so round) order.
	waiters []*roundWaiter
}

type roundWaiter struct {
	round uint64
	ch    chan int64 // receives the highest stamp among the answers
}

// observe records a batch from node: the round it echoed and its HLC
// reading. It releases the waiters whose round need peers have now
// answered.
func (c *clockRounds) observe(node, echo uint64, stamp int64, need int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.echoed == nil {
		c.echoed, c.stamp = map[uint64]uint64{}, map[uint64]int64{}
	}
	if stamp > c.stamp[node] {
		c.stamp[node] = stamp
	}
	if echo > c.echoed[node] {
		c.echoed[node] = echo
	}
	// Also when the echo did not move: need may have fallen since (the
	// node's clock settled after a restart).
	if len(c.waiters) > 0 {
		c.releaseLocked(need)
	}
}

// releaseLocked completes every waiter whose round at least need peers
// have echoed.
func (c *clockRounds) releaseLocked(need int) {
	n := 0
	for ; n < len(c.waiters); n++ {
		w := c.waiters[n]
		answered, top := 0, int64(0)
		for node, e := range c.echoed {
			if e >= w.round {
				answered++
				top = max(top, c.stamp[node])
			}
		}
		if answered < need {
			break // later rounds have no more answers
		}
		w.ch <- top
	}
	clear(c.waiters[:n])
	c.waiters = c.waiters[n:]
}

// quorumAt reports whether at least need peers have sent clock readings
// of at least ts.
func (c *clockRounds) quorumAt(ts int64, need int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.stamp {
		if s >= ts {
			n++
		}
	}
	return n >= need
}

// roundNeed is how many peers make a majority of the cluster's nodes with
// this one, once its clock has settled (clockSettled), and without it
// before.
func (s *Store) roundNeed() int {
	size := s.cfg.ClusterSize
	if size == 0 {
		s.mu.RLock()
		size = len(s.peers) + 1
		s.mu.RUnlock()
	}
	need := size / 2 // + this node makes size/2+1
	if !s.clockSettled() {
		need++
	}
	return need
}

// clockSettled reports whether this node's clock can vouch for what it
// read before a restart (StoreConfig.ClockSettledAt): until then it
// neither answers clock rounds nor counts itself in their majorities.
func (s *Store) clockSettled() bool {
	return s.cfg.ClockSettledAt.IsZero() || !time.Now().Before(s.cfg.ClockSettledAt)
}

// ClockRound runs a clock round (rule 2 above): it returns once a
// majority of the cluster's nodes, this one included, have answered a
// question sent after the call began, with the highest clock reading
// among the answers; this node's HLC is then at least that reading. In
// a one-node cluster it returns the clock's current reading. It fails
// only when ctx ends first (no majority reachable).
func (s *Store) ClockRound(ctx context.Context) (int64, error) {
	return s.StartClockRound().Wait(ctx)
}

// PendingClockRound is a clock round started by StartClockRound.
type PendingClockRound struct {
	s *Store
	w *roundWaiter // nil without peers
}

// StartClockRound starts a clock round and returns without waiting, so
// that the caller can wait for something else meanwhile (a linearizable
// read's ReadIndex).
func (s *Store) StartClockRound() PendingClockRound {
	s.mu.RLock()
	peers := s.peers
	s.mu.RUnlock()
	if len(peers) == 0 {
		return PendingClockRound{s: s}
	}
	w := &roundWaiter{ch: make(chan int64, 1)}
	c := &s.rounds
	c.mu.Lock()
	c.issued++
	w.round = c.issued
	c.waiters = append(c.waiters, w)
	c.mu.Unlock()
	for _, node := range peers {
		s.transport.askClock(node, w.round)
	}
	return PendingClockRound{s: s, w: w}
}

// Cancel abandons the round.
func (p PendingClockRound) Cancel() {
	if p.w != nil {
		p.s.rounds.drop(p.w)
	}
}

// drop removes a waiter that gave up.
func (c *clockRounds) drop(w *roundWaiter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, x := range c.waiters {
		if x == w {
			c.waiters = append(c.waiters[:i], c.waiters[i+1:]...)
			return
		}
	}
}

// Wait waits for the round: see ClockRound.
func (p PendingClockRound) Wait(ctx context.Context) (int64, error) {
	s := p.s
	if p.w == nil {
		// One node: its clock, once it can vouch for it.
		if !s.clockSettled() {
			select {
			case <-time.After(time.Until(s.cfg.ClockSettledAt)):
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		return s.cfg.Clock.Now(), nil
	}
	select {
	case top := <-p.w.ch:
		return top, nil
	case <-ctx.Done():
		s.rounds.drop(p.w)
		return 0, ctx.Err()
	}
}

// WaitClockQuorum returns once a majority of the cluster's nodes are
// known to have clocks at least rev (rule 1 above), running a clock
// round when the readings at hand do not show it. rev must be at or
// below this node's clock (a revision it applied or serves).
func (s *Store) WaitClockQuorum(ctx context.Context, rev int64) error {
	// rev is at or below this node's clock already, except for a
	// revision it learnt without its clock (a closed timestamp a leader
	// sent along with a forwarded read): take it.
	_ = s.cfg.Clock.Update(rev)
	for !s.rounds.quorumAt(rev, s.roundNeed()) {
		// The round's questions carry this node's clock, at least rev,
		// so the answers normally come from clocks at least rev; a peer
		// that refused the stamp as too far ahead does not count, and
		// the next round asks again.
		if _, err := s.ClockRound(ctx); err != nil {
			return err
		}
	}
	return nil
}
