package node

import (
	"context"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rangekv/rangekv/rangeraft"
)

// readCloses batches the closes that linearizable reads on follower
// replicas ask their leaders for, as etcd batches concurrent linearizable
// reads into one ReadIndex round (its linearizableReadLoop): per range, at
// most one CloseRange is in flight, and the reads that arrive meanwhile
// share the next one, at the highest of their revisions.
type readCloses struct {
	mu     sync.Mutex
	ranges map[uint64]*closeQueue
	// reads counts the reads served through closeForRead, closes the
	// closes sent for them: reads/closes is the batching factor.
	reads, closes prometheus.Counter
}

// init registers the counters (Node start).
func (c *readCloses) init(reg prometheus.Registerer) {
	c.reads = prometheus.NewCounter(prometheus.CounterOpts{Name: "rangekv_follower_linearizable_reads_total",
		Help: "Linearizable reads served by this node's follower replicas after a close by their leader."})
	c.closes = prometheus.NewCounter(prometheus.CounterOpts{Name: "rangekv_follower_read_closes_total",
		Help: "Closes this node asked range leaders for on behalf of follower reads (concurrent reads share one)."})
	reg.MustRegister(c.reads, c.closes)
}

// closeQueue is one range's: running while a goroutine sends closes;
// next collects the reads for the next close.
type closeQueue struct {
	running bool
	next    *closeWaiters
}

// closeWaiters is the reads sharing one close: target is the highest
// revision they need; err is set before done closes.
type closeWaiters struct {
	target int64
	done   chan struct{}
	err    error
}

// closeForRead makes the follower replica r readable at t or above: a
// close at some T >= t that r's leader made after confirming its
// leadership (ReadIndex, raft thesis §6.4) once this call began, installed
// on r (closeOnLeader). The caller waits for r to apply up to it
// (Replica.WaitReadable). Concurrent calls for one range share closes.
func (n *Node) closeForRead(ctx context.Context, r *rangeraft.Replica, t int64) error {
	c := &n.readCloses
	c.reads.Inc()
	c.mu.Lock()
	if c.ranges == nil {
		c.ranges = map[uint64]*closeQueue{}
	}
	q := c.ranges[r.RangeID]
	if q == nil {
		q = &closeQueue{}
		c.ranges[r.RangeID] = q
	}
	if q.next == nil {
		q.next = &closeWaiters{done: make(chan struct{})}
	}
	w := q.next
	w.target = max(w.target, t)
	if !q.running {
		q.running = true
		n.goBackground(func() { n.runCloses(r, q) })
	}
	c.mu.Unlock()
	select {
	case <-w.done:
		return w.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// runCloses sends q's closes one after another until no read waits. Each
// close is sent after every read sharing it arrived, so its ReadIndex
// round postdates them all.
func (n *Node) runCloses(r *rangeraft.Replica, q *closeQueue) {
	c := &n.readCloses
	for {
		c.mu.Lock()
		w := q.next
		q.next = nil
		if w == nil {
			q.running = false
			if c.ranges[r.RangeID] == q {
				delete(c.ranges, r.RangeID)
			}
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		c.closes.Inc()
		ctx, cancel := context.WithTimeout(n.lifetime, n.reqTimeout)
		_, w.err = n.closeOnLeader(ctx, r, w.target)
		cancel()
		close(w.done)
	}
}
