package rangeraft

import (
	"sync"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// FeedEntry is every event one applied command produced, in operation
// order, all at Revision.
type FeedEntry struct {
	Revision int64
	Events   []*mvccpb.Event
}

// Feed is a range's stream of applied events, kept in memory as a bounded
// window. Readers pull: a watcher remembers the last revision it has and
// asks for what follows, so a slow reader never blocks apply. Events older
// than the window are read from the engine's MVCC history instead.
//
// Invariant: every event with Floor < revision <= Last is in entries, in
// revision order.
type Feed struct {
	mu        sync.Mutex
	entries   []FeedEntry
	events    int
	maxEvents int
	floor     int64
	last      int64
	// notify is closed on the next change; made only when a reader asks
	// for it (Since), so that changes nobody waits for cost nothing.
	notify chan struct{}
	// parked readers to call back on the next change (Park).
	parked map[any]func()
	// closedNotify and closedParked are the same for readers that also
	// wait for the range's readable revision to move (PokeClosed):
	// watchers over several ranges. A watcher of one range needs only
	// events, and is not woken every time a close moves.
	closedNotify chan struct{}
	closedParked map[any]func()
	// closedWaited is set while closedNotify or a closed-parked reader
	// exists, so that PokeClosed costs an atomic load when nobody waits.
	closedWaited atomic.Bool
}

// NewFeed returns a feed whose window starts after rev and holds at most
// maxEvents events.
func NewFeed(rev int64, maxEvents int) *Feed {
	return &Feed{floor: rev, last: rev, maxEvents: maxEvents}
}

// Publish appends the events of one applied command. rev must exceed every
// revision published before.
func (f *Feed) Publish(rev int64, events []*mvccpb.Event) {
	f.mu.Lock()
	f.entries = append(f.entries, FeedEntry{Revision: rev, Events: events})
	f.events += len(events)
	f.last = rev
	drop := 0
	if f.events > f.maxEvents {
		// Trim to three quarters of the window at once: dropping one
		// entry per publish copied the whole window every time.
		for f.events > f.maxEvents-f.maxEvents/4 && drop < len(f.entries)-1 {
			f.events -= len(f.entries[drop].Events)
			f.floor = f.entries[drop].Revision
			drop++
		}
	}
	if drop > 0 {
		f.entries = append(f.entries[:0:0], f.entries[drop:]...)
	}
	wake := f.changedLocked()
	f.mu.Unlock()
	callAll(wake)
}

// Reset empties the window after the replica's state jumped (a snapshot
// applied): everything at or below rev must be read from the engine.
func (f *Feed) Reset(rev int64) {
	f.mu.Lock()
	f.entries, f.events = nil, 0
	f.floor, f.last = rev, max(rev, f.last)
	wake := f.changedLocked()
	f.mu.Unlock()
	callAll(wake)
}

// Since returns up to maxEntries entries with revision > after. inWindow is
// false when events after `after` have left the window (the caller reads
// the engine up to Floor first). last is the newest published revision and
// wait is closed on the next Publish or Reset.
func (f *Feed) Since(after int64, maxEntries int) (entries []FeedEntry, inWindow bool, last int64, wait <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.notify == nil {
		f.notify = make(chan struct{})
	}
	if after < f.floor {
		return nil, false, f.last, f.notify
	}
	// Binary search for the first entry after `after`.
	lo, hi := 0, len(f.entries)
	for lo < hi {
		m := (lo + hi) / 2
		if f.entries[m].Revision <= after {
			lo = m + 1
		} else {
			hi = m
		}
	}
	n := min(len(f.entries)-lo, maxEntries)
	return append([]FeedEntry(nil), f.entries[lo:lo+n]...), true, f.last, f.notify
}

// Floor returns the revision below which (inclusive) events are no longer
// in the window.
func (f *Feed) Floor() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.floor
}

// Last returns the newest published revision.
func (f *Feed) Last() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// Poke wakes every waiting reader without publishing: the range's span
// changed (a split), and watchers must check whether they still belong
// here.
func (f *Feed) Poke() {
	f.mu.Lock()
	wake := f.changedLocked()
	f.mu.Unlock()
	callAll(wake)
}

// ClosedWait returns a channel closed at the next change of the feed or
// of the range's readable revision (PokeClosed), for ParkClosed.
func (f *Feed) ClosedWait() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closedNotify == nil {
		f.closedNotify = make(chan struct{})
		f.closedWaited.Store(true)
	}
	return f.closedNotify
}

// PokeClosed wakes the readers waiting for the range's readable revision
// to move (ClosedWait, ParkClosed), which it just did; readers of events
// only are left alone. It costs an atomic load when nobody waits.
func (f *Feed) PokeClosed() {
	if !f.closedWaited.Load() {
		return
	}
	f.mu.Lock()
	wake := f.closedChangedLocked()
	f.mu.Unlock()
	callAll(wake)
}

// ParkClosed is Park for a reader that also waits for the readable
// revision to move: wait and closedWait are the channels Since and
// ClosedWait returned, and if either is no longer current nothing is
// registered and it returns false.
func (f *Feed) ParkClosed(key any, wait, closedWait <-chan struct{}, wake func()) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if wait != f.notify || closedWait != f.closedNotify {
		return false
	}
	if f.closedParked == nil {
		f.closedParked = map[any]func(){}
	}
	f.closedParked[key] = wake
	f.closedWaited.Store(true)
	return true
}

// Park registers wake, under key, to be called once on the feed's next
// change (Publish, Reset or Poke), so that an idle reader needs no
// goroutine blocked on the wait channel. wait is the channel Since
// returned: if the feed changed since (it is no longer current), nothing
// is registered and Park returns false, and the reader must look again.
// A key registered twice keeps the last wake. Callbacks run outside the
// feed's lock, on a goroutine of their own, and must not block.
func (f *Feed) Park(key any, wait <-chan struct{}, wake func()) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if wait != f.notify {
		return false
	}
	if f.parked == nil {
		f.parked = map[any]func(){}
	}
	f.parked[key] = wake
	return true
}

// Unpark drops key's registration, if any (its reader ended).
func (f *Feed) Unpark(key any) {
	f.mu.Lock()
	delete(f.parked, key)
	delete(f.closedParked, key)
	f.mu.Unlock()
}

// changedLocked wakes the readers waiting on the feed: it closes the wait
// channel and returns the parked callbacks to call.
func (f *Feed) changedLocked() []func() {
	if f.notify != nil {
		close(f.notify)
		f.notify = nil
	}
	return append(f.closedChangedLocked(), takeParked(f.parked)...)
}

// closedChangedLocked wakes the readers waiting for the readable revision
// to move.
func (f *Feed) closedChangedLocked() []func() {
	if f.closedNotify != nil {
		close(f.closedNotify)
		f.closedNotify = nil
	}
	f.closedWaited.Store(false)
	return takeParked(f.closedParked)
}

// takeParked empties parked and returns its callbacks.
func takeParked(parked map[any]func()) []func() {
	if len(parked) == 0 {
		return nil
	}
	out := make([]func(), 0, len(parked))
	for _, w := range parked {
		out = append(out, w)
	}
	clear(parked)
	return out
}

// callAll runs the wake callbacks on their own goroutine: a publish
// happens on the apply path, which must not wait on thousands of readers.
func callAll(fns []func()) {
	if len(fns) == 0 {
		return
	}
	go func() {
		for _, fn := range fns {
			fn()
		}
	}()
}
