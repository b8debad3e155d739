//go:build linux

package robustness

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Watcher records what one watch over every key delivered, response by
// response. clientv3 resumes a broken watch from the revision after the
// last one it delivered, so a watcher also exercises resumption.
type Watcher struct {
	Node      string
	Responses [][]Event
	Err       error
	Resumes   int
	last      atomic.Int64 // revision of the last event delivered
}

// Event is one delivered event.
type Event struct {
	Key, Value string
	Rev        int64
	Delete     bool
}

// Watch runs until ctx ends, recording every response of a watch over
// every key from revision from. Every 2 s, and whenever it ends with an
// error, the watch is cancelled and resumed from the revision after the
// last one delivered (Resumes counts them), possibly through another
// node; a compaction error ends the watcher.
func (w *Watcher) Watch(ctx context.Context, kv *clientv3.Client, from int64) {
	next := from
	for ctx.Err() == nil {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		for resp := range kv.Watch(sctx, "", clientv3.WithFromKey(), clientv3.WithRev(next)) {
			if err := resp.Err(); err != nil {
				if resp.CompactRevision != 0 {
					w.Err = err
					cancel()
					return
				}
				break
			}
			if evs := eventsOf(resp); len(evs) > 0 {
				w.Responses = append(w.Responses, evs)
				next = evs[len(evs)-1].Rev + 1
				w.last.Store(evs[len(evs)-1].Rev)
			}
		}
		cancel()
		if ctx.Err() == nil {
			w.Resumes++
		}
	}
}

// eventsOf returns a watch response's events.
func eventsOf(resp clientv3.WatchResponse) []Event {
	var evs []Event
	for _, ev := range resp.Events {
		evs = append(evs, Event{Key: string(ev.Kv.Key), Value: string(ev.Kv.Value), Rev: ev.Kv.ModRevision,
			Delete: ev.Type == clientv3.EventTypeDelete})
	}
	return evs
}

// CheckWatchers validates the watch guarantees (etcd's): every watcher's
// events are ordered by revision, unique, and each revision's events come
// in one response (atomic); the watchers, started at one revision, saw the
// same sequence (one is a prefix of another: they stopped at different
// points); and every write acknowledged with a revision up to what a
// watcher covered is in it (reliable). It returns the violations.
func CheckWatchers(ws []*Watcher, ops []Output, inputs []Input) []string {
	var problems []string
	seqs := make([][]Event, len(ws))
	for i, w := range ws {
		if w.Err != nil {
			problems = append(problems, fmt.Sprintf("%s ended: %v", w.Node, w.Err))
		}
		respOf := map[int64]int{}
		seen := map[string]bool{}
		last := int64(0)
		for r, evs := range w.Responses {
			for _, ev := range evs {
				if ev.Rev < last {
					problems = append(problems, fmt.Sprintf("%s: revision %d after %d", w.Node, ev.Rev, last))
				}
				last = ev.Rev
				id := fmt.Sprintf("%s@%d", ev.Key, ev.Rev)
				if seen[id] {
					problems = append(problems, fmt.Sprintf("%s: %s delivered twice", w.Node, id))
				}
				seen[id] = true
				if prev, ok := respOf[ev.Rev]; ok && prev != r {
					problems = append(problems, fmt.Sprintf("%s: revision %d split over responses %d and %d", w.Node, ev.Rev, prev, r))
				}
				respOf[ev.Rev] = r
				seqs[i] = append(seqs[i], ev)
			}
		}
	}
	// The same history: order within a revision may differ between
	// ranges' merges, so compare revision by revision as sets.
	norm := func(evs []Event) []Event {
		out := append([]Event(nil), evs...)
		sort.SliceStable(out, func(a, b int) bool {
			if out[a].Rev != out[b].Rev {
				return out[a].Rev < out[b].Rev
			}
			return out[a].Key < out[b].Key
		})
		return out
	}
	for i := 1; i < len(seqs); i++ {
		a, b := norm(seqs[0]), norm(seqs[i])
		n := min(len(a), len(b))
		// Drop a trailing revision either side may have cut short.
		for n > 0 && (n < len(a) && a[n].Rev == a[n-1].Rev || n < len(b) && b[n].Rev == b[n-1].Rev) {
			n--
		}
		for k := 0; k < n; k++ {
			if a[k] != b[k] {
				problems = append(problems, fmt.Sprintf("%s and %s differ at event %d: %+v vs %+v",
					ws[0].Node, ws[i].Node, k, a[k], b[k]))
				break
			}
		}
	}
	// Live: every watcher delivered up to the last acknowledged write (the
	// run lets watches catch up before it stops them).
	var lastAck int64
	for n, out := range ops {
		if acknowledgedWrite(inputs[n], out) && out.Rev > lastAck {
			lastAck = out.Rev
		}
	}
	for i, w := range ws {
		if n := len(seqs[i]); n == 0 && lastAck > 0 || n > 0 && seqs[i][n-1].Rev < lastAck {
			problems = append(problems, fmt.Sprintf("%s stopped before the last acknowledged write, at revision %d", w.Node, lastAck))
		}
	}
	// Reliable: every acknowledged put (plain or by a CAS) covered by a
	// watcher's last revision is in its events.
	for i, w := range ws {
		if len(seqs[i]) == 0 {
			continue
		}
		covered := seqs[i][len(seqs[i])-1].Rev
		have := map[string]bool{}
		for _, ev := range seqs[i] {
			have[fmt.Sprintf("%s=%s@%d", ev.Key, ev.Value, ev.Rev)] = true // a delete has value ""
		}
		for n, out := range ops {
			in := inputs[n]
			if out.Unknown || out.Rev == 0 || out.Rev > covered {
				continue
			}
			var want []string
			switch {
			case in.Kind == OpPut, in.Kind == OpCAS && out.Succeeded:
				want = []string{fmt.Sprintf("%s=%s@%d", Keys[in.I], in.Value[0], out.Rev)}
			case in.Kind == OpCAS2 && out.Succeeded:
				want = []string{fmt.Sprintf("%s=%s@%d", Keys[in.I], in.Value[0], out.Rev),
					fmt.Sprintf("%s=%s@%d", Keys[in.J], in.Value[1], out.Rev)}
			}
			for _, k := range want {
				if !have[k] {
					problems = append(problems, fmt.Sprintf("%s missed acknowledged %s", w.Node, k))
				}
			}
		}
	}
	return problems
}

// reference returns the longest watcher's events in revision order, keys
// ordered within a revision. CheckWatchers has verified the watchers
// agree, so it is the history the other checks compare with.
func reference(ws []*Watcher) eventHistory {
	var best []Event
	for _, w := range ws {
		var evs []Event
		for _, r := range w.Responses {
			evs = append(evs, r...)
		}
		if len(evs) > len(best) {
			best = evs
		}
	}
	out := append(eventHistory(nil), best...)
	sort.SliceStable(out, func(a, b int) bool {
		if out[a].Rev != out[b].Rev {
			return out[a].Rev < out[b].Rev
		}
		return out[a].Key < out[b].Key
	})
	return out
}

// covered is the last revision h is known complete to: its last
// revision, or 0 for an empty history.
func (h eventHistory) covered() int64 {
	if len(h) == 0 {
		return 0
	}
	return h[len(h)-1].Rev
}

// CheckStaleReads checks every serializable read against the reference
// history: at its header revision, each key it covered held what it
// returned (etcd's serializable reads may be stale, never torn or
// invented). Reads above the history's last revision are not checked;
// it returns the violations and how many reads it checked.
func CheckStaleReads(h eventHistory, reads []StaleRead) (problems []string, checked int) {
	reads = slices.Clone(reads)
	sort.SliceStable(reads, func(a, b int) bool { return reads[a].Rev < reads[b].Rev })
	st := map[string]string{}
	next := 0
	for _, r := range reads {
		if r.Rev > h.covered() {
			break
		}
		for ; next < len(h) && h[next].Rev <= r.Rev; next++ {
			if ev := h[next]; ev.Delete {
				delete(st, ev.Key)
			} else {
				st[ev.Key] = ev.Value
			}
		}
		checked++
		for _, k := range r.Keys {
			want, wok := st[k]
			got, gok := r.Values[k]
			if want != got || wok != gok {
				problems = append(problems, fmt.Sprintf("serializable read at revision %d: %s = %q (present %v), the history has %q (present %v)",
					r.Rev, k, got, gok, want, wok))
			}
		}
	}
	return problems, checked
}

// CheckInformers checks each informer's lists and watches against the
// reference history, as a kube-apiserver watch cache relies on them: the
// list at revision R is the resource's state at R; the watch after it
// delivers exactly the resource's events above R, in order, each
// revision in one response; and after a bookmark at revision B no event
// at or below B arrives.
func CheckInformers(h eventHistory, infs []*Informer) []string {
	var problems []string
	inResource := func(k string) bool { return k >= resourceStart && k < resourceEnd }
	for _, inf := range infs {
		for e, ep := range inf.Epochs {
			name := fmt.Sprintf("%s list %d at revision %d", inf.Name, e+1, ep.ListRev)
			if ep.ListRev > h.covered() {
				continue
			}
			want := map[string]string{}
			for k, v := range h.state(ep.ListRev, nil) {
				if inResource(k) {
					want[k] = v
				}
			}
			if !maps.Equal(want, ep.List) {
				problems = append(problems, fmt.Sprintf("%s returned %v, the history has %v", name, ep.List, want))
			}
			var got []Event
			respOf := map[int64]int{}
			for r, evs := range ep.Responses {
				for _, ev := range evs {
					if len(got) > 0 && ev.Rev < got[len(got)-1].Rev {
						problems = append(problems, fmt.Sprintf("%s: revision %d after %d", name, ev.Rev, got[len(got)-1].Rev))
					}
					if prev, ok := respOf[ev.Rev]; ok && prev != r {
						problems = append(problems, fmt.Sprintf("%s: revision %d split over responses", name, ev.Rev))
					}
					respOf[ev.Rev] = r
					got = append(got, ev)
				}
			}
			for b, bm := range ep.Bookmarks {
				for r := bm.After; r < len(ep.Responses); r++ {
					if ev := ep.Responses[r][0]; ev.Rev <= bm.Rev {
						problems = append(problems, fmt.Sprintf("%s: event at revision %d after bookmark %d at revision %d", name, ev.Rev, b+1, bm.Rev))
					}
				}
			}
			last := min(h.covered(), ep.ListRev)
			if len(got) > 0 {
				last = min(h.covered(), got[len(got)-1].Rev)
			}
			if e == len(inf.Epochs)-1 {
				// Live: the last watch delivered up to the end of the
				// history (the run lets watches catch up before it stops
				// them).
				if end := lastInResource(h); end > last && end > ep.ListRev {
					problems = append(problems, fmt.Sprintf("%s: its watch stopped at revision %d, the history goes on to %d", name, last, end))
				}
			}
			var expect []Event
			for _, ev := range h {
				if ev.Rev > ep.ListRev && ev.Rev <= last && inResource(ev.Key) {
					expect = append(expect, ev)
				}
			}
			var gotUpTo []Event
			for _, ev := range got {
				if ev.Rev <= last {
					gotUpTo = append(gotUpTo, ev)
				}
			}
			sort.SliceStable(gotUpTo, func(a, b int) bool {
				if gotUpTo[a].Rev != gotUpTo[b].Rev {
					return gotUpTo[a].Rev < gotUpTo[b].Rev
				}
				return gotUpTo[a].Key < gotUpTo[b].Key
			})
			if !slices.Equal(expect, gotUpTo) {
				problems = append(problems, fmt.Sprintf("%s: its watch delivered %d events up to revision %d, the history has %d (%s)",
					name, len(gotUpTo), last, len(expect), firstDifference(expect, gotUpTo)))
			}
		}
	}
	return problems
}

// firstDifference describes where two event sequences first differ.
func firstDifference(a, b []Event) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("event %d: %+v vs %+v", i, a[i], b[i])
		}
	}
	return fmt.Sprintf("one stops at event %d", min(len(a), len(b)))
}

// lastInResource is the revision of h's last event in the resource.
func lastInResource(h eventHistory) int64 {
	for i := len(h) - 1; i >= 0; i-- {
		if h[i].Key >= resourceStart && h[i].Key < resourceEnd {
			return h[i].Rev
		}
	}
	return 0
}
