package node

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/rangeraft"
)

// watchServer implements etcd's Watch service over range feeds.
//
// Each watcher pulls from its range's Feed: it remembers the next revision
// it owes the client and asks the feed for what follows, falling back to
// the engine's MVCC history when the feed's in-memory window has moved
// past it. Writers never wait for watchers; a slow client only slows its
// own stream. Delivery per watcher is in revision order, and all events of
// one revision go in one response (or one fragment sequence), which gives
// etcd's ordered, unique, atomic and reliable guarantees within a range.
type watchServer struct {
	pb.UnimplementedWatchServer
	n *Node
}

func newWatchServer(n *Node) pb.WatchServer { return &watchServer{n: n} }

// errDuplicateWatchID is etcd's message for a client-chosen ID in use.
var errDuplicateWatchID = errors.New("mvcc: duplicate watch ID provided on the WatchStream")

// maxFeedEntriesPerPull bounds the revisions a watcher takes per pull.
const maxFeedEntriesPerPull = 1024

type watchStream struct {
	n     *Node
	srv   pb.Watch_WatchServer
	ctx   context.Context
	sendc chan *pb.WatchResponse

	mu       sync.Mutex
	watchers map[int64]*watcher
	nextID   int64
	wg       sync.WaitGroup
}

type watcher struct {
	ws             *watchStream
	id             int64
	key, end       []byte // user keys; end nil = single key, empty = to the end
	span           kvstore.Span
	prevKV         bool
	noPut, noDel   bool
	fragment       bool
	progressNotify bool
	cancelc        chan struct{}

	mu   sync.Mutex
	next int64              // every event below next has been queued for the client
	r    *rangeraft.Replica // the range holding the keys; written by run under mu
	// rs, when the keys lie in several ranges, are those ranges in key
	// order (watch_multi.go); r is then rs[0]. Written by run under mu.
	rs []*rangeraft.Replica
	// advanceTo asks a multi-range watcher to make its ranges final up
	// to this revision even without events pending (progress requests);
	// poke wakes it.
	advanceTo atomic.Int64
	// wakes counts wake requests (advance requests, feed changes) so that
	// a watcher about to park sees one that raced it (park).
	wakes atomic.Int64
	// running is set while a goroutine serves the watcher; an idle
	// watcher has none and is parked on its feeds. Guarded by ws.mu.
	running bool
	// parkedOn are the feeds the watcher registered with. Guarded by mu.
	parkedOn []*rangeraft.Feed
	// behindSince is when a multi-range watcher first found events
	// waiting on ranges behind, and fallback the timer that wakes it to
	// close them through their logs if the side channel has not released
	// them by then (runMulti). Only the running goroutine touches them.
	behindSince time.Time
	fallback    *time.Timer
	// stalledSince is when the watcher last delivered with events
	// waiting behind a range (reset on delivery), and stallLogged whether
	// that stall was logged (runMulti).
	stalledSince time.Time
	stallLogged  bool
	// spanCache holds the ranges a multi-range watcher's keys lay in,
	// with their marks, as of the store's span version (SpanVersion):
	// unchanged while no range splits. Only the running goroutine
	// touches it.
	spanCache struct {
		version uint64
		rs      []*rangeraft.Replica
		marks   []rangeMark
	}
	// sendMu orders the watcher's responses with its cancel response.
	sendMu sync.Mutex
}

// requestAdvance asks the watcher to be synced through at least rev: a
// multi-range watcher closes its ranges there (a single-range one is
// synced whenever it has delivered its range's last event).
func (w *watcher) requestAdvance(rev int64) {
	for {
		cur := w.advanceTo.Load()
		if cur >= rev || w.advanceTo.CompareAndSwap(cur, rev) {
			break
		}
	}
	w.wakeUp()
}

// wakeUp starts a goroutine for the watcher unless one is running or the
// watcher ended (cancelled, or its stream closed: ws.watchers no longer
// holds it, so nothing starts after the stream's final wg.Wait).
func (w *watcher) wakeUp() {
	w.wakes.Add(1)
	w.ws.mu.Lock()
	defer w.ws.mu.Unlock()
	if w.running || w.ws.watchers == nil || w.ws.watchers[w.id] != w {
		return
	}
	w.running = true
	w.ws.wg.Add(1)
	go w.run()
}

// park leaves the watcher without a goroutine until one of the feeds
// changes (each wait is the channel that feed's Since returned), or, with
// closedWaits (from ClosedWait, for a watcher over several ranges), one
// of the ranges' readable revisions moves, or a wake request comes. It returns false, parking nothing, when one of those
// already happened since wakes read seen; the caller then looks again.
// On true the caller's goroutine must return at once without touching
// the watcher: another may be running it already.
func (w *watcher) park(feeds []*rangeraft.Feed, waits, closedWaits []<-chan struct{}, seen int64) bool {
	// Register while still marked running, so no second goroutine can
	// start and park over this one; a wake in the meantime is counted in
	// wakes and caught below.
	w.mu.Lock()
	w.parkedOn = feeds
	w.mu.Unlock()
	ok := true
	for i, f := range feeds {
		parked := false
		if closedWaits != nil {
			parked = f.ParkClosed(w, waits[i], closedWaits[i], w.wakeUp)
		} else {
			parked = f.Park(w, waits[i], w.wakeUp)
		}
		if !parked {
			ok = false
			break
		}
	}
	w.ws.mu.Lock()
	w.running = false
	alive := w.ws.watchers != nil && w.ws.watchers[w.id] == w
	w.ws.mu.Unlock()
	switch {
	case !alive:
		// Cancelled or the stream ended while registering: leave nothing
		// behind.
		w.unpark()
	case !ok || w.wakes.Load() != seen:
		w.unpark()
		w.wakeUp()
	}
	return true
}

// unpark removes the watcher's feed registrations.
func (w *watcher) unpark() {
	w.mu.Lock()
	feeds := w.parkedOn
	w.parkedOn = nil
	w.mu.Unlock()
	for _, f := range feeds {
		f.Unpark(w)
	}
}

// Watch implements etcd's Watch stream.
func (s *watchServer) Watch(srv pb.Watch_WatchServer) error {
	ctx, cancel := context.WithCancel(srv.Context())
	defer cancel()
	ws := &watchStream{
		n: s.n, srv: srv, ctx: ctx,
		sendc:    make(chan *pb.WatchResponse, 128),
		watchers: map[int64]*watcher{},
	}
	errc := make(chan error, 2)
	go func() { errc <- ws.sendLoop() }()
	go func() {
		// A client that half-closes (io.EOF) still receives events until
		// the stream's context ends, as in etcd (the JSON gateway relies
		// on it).
		if err := ws.recvLoop(); !errors.Is(err, io.EOF) {
			errc <- err
		}
	}()
	go ws.progressLoop()
	err := <-errc
	cancel()
	ws.mu.Lock()
	ended := ws.watchers
	for _, w := range ended {
		close(w.cancelc)
	}
	ws.watchers = nil
	ws.mu.Unlock()
	for _, w := range ended {
		w.unpark()
	}
	ws.wg.Wait()
	if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (ws *watchStream) send(resp *pb.WatchResponse) bool {
	select {
	case ws.sendc <- resp:
		return true
	case <-ws.ctx.Done():
		return false
	}
}

func (ws *watchStream) sendLoop() error {
	for {
		select {
		case <-ws.ctx.Done():
			return ws.ctx.Err()
		case resp := <-ws.sendc:
			if err := ws.srv.Send(resp); err != nil {
				return err
			}
		}
	}
}

func (ws *watchStream) recvLoop() error {
	for {
		req, err := ws.srv.Recv()
		if err != nil {
			return err
		}
		switch u := req.RequestUnion.(type) {
		case *pb.WatchRequest_CreateRequest:
			ws.create(u.CreateRequest)
		case *pb.WatchRequest_CancelRequest:
			ws.cancel(u.CancelRequest.WatchId)
		case *pb.WatchRequest_ProgressRequest:
			ws.mu.Lock()
			open := ws.watchers != nil
			if open {
				ws.wg.Add(1)
			}
			ws.mu.Unlock()
			if open {
				go ws.progressAll()
			}
		default:
			// etcd ignores unknown request kinds.
		}
	}
}

func (ws *watchStream) header(rev int64) *pb.ResponseHeader {
	h := ws.n.userHeader()
	if rev > 0 {
		h.Revision = rev
	}
	return h
}

func (ws *watchStream) create(c *pb.WatchCreateRequest) {
	// etcd's normalisation: empty key is \x00 (the smallest key), an empty
	// range_end is a single key, "\x00" means every key >= key.
	key := c.Key
	if len(key) == 0 {
		key = []byte{0}
	}
	var end []byte
	switch {
	case len(c.RangeEnd) == 0:
		end = nil
	case len(c.RangeEnd) == 1 && c.RangeEnd[0] == 0:
		end = []byte{}
	default:
		end = c.RangeEnd
	}
	w := &watcher{
		ws: ws, key: key, end: end,
		prevKV: c.PrevKv, fragment: c.Fragment, progressNotify: c.ProgressNotify,
		cancelc: make(chan struct{}),
	}
	for _, f := range c.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			w.noPut = true
		case pb.WatchCreateRequest_NODELETE:
			w.noDel = true
		}
	}
	start := kvstore.UserSpanKey(key)
	spanEnd := kvstore.UserSpanEndKey(end)
	if end == nil {
		spanEnd = append(bytes.Clone(start), 0)
	}
	w.span = kvstore.Span{Start: start, End: spanEnd}
	rs, err := w.ws.n.spanRanges(w.span.Start, w.span.End)
	if err != nil {
		ws.send(&pb.WatchResponse{Header: ws.header(0), WatchId: c.WatchId, Created: true, Canceled: true, CancelReason: err.Error()})
		return
	}
	w.r = rs[0]
	// "Now" is the newest revision the range can serve: its last write or
	// a later revision it closed (a multi-range read or a compaction).
	current := w.r.ReadableRevision()
	compacted := w.r.Status().CompactRevision
	if len(rs) > 1 {
		// Over several ranges, "now" is a revision every one of them is
		// closed at, so that no event after it can be below it.
		w.rs = rs
		if current, err = w.ws.n.closeAcross(ws.ctx, rs, w.ws.n.clock.Now()); err != nil {
			ws.send(&pb.WatchResponse{Header: ws.header(0), WatchId: c.WatchId, Created: true, Canceled: true,
				CancelReason: translateErr(ws.ctx, err).Error()})
			return
		}
		for _, r := range rs {
			compacted = max(compacted, r.Status().CompactRevision)
		}
	}

	ws.mu.Lock()
	if ws.watchers == nil {
		ws.mu.Unlock()
		return
	}
	id := c.WatchId
	if id == 0 && c.WatchId == 0 {
		// Auto-assigned IDs count up from 0, skipping IDs in use (etcd's
		// AutoWatchID behaviour).
		for {
			if _, used := ws.watchers[ws.nextID]; !used {
				break
			}
			ws.nextID++
		}
		id = ws.nextID
		ws.nextID++
	} else if _, used := ws.watchers[id]; used {
		ws.mu.Unlock()
		ws.send(&pb.WatchResponse{Header: ws.header(0), WatchId: id, Created: true, Canceled: true,
			CancelReason: errDuplicateWatchID.Error()})
		return
	}
	w.id = id
	w.next = c.StartRevision
	if w.next <= 0 {
		w.next = current + 1
	}
	if w.next < compacted {
		// etcd: a watch from a compacted revision is created, then
		// cancelled with the compact revision.
		ws.mu.Unlock()
		ws.send(&pb.WatchResponse{Header: ws.header(current), WatchId: id, Created: true})
		ws.send(&pb.WatchResponse{Header: ws.header(current), WatchId: id, CompactRevision: compacted, Canceled: true})
		return
	}
	ws.watchers[id] = w
	w.running = true
	ws.wg.Add(1)
	ws.mu.Unlock()
	ws.send(&pb.WatchResponse{Header: ws.header(current), WatchId: id, Created: true})
	go w.run()
}

func (ws *watchStream) cancel(id int64) {
	ws.mu.Lock()
	w, ok := ws.watchers[id]
	if ok {
		delete(ws.watchers, id)
		close(w.cancelc)
	}
	ws.mu.Unlock()
	if ok {
		w.unpark()
		// After any response being sent (sendMu): the client sees no
		// event of this watcher after its cancel.
		w.sendMu.Lock()
		ws.send(&pb.WatchResponse{Header: ws.header(0), WatchId: id, Canceled: true})
		w.sendMu.Unlock()
	}
}

// remove drops a watcher that ended itself (compacted).
func (ws *watchStream) remove(id int64) {
	ws.mu.Lock()
	w, ok := ws.watchers[id]
	if ok {
		delete(ws.watchers, id)
		close(w.cancelc)
	}
	ws.mu.Unlock()
	if ok {
		w.unpark()
	}
}

// run delivers the watcher's events until it is cancelled or the stream
// ends.
//
// An idle watcher does not keep its goroutine: it parks on its range's
// feed (park) and a publish there starts it again, so ten thousand idle
// watchers cost memory but no goroutines.
func (w *watcher) run() {
	defer w.ws.wg.Done()
	w.unpark()
	for {
		seen := w.wakes.Load()
		w.mu.Lock()
		multi := len(w.rs) > 0
		w.mu.Unlock()
		if multi {
			w.runMulti()
			return
		}
		// The generation before the span check and after the pull: a
		// split in between would have the feed's entries end past events
		// of keys that moved to the new range (found in review).
		_, _, gen := w.r.SpanGeneration()
		if !w.r.Covers(w.span.Start, w.span.End) {
			// The range split: follow the keys to their range (or ranges),
			// catching up from its history.
			rs, err := w.ws.n.spanRanges(w.span.Start, w.span.End)
			if err != nil {
				w.ws.remove(w.id)
				w.ws.send(&pb.WatchResponse{Header: w.ws.header(0), WatchId: w.id, Canceled: true, CancelReason: err.Error()})
				return
			}
			w.mu.Lock()
			w.r = rs[0]
			if len(rs) > 1 {
				w.rs = rs
			}
			w.mu.Unlock()
			continue
		}
		feed := w.r.Feed()
		w.mu.Lock()
		next := w.next
		w.mu.Unlock()
		entries, inWindow, _, wait := feed.Since(next-1, maxFeedEntriesPerPull)
		if _, _, g := w.r.SpanGeneration(); g != gen {
			continue
		}
		if !inWindow {
			if w.r.ReadableRevision() < next {
				// A snapshot moved the feed's floor past a revision an
				// unresolved transaction holds the range below: wait
				// for the readable revision to move.
				closedWait := feed.ClosedWait()
				if w.r.ReadableRevision() < next {
					w.park([]*rangeraft.Feed{feed}, []<-chan struct{}{wait}, []<-chan struct{}{closedWait}, seen)
					return
				}
				continue
			}
			if !w.catchUpFromEngine(next, feed.Floor()) {
				return
			}
			continue
		}
		if len(entries) == 0 {
			select {
			case <-w.cancelc:
				return
			case <-w.ws.ctx.Done():
				return
			default:
			}
			w.park([]*rangeraft.Feed{feed}, []<-chan struct{}{wait}, nil, seen)
			return
		}
		var evs []*mvccpb.Event
		for _, e := range entries {
			evs = w.appendMatching(evs, e.Events)
		}
		covered := entries[len(entries)-1].Revision
		if !w.deliver(evs, covered) {
			return
		}
	}
}

// catchUpFromEngine sends the events in [from, to] from MVCC history.
func (w *watcher) catchUpFromEngine(from, to int64) bool {
	view := w.r.NewReadView()
	defer view.Close()
	if from < view.CompactRevision {
		w.ws.remove(w.id)
		w.ws.send(&pb.WatchResponse{Header: w.ws.header(view.Revision), WatchId: w.id,
			CompactRevision: view.CompactRevision, Canceled: true})
		return false
	}
	to = min(to, view.Revision)
	if !inSpan(view.Span, w.span.Start, w.span.End) {
		return true // the range split: the caller follows the keys
	}
	var evs []*mvccpb.Event
	err := kvstore.MVCCHistory(view.Reader, w.span, from, to, func(ev *mvccpb.Event) bool {
		evs = w.appendMatching(evs, []*mvccpb.Event{ev})
		return true
	})
	if err != nil {
		w.ws.n.log.Error("watch history read failed", zap.Int64("watch-id", w.id), zap.Error(err))
		w.ws.remove(w.id)
		w.ws.send(&pb.WatchResponse{Header: w.ws.header(0), WatchId: w.id, Canceled: true, CancelReason: err.Error()})
		return false
	}
	return w.deliver(evs, to)
}

func intersect(a, b kvstore.Span) kvstore.Span {
	out := a
	if bytes.Compare(b.Start, out.Start) > 0 {
		out.Start = b.Start
	}
	if bytes.Compare(b.End, out.End) < 0 {
		out.End = b.End
	}
	return out
}

func (w *watcher) appendMatching(dst, evs []*mvccpb.Event) []*mvccpb.Event {
	for _, ev := range evs {
		if !w.matches(ev.Kv.Key) {
			continue
		}
		if (ev.Type == mvccpb.Event_PUT && w.noPut) || (ev.Type == mvccpb.Event_DELETE && w.noDel) {
			continue
		}
		if !w.prevKV && ev.PrevKv != nil {
			ev = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
		}
		dst = append(dst, ev)
	}
	return dst
}

func (w *watcher) matches(key []byte) bool {
	if w.end == nil {
		return bytes.Equal(key, w.key)
	}
	if bytes.Compare(key, w.key) < 0 {
		return false
	}
	return len(w.end) == 0 || bytes.Compare(key, w.end) < 0
}

// deliver queues evs (all revisions up to covered) and advances next.
func (w *watcher) deliver(evs []*mvccpb.Event, covered int64) bool {
	if len(evs) > 0 {
		for _, resp := range w.responses(evs, covered) {
			// Under sendMu, so that no event follows the cancel response
			// (whose ID a client may reuse at once).
			w.sendMu.Lock()
			select {
			case <-w.cancelc:
				w.sendMu.Unlock()
				return false
			default:
			}
			ok := w.ws.send(resp)
			w.sendMu.Unlock()
			if !ok {
				return false
			}
		}
	}
	w.mu.Lock()
	w.next = max(w.next, covered+1)
	w.mu.Unlock()
	return true
}

// responses packs events into one response, or into fragments under
// --max-request-bytes when the watcher asked for fragmentation.
func (w *watcher) responses(evs []*mvccpb.Event, covered int64) []*pb.WatchResponse {
	h := w.ws.header(covered)
	resp := &pb.WatchResponse{Header: h, WatchId: w.id, Events: evs}
	limit := w.ws.n.cfg.MaxRequestBytes
	if !w.fragment || proto.Size(resp) <= limit {
		return []*pb.WatchResponse{resp}
	}
	var out []*pb.WatchResponse
	cur := &pb.WatchResponse{Header: h, WatchId: w.id, Fragment: true}
	size := 0
	for _, ev := range evs {
		es := proto.Size(ev)
		if len(cur.Events) > 0 && size+es > limit {
			out = append(out, cur)
			cur = &pb.WatchResponse{Header: h, WatchId: w.id, Fragment: true}
			size = 0
		}
		cur.Events = append(cur.Events, ev)
		size += es
	}
	cur.Fragment = false
	return append(out, cur)
}

// synced reports whether the watcher has been given every published event
// and returns the revision through which it has.
//
// When synced, the revision reported is also at least the lowest readable
// revision of the watcher's ranges, read before their feeds: a range
// publishes every event before its applied state moves past it, so every
// event at or below that revision was published, and so delivered. (A
// no-op write answers with a fresh revision that closes its range without
// an event; a progress notification must not report less than it.)
func (w *watcher) synced() (int64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	rs := w.rs
	if len(rs) == 0 {
		rs = []*rangeraft.Replica{w.r}
	}
	readable := rs[0].ReadableRevision()
	for _, r := range rs[1:] {
		readable = min(readable, r.ReadableRevision())
	}
	last := int64(0)
	if len(w.rs) > 0 {
		last = w.advanceTo.Load()
	}
	for _, r := range rs {
		last = max(last, r.Feed().Last())
	}
	if w.next <= last {
		return w.next - 1, false
	}
	return max(w.next-1, readable), true
}

// advanceMulti asks every multi-range watcher of ws to become final
// through now, so that a progress notification can report a revision no
// older than the request.
func (ws *watchStream) advanceMulti(ws2 []*watcher) {
	now := ws.n.clock.Now()
	for _, w := range ws2 {
		w.mu.Lock()
		multi := len(w.rs) > 0
		w.mu.Unlock()
		if multi {
			w.requestAdvance(now)
		}
	}
}

// progressLoop sends periodic progress notifications to synced watchers
// that asked for them (--watch-progress-notify-interval).
func (ws *watchStream) progressLoop() {
	interval := ws.n.cfg.WatchProgressNotifyInterval
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ws.ctx.Done():
			return
		case <-t.C:
		}
		ws.mu.Lock()
		var ws2 []*watcher
		for _, w := range ws.watchers {
			if w.progressNotify {
				ws2 = append(ws2, w)
			}
		}
		ws.mu.Unlock()
		for _, w := range ws2 {
			if rev, ok := w.synced(); ok {
				ws.send(&pb.WatchResponse{Header: ws.header(rev), WatchId: w.id})
			}
		}
		// Multi-range watchers then advance to now, to report it at the
		// next tick (asking first would leave them never synced at the
		// moment of the check).
		ws.advanceMulti(ws2)
	}
}

// progressAll answers a RequestProgress: one response with watch ID -1 once
// every watcher on the stream is synced, at the lowest revision through
// which all of them are (etcd sends it only when all are synced).
func (ws *watchStream) progressAll() {
	defer ws.wg.Done()
	deadline := time.Now().Add(ws.n.reqTimeout)
	ws.mu.Lock()
	all := make([]*watcher, 0, len(ws.watchers))
	for _, w := range ws.watchers {
		all = append(all, w)
	}
	ws.mu.Unlock()
	ws.advanceMulti(all)
	for {
		ws.mu.Lock()
		all := make([]*watcher, 0, len(ws.watchers))
		for _, w := range ws.watchers {
			all = append(all, w)
		}
		ws.mu.Unlock()
		rev := int64(-1)
		synced := true
		for _, w := range all {
			r, ok := w.synced()
			if !ok {
				synced = false
				break
			}
			if rev < 0 || r < rev {
				rev = r
			}
		}
		if synced {
			if rev < 0 {
				rev = ws.header(0).Revision
			}
			ws.send(&pb.WatchResponse{Header: ws.header(rev), WatchId: -1})
			return
		}
		if time.Now().After(deadline) {
			return
		}
		select {
		case <-ws.ctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}
