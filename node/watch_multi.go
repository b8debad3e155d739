package node

import (
	"bytes"
	"context"
	"runtime"
	"slices"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/zap"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/rangeraft"
)

// closeRetryDelay spaces closes that failed (no leader, a split racing).
const closeRetryDelay = 50 * time.Millisecond

// rangeMark is a range as a multi-range pull saw it: one descriptor read.
type rangeMark struct {
	id, generation uint64
	start, end     string
}

// runMulti delivers the events of a watcher whose keys lie in several
// ranges (docs/watch.md, "Merging range feeds"). Each pull:
//
//  1. resolves the ranges covering the keys (they split under the watch);
//  2. takes R, the lowest readable revision among them: every range has
//     applied each of its writes at or below R and will never write there
//     again (its applied revision or closed revision is at least R), so
//     the events at or below R are final;
//  3. collects each range's events in (next-1, R] from its feed, or from
//     MVCC history when the feed's window has moved past, keeping only
//     keys in that range's current span (a pre-split entry of the left
//     range also holds the right range's keys, which the right range
//     reports), and merges them by revision;
//  4. delivers them if no range changed meanwhile, and advances next past
//     R.
//
// When nothing is final but some range has published beyond next (or a
// progress request asked for a revision beyond it, advanceTo), the ranges
// behind are waited for: their leaders' side-channel closes (every
// --closed-timestamp-interval) release the events. Should that not happen
// within closeFallback, the watcher closes them itself (a Close command
// through each one's raft log). Otherwise the watcher waits for any of
// the ranges to publish.
func (w *watcher) runMulti() {
	for {
		seen := w.wakes.Load()
		version := w.ws.n.store.SpanVersion()
		rs, marks := w.spanCache.rs, w.spanCache.marks
		if w.spanCache.version != version || rs == nil {
			var err error
			if rs, err = w.ws.n.spanRanges(w.span.Start, w.span.End); err != nil {
				w.cancelWith(err.Error())
				return
			}
			marks = markRanges(rs)
			if !tiles(marks, w.span) {
				// A split landed between listing the ranges and reading
				// their descriptors: the list misses the new range. List
				// again.
				runtime.Gosched()
				continue
			}
			w.spanCache.rs, w.spanCache.marks, w.spanCache.version = rs, marks, version
		}
		w.mu.Lock()
		w.rs, w.r = rs, rs[0]
		next := w.next
		w.mu.Unlock()

		// The wait channels first: a publish, or a move of a range's
		// readable revision, after them closes them.
		waits := make([]<-chan struct{}, 0, len(rs))
		closedWaits := make([]<-chan struct{}, 0, len(rs))
		feeds := make([]*rangeraft.Feed, 0, len(rs))
		for _, r := range rs {
			_, _, _, wait := r.Feed().Since(next-1, 0)
			waits = append(waits, wait)
			closedWaits = append(closedWaits, r.Feed().ClosedWait())
			feeds = append(feeds, r.Feed())
		}
		resolved, newest := rs[0].ReadableRevision(), w.advanceTo.Load()
		for _, r := range rs {
			resolved = min(resolved, r.ReadableRevision())
			newest = max(newest, r.Feed().Last())
		}
		if resolved < next {
			if newest >= next {
				// Events are waiting on ranges behind.
				now := time.Now()
				if w.behindSince.IsZero() {
					w.behindSince = now
				}
				w.noteStall(rs, next, now)
				wait := w.ws.n.closeFallback() - now.Sub(w.behindSince)
				if wait <= 0 {
					w.behindSince = time.Time{}
					if !w.closeBehind(rs, newest) {
						return
					}
					continue
				}
				if w.fallback == nil {
					w.fallback = time.AfterFunc(wait, w.wakeUp)
				} else {
					w.fallback.Reset(wait)
				}
			} else {
				w.behindSince = time.Time{}
			}
			select {
			case <-w.cancelc:
			case <-w.ws.ctx.Done():
			default:
				w.park(feeds, waits, closedWaits, seen)
			}
			return
		}

		evs, upTo, ok := w.collect(rs, next, resolved)
		if !ok {
			return
		}
		if w.ws.n.store.SpanVersion() != version && !slices.Equal(marks, markRanges(rs)) {
			continue // a range split under the pull: take it again
		}
		w.behindSince, w.stalledSince, w.stallLogged = time.Time{}, time.Time{}, false
		if !w.deliver(evs, upTo) {
			return
		}
	}
}

// closeFallback is how long a multi-range watcher waits for side-channel
// closes to release events waiting on ranges behind before it closes
// them through their raft logs: a few side-channel intervals, or nothing
// when the side channel is off.
func (n *Node) closeFallback() time.Duration {
	if n.cfg.ClosedTimestampInterval <= 0 {
		return 0
	}
	return max(5*n.cfg.ClosedTimestampInterval, 50*time.Millisecond)
}

// markRanges notes each range's ID, descriptor generation and span, each
// from one read of its descriptor.
func markRanges(rs []*rangeraft.Replica) []rangeMark {
	out := make([]rangeMark, len(rs))
	for i, r := range rs {
		start, end, gen := r.SpanGeneration()
		out[i] = rangeMark{r.RangeID, gen, string(start), string(end)}
	}
	return out
}

// tiles reports whether the marked ranges, in order, cover span without
// gap: the list is complete for the descriptors it was checked against.
// (Found by the watch-validation test: a split between spanRanges and
// markRanges left a list without the new right-hand range whose marks
// matched, and the moved keys' events were skipped.)
func tiles(marks []rangeMark, span kvstore.Span) bool {
	if len(marks) == 0 || marks[0].start > string(span.Start) {
		return false
	}
	for i := 1; i < len(marks); i++ {
		if marks[i].start != marks[i-1].end {
			return false
		}
	}
	return marks[len(marks)-1].end >= string(span.End)
}

// collect returns the watcher's events in [next, upTo] from every range,
// in revision order (ranges in key order within a revision), where upTo
// is resolved or less when a feed returned only part of the way.
func (w *watcher) collect(rs []*rangeraft.Replica, next, resolved int64) (evs []*mvccpb.Event, upTo int64, ok bool) {
	type tagged struct {
		rev int64
		ev  *mvccpb.Event
	}
	var all []tagged
	upTo = resolved
	for _, r := range rs {
		start, end := r.Span()
		span := intersect(w.span, kvstore.Span{Start: start, End: end})
		entries, inWindow, _, _ := r.Feed().Since(next-1, maxFeedEntriesPerPull)
		if !inWindow {
			hist, to, ok := w.history(r, span, next, resolved)
			if !ok {
				return nil, 0, false
			}
			upTo = min(upTo, to)
			for _, ev := range hist {
				all = append(all, tagged{ev.Kv.ModRevision, ev})
			}
			continue
		}
		if len(entries) == maxFeedEntriesPerPull {
			upTo = min(upTo, entries[len(entries)-1].Revision)
		}
		for _, e := range entries {
			if e.Revision > resolved {
				break
			}
			for _, ev := range w.appendMatching(nil, e.Events) {
				if spanHolds(span, ev.Kv.Key) {
					all = append(all, tagged{e.Revision, ev})
				}
			}
		}
	}
	slices.SortStableFunc(all, func(a, b tagged) int {
		switch {
		case a.rev < b.rev:
			return -1
		case a.rev > b.rev:
			return 1
		}
		return 0
	})
	for _, t := range all {
		if t.rev > upTo {
			break
		}
		evs = append(evs, t.ev)
	}
	return evs, upTo, true
}

// spanHolds reports whether the user key lies in the span.
func spanHolds(span kvstore.Span, key []byte) bool {
	k := kvstore.UserSpanKey(key)
	return bytes.Compare(k, span.Start) >= 0 && bytes.Compare(k, span.End) < 0
}

// history reads the watcher's events of span in [from, to] from r's MVCC
// history, cancelling the watch if from is compacted. It returns the
// revision it read through.
func (w *watcher) history(r *rangeraft.Replica, span kvstore.Span, from, to int64) ([]*mvccpb.Event, int64, bool) {
	view := r.NewReadView()
	defer view.Close()
	if from < view.CompactRevision {
		w.ws.remove(w.id)
		w.ws.send(&pb.WatchResponse{Header: w.ws.header(view.Revision), WatchId: w.id,
			CompactRevision: view.CompactRevision, Canceled: true})
		return nil, 0, false
	}
	to = min(to, view.Revision)
	var evs []*mvccpb.Event
	err := kvstore.MVCCHistory(view.Reader, intersect(span, view.Span), from, to, func(ev *mvccpb.Event) bool {
		evs = w.appendMatching(evs, []*mvccpb.Event{ev})
		return true
	})
	if err != nil {
		w.ws.n.log.Error("watch history read failed", zap.Int64("watch-id", w.id), zap.Error(err))
		w.cancelWith(err.Error())
		return nil, 0, false
	}
	return evs, to, true
}

// closeBehind closes every range of rs not yet readable at rev, at rev or
// the clock's now if later, in parallel, and waits until the local
// replicas have applied the closes. A failure
// (no leader yet, a split racing) is retried by the caller's next pull
// after a pause. It reports false when the watcher ended.
func (w *watcher) closeBehind(rs []*rangeraft.Replica, rev int64) bool {
	ctx, cancel := context.WithTimeout(w.ws.ctx, w.ws.n.reqTimeout)
	defer cancel()
	go func() {
		select {
		case <-w.cancelc:
			cancel()
		case <-ctx.Done():
		}
	}()
	// Close at the clock's now rather than at rev (never below it): one
	// round then releases whatever else was published meanwhile. All
	// ranges at once: a close is a raft round trip on each. A node whose
	// clock is off (clockMonitor) closes nothing at its own now.
	if w.ws.n.clockCheck.get() == "" {
		rev = max(rev, w.ws.n.clock.Now())
	}
	var wg sync.WaitGroup
	for _, r := range rs {
		if r.ReadableRevision() >= rev {
			continue
		}
		wg.Go(func() {
			// A watch needs only the promise, not a linearizable "now":
			// on a local leader the close goes straight into the log,
			// without closeLocal's ReadIndex round.
			if r.Status().IsLeader && r.Close(ctx, rev) == nil {
				return
			}
			if _, err := w.ws.n.closeOnLeader(ctx, r, rev); err == nil {
				_ = r.WaitReadable(ctx, rev)
			}
		})
	}
	wg.Wait()
	select {
	case <-w.cancelc:
		return false
	case <-w.ws.ctx.Done():
		return false
	default:
	}
	if ctx.Err() != nil || slices.ContainsFunc(rs, func(r *rangeraft.Replica) bool { return r.ReadableRevision() < rev }) {
		select {
		case <-w.cancelc:
			return false
		case <-w.ws.ctx.Done():
			return false
		case <-time.After(closeRetryDelay):
		}
	}
	return true
}

// cancelWith ends the watch with a reason.
func (w *watcher) cancelWith(reason string) {
	w.ws.remove(w.id)
	w.ws.send(&pb.WatchResponse{Header: w.ws.header(0), WatchId: w.id, Canceled: true, CancelReason: reason})
}

// watchStallWarning is how long a multi-range watcher may hold events
// back behind a range before it logs which ranges hold it.
const watchStallWarning = 5 * time.Second

// noteStall logs, once per stall, the ranges that have kept the watcher's
// events back for watchStallWarning: each one's readable revision, its
// feed's last revision, and its unresolved intents and records.
func (w *watcher) noteStall(rs []*rangeraft.Replica, next int64, now time.Time) {
	if w.stalledSince.IsZero() {
		w.stalledSince = now
	}
	if w.stallLogged || now.Sub(w.stalledSince) < watchStallWarning {
		return
	}
	w.stallLogged = true
	for _, r := range rs {
		readable := r.ReadableRevision()
		if readable >= next {
			continue
		}
		intents, records := r.TxnCounts()
		st := r.Status()
		w.ws.n.log.Warn("watch held back behind a range",
			zap.Int64("watch-id", w.id), zap.Duration("for", now.Sub(w.stalledSince)),
			zap.Uint64("range-id", r.RangeID), zap.Int64("next-revision", next),
			zap.Int64("readable-revision", readable), zap.Int64("feed-last", r.Feed().Last()),
			zap.Int("intents", intents), zap.Int("records", records),
			zap.Bool("leader", st.IsLeader), zap.Uint64("leader-node", st.LeaderNode))
	}
}
