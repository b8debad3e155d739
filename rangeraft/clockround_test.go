package rangeraft

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestClockRoundsRelease checks that a round completes only on answers
// to it or a later round from enough peers, in round order, with the
// highest clock reading among the answering peers.
func TestClockRoundsRelease(t *testing.T) {
	var c clockRounds
	c.issued = 100
	wait := func() *roundWaiter {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.issued++
		w := &roundWaiter{round: c.issued, ch: make(chan int64, 1)}
		c.waiters = append(c.waiters, w)
		return w
	}
	done := func(w *roundWaiter) (int64, bool) {
		select {
		case ts := <-w.ch:
			return ts, true
		default:
			return 0, false
		}
	}
	const need = 2 // a five-node cluster: two peers and this node

	w1, w2 := wait(), wait() // rounds 101, 102
	c.observe(1, 100, 50, need)
	c.observe(2, 100, 60, need)
	_, ok := done(w1)
	require.False(t, ok, "answers to an earlier round do not count")

	c.observe(1, 101, 70, need)
	_, ok = done(w1)
	require.False(t, ok, "one peer is not enough")

	c.observe(3, 102, 65, need)
	ts, ok := done(w1)
	require.True(t, ok)
	require.Equal(t, int64(70), ts, "highest reading among the answers")
	_, ok = done(w2)
	require.False(t, ok, "peer 1 has not answered round 102")

	c.observe(2, 102, 80, need)
	ts, ok = done(w2)
	require.True(t, ok)
	require.Equal(t, int64(80), ts, "peer 1 did not answer round 102, so its reading does not count")
	require.Empty(t, c.waiters)

	require.True(t, c.quorumAt(70, need))
	require.False(t, c.quorumAt(75, need), "only peer 2 has shown 75")
	c.observe(1, 0, 40, need) // an older reading never lowers one
	require.True(t, c.quorumAt(70, need))
}

// TestClockRoundsReleaseWhenNeedFalls: a round one answer short is
// released by the next batch once fewer answers are needed (the node's own
// clock settled after a restart), though that batch echoes nothing new.
func TestClockRoundsReleaseWhenNeedFalls(t *testing.T) {
	var c clockRounds
	c.issued = 7
	w := &roundWaiter{round: 8, ch: make(chan int64, 1)}
	c.waiters = append(c.waiters, w)
	c.observe(1, 8, 50, 2)
	require.Len(t, c.waiters, 1, "one answer of two")
	c.observe(1, 8, 55, 1) // a ping, same echo; this node now counts
	select {
	case ts := <-w.ch:
		require.Equal(t, int64(55), ts)
	default:
		t.Fatal("the waiter was not released when fewer answers were needed")
	}
}
