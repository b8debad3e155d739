//go:build linux

package robustness

import (
	"context"
	"fmt"
	"sort"

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
}

// Event is one delivered event.
type Event struct {
	Key, Value string
	Rev        int64
	Delete     bool
}

// Watch runs until ctx ends, recording every response of a watch over
// every key from revision from. A watch that ends with an error is
// resumed from the revision after the last one delivered (Resumes counts
// them); a compaction error ends the watcher.
func (w *Watcher) Watch(ctx context.Context, kv *clientv3.Client, from int64) {
	next := from
	for ctx.Err() == nil {
		for resp := range kv.Watch(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(next)) {
			if err := resp.Err(); err != nil {
				if resp.CompactRevision != 0 {
					w.Err = err
					return
				}
				break
			}
			var evs []Event
			for _, ev := range resp.Events {
				evs = append(evs, Event{Key: string(ev.Kv.Key), Value: string(ev.Kv.Value), Rev: ev.Kv.ModRevision,
					Delete: ev.Type == clientv3.EventTypeDelete})
				next = ev.Kv.ModRevision + 1
			}
			if len(evs) > 0 {
				w.Responses = append(w.Responses, evs)
			}
		}
		if ctx.Err() == nil {
			w.Resumes++
		}
	}
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
	// Reliable: every acknowledged put (plain or by a CAS) covered by a
	// watcher's last revision is in its events.
	for i, w := range ws {
		if len(seqs[i]) == 0 {
			continue
		}
		covered := seqs[i][len(seqs[i])-1].Rev
		have := map[string]bool{}
		for _, ev := range seqs[i] {
			if !ev.Delete {
				have[fmt.Sprintf("%s=%s@%d", ev.Key, ev.Value, ev.Rev)] = true
			}
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
