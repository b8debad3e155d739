//go:build linux

package robustness

import (
	"fmt"
	"math"

	"github.com/anishathalye/porcupine"
)

// ResolveUnknown settles the writes that got no answer using the watch
// history, as etcd's robustness suite patches its histories: every value
// written is unique and the watchers are checked to deliver every event
// (CheckWatchers), so a write whose values appear in h took effect, at
// the event's revision, and one whose values never appear did not. It
// returns the operations with the first made known (a put, or a CAS that
// succeeded) and the second removed, so porcupine need not fork on them.
// Deletes (plain, conditional, or of every key) carry no value and stay
// unknown. A cross-range CAS with one of its two values in h is torn,
// and reported as a problem.
func ResolveUnknown(ops []porcupine.Operation, h eventHistory) (out []porcupine.Operation, resolved, dropped int, problems []string) {
	revOf := map[string]int64{} // key=value -> revision
	for _, ev := range h {
		if !ev.Delete {
			revOf[ev.Key+"="+ev.Value] = ev.Rev
		}
	}
	out = make([]porcupine.Operation, 0, len(ops))
	for _, op := range ops {
		in, o := op.Input.(Input), op.Output.(Output)
		if !o.Unknown || in.Value[0] == "" {
			out = append(out, op)
			continue
		}
		var writes []string
		switch in.Kind {
		case OpPut, OpCAS:
			writes = []string{Keys[in.I] + "=" + in.Value[0]}
		case OpCAS2:
			writes = []string{Keys[in.I] + "=" + in.Value[0], Keys[in.J] + "=" + in.Value[1]}
		default:
			out = append(out, op)
			continue
		}
		var revs []int64
		for _, w := range writes {
			if rev, ok := revOf[w]; ok {
				revs = append(revs, rev)
			}
		}
		switch {
		case len(revs) == 0:
			dropped++
		case len(revs) < len(writes) || len(revs) == 2 && revs[0] != revs[1]:
			problems = append(problems, fmt.Sprintf("unanswered %s by client %d: only some of its writes %v are in the watch history, at %v",
				in.Kind, op.ClientId, writes, revs))
			out = append(out, op)
		default:
			// It took effect at revs[0]; when it returned is still unknown.
			op.Output = Output{Succeeded: true, Rev: revs[0]}
			op.Return = math.MaxInt64
			out = append(out, op)
			resolved++
		}
	}
	return out, resolved, dropped, problems
}
