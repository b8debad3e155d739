//go:build linux

package robustness

import (
	"fmt"
	"strings"

	"github.com/anishathalye/porcupine"
)

// Keys are the keys the traffic uses, spread so that SplitKeys put them in
// different ranges.
var Keys = [NumKeys]string{"a/0", "a/1", "h/0", "h/1", "p/0", "p/1", "w/0", "w/1"}

// SplitKeys are where the cluster's key space is split before the traffic
// starts: four ranges, two keys each.
var SplitKeys = []string{"h", "p", "w"}

// NumKeys is the number of keys the model tracks.
const NumKeys = 8

// State is the model's state: every key's value, "" when absent. Every
// value written is unique, so a compare on mod_revision is modelled as a
// compare on the value written at that revision.
type State [NumKeys]string

// OpKind is the kind of a recorded operation.
type OpKind int

// The operations of the etcd traffic profile.
const (
	OpGet       OpKind = iota // linearizable get of one key
	OpReadAll                 // one multi-range txn reading every key
	OpPut                     // put one key
	OpDelete                  // delete one key
	OpCAS                     // txn: if mod_revision(I) matches Expect[0], put I
	OpCAS2                    // txn over two ranges: if I and J match, put both
	OpDeleteAll               // one delete over every range
)

var opNames = [...]string{"get", "readAll", "put", "delete", "cas", "cas2", "deleteAll"}

// String names the kind.
func (k OpKind) String() string { return opNames[k] }

// Input is an operation's invocation.
type Input struct {
	Kind   OpKind
	I, J   int       // keys (indexes into Keys)
	Value  [2]string // values written to I (and J)
	Expect [2]string // values required at I (and J); "" = absent
}

// Output is an operation's outcome.
type Output struct {
	Values    State // get: Values[I]; readAll: all; failed CAS: the values seen
	Succeeded bool  // CAS, CAS2
	// Unknown is set when the client got no answer: the operation may
	// have taken effect at any point after its invocation.
	Unknown bool
	// Rev is the header revision of an acknowledged write (a put, a
	// successful CAS: the revision its events carry).
	Rev int64
}

// Model is etcd's KV semantics over Keys for porcupine. An operation
// with an unknown outcome forks: it may or may not have applied.
var Model = porcupine.Model{
	Init: func() any { return State{} },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(State), input.(Input), output.(Output)
		switch in.Kind {
		case OpGet:
			return out.Values[in.I] == st[in.I], st
		case OpReadAll:
			return out.Values == st, st
		case OpPut:
			st[in.I] = in.Value[0]
			return true, st
		case OpDelete:
			st[in.I] = ""
			return true, st
		case OpDeleteAll:
			return true, State{}
		}
		holds := st[in.I] == in.Expect[0] && (in.Kind == OpCAS || st[in.J] == in.Expect[1])
		next := st
		next[in.I] = in.Value[0]
		if in.Kind == OpCAS2 {
			next[in.J] = in.Value[1]
		}
		switch {
		case out.Unknown && holds:
			return true, next
		case out.Unknown:
			return true, st
		case out.Succeeded:
			return holds, next
		}
		seen := out.Values[in.I] == st[in.I] && (in.Kind == OpCAS || out.Values[in.J] == st[in.J])
		return !holds && seen, st
	},
	Equal: func(a, b any) bool { return a.(State) == b.(State) },
	DescribeOperation: func(input, output any) string {
		in, out := input.(Input), output.(Output)
		res := "ok"
		switch {
		case out.Unknown:
			res = "unknown"
		case in.Kind == OpGet:
			res = fmt.Sprintf("%q", out.Values[in.I])
		case in.Kind == OpReadAll:
			res = fmt.Sprintf("%q", out.Values)
		case (in.Kind == OpCAS || in.Kind == OpCAS2) && !out.Succeeded:
			res = fmt.Sprintf("failed, saw %q %q", out.Values[in.I], out.Values[in.J])
		}
		switch in.Kind {
		case OpGet, OpDelete:
			return fmt.Sprintf("%s(%s) -> %s", in.Kind, Keys[in.I], res)
		case OpPut:
			return fmt.Sprintf("put(%s, %s) -> %s", Keys[in.I], in.Value[0], res)
		case OpCAS:
			return fmt.Sprintf("cas(%s %q -> %s) -> %s", Keys[in.I], in.Expect[0], in.Value[0], res)
		case OpCAS2:
			return fmt.Sprintf("cas2(%s %q -> %s, %s %q -> %s) -> %s", Keys[in.I], in.Expect[0], in.Value[0],
				Keys[in.J], in.Expect[1], in.Value[1], res)
		}
		return fmt.Sprintf("%s -> %s", in.Kind, res)
	},
	DescribeState: func(state any) string {
		st := state.(State)
		parts := make([]string, 0, NumKeys)
		for i, v := range st {
			if v != "" {
				parts = append(parts, Keys[i]+"="+v)
			}
		}
		return "{" + strings.Join(parts, " ") + "}"
	},
}
