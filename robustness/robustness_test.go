//go:build linux

package robustness

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/stretchr/testify/require"
)

// The short profile runs in `go test ./...`; the long one is
//
//	go test ./robustness -run TestRobustness -timeout 3h \
//	    -robustness.cycles 200 -robustness.nodes 3 -v
var (
	cycles  = flag.Int("robustness.cycles", 4, "fault cycles per run")
	nodes   = flag.Int("robustness.nodes", 3, "cluster size")
	clients = flag.Int("robustness.clients", 6, "concurrent clients")
	seed    = flag.Uint64("robustness.seed", 0, "seed of the schedule (0: from the clock); printed by every run")
	kinds   = flag.String("robustness.faults", "", "comma-separated fault kinds to pick from (default: all)")
	recheck = flag.String("robustness.recheck", "", "a report folder: check its history again (TestRecheckReport)")
	profile = flag.String("robustness.profiles", strings.Join(Profiles, ","), "comma-separated traffic profiles, one run each")
)

// selectedFaults returns the fault kinds -robustness.faults names.
func selectedFaults(t *testing.T) []Fault {
	if *kinds == "" {
		return nil
	}
	var out []Fault
	for _, name := range strings.Split(*kinds, ",") {
		i := slices.IndexFunc(Faults, func(f Fault) bool { return f.Name == name })
		require.GreaterOrEqual(t, i, 0, "unknown fault kind %q", name)
		out = append(out, Faults[i])
	}
	return out
}

var rangekvBin string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "robustness-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	rangekvBin = filepath.Join(dir, "rangekv")
	root, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cmd := exec.Command("go", "build", "-o", rangekvBin, "./cmd/rangekv")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(root)))
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestRobustness runs each traffic profile over keys in four ranges
// through fault cycles and checks the history: porcupine, the watch
// guarantees, stale reads, informers (Kubernetes), the bank, and a final
// read through every node.
func TestRobustness(t *testing.T) {
	for _, p := range strings.Split(*profile, ",") {
		require.Contains(t, Profiles, p, "unknown profile")
		t.Run(p, func(t *testing.T) { runProfile(t, p) })
	}
}

func runProfile(t *testing.T, profile string) {
	s := *seed
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -robustness.seed %d -robustness.profiles %s)", s, s, profile)
	res, err := Run(context.Background(), Config{
		Binary: rangekvBin, Dir: t.TempDir(), Nodes: *nodes, Clients: *clients, Cycles: *cycles, Seed: s,
		Profile: profile, Faults: selectedFaults(t), Settle: time.Second, CheckTimeout: 5 * time.Minute, Log: t.Logf,
	})
	if res != nil {
		t.Logf("history: %d operations %v", len(res.Operations), res.Counts)
		if res.Report != "" {
			t.Logf("report (history, visualization, node logs): %s", res.Report)
		}
	}
	require.NoError(t, err)
	require.Equal(t, porcupine.Ok, res.Check, "the history is not linearizable (seed %d)", s)
	require.Empty(t, res.WatchProblems, "watch guarantees (seed %d)", s)
	require.Empty(t, res.StaleProblems, "stale reads (seed %d)", s)
	require.Empty(t, res.InformerProblems, "informers (seed %d)", s)
	require.Empty(t, res.Bank.Problems, "bank invariant (seed %d)", s)
	require.Empty(t, res.LogProblems, "node logs (seed %d)", s)
	require.Zero(t, res.FinalReadErrors, "final reads (seed %d)", s)
	require.Positive(t, res.Bank.Transfers, "no transfer succeeded")
	for _, n := range res.WatchEvents {
		require.Positive(t, n, "a watcher saw no event")
	}
	require.Positive(t, res.Counts["cas-ok"], "no CAS succeeded")
	require.Positive(t, res.Counts["readAll"], "no read completed")
	require.Positive(t, res.StaleChecked, "no stale read was checked")
	if profile == ProfileEtcd {
		require.Positive(t, res.Counts["cas2-ok"], "no cross-range transaction succeeded")
	}
	for _, inf := range res.Informers {
		require.NotEmpty(t, inf.Epochs, "%s never listed", inf.Name)
	}
}

// TestModelRejectsLostWrite checks the checker: an acknowledged put that
// a later read does not see is Illegal; a torn cross-range swap too.
func TestModelRejectsLostWrite(t *testing.T) {
	put := porcupine.Operation{ClientId: 0, Input: Input{Kind: OpPut, I: 2, Value: [2]string{"v"}}, Output: Output{}, Call: 0, Return: 10}
	lost := porcupine.Operation{ClientId: 1, Input: Input{Kind: OpGet, I: 2}, Output: Output{}, Call: 20, Return: 30}
	require.Equal(t, porcupine.Illegal, porcupine.CheckOperationsTimeout(Model, []porcupine.Operation{put, lost}, time.Second))
	seen := lost
	seen.Output = Output{Values: State{2: "v"}}
	require.Equal(t, porcupine.Ok, porcupine.CheckOperationsTimeout(Model, []porcupine.Operation{put, seen}, time.Second))

	swap := porcupine.Operation{ClientId: 0, Input: Input{Kind: OpCAS2, I: 0, J: 4, Value: [2]string{"p", "q"}},
		Output: Output{Succeeded: true}, Call: 0, Return: 10}
	torn := porcupine.Operation{ClientId: 1, Input: Input{Kind: OpReadAll}, Output: Output{Values: State{0: "p"}}, Call: 20, Return: 30}
	require.Equal(t, porcupine.Illegal, porcupine.CheckOperationsTimeout(Model, []porcupine.Operation{swap, torn}, time.Second))
	unknown := swap
	unknown.Output = Output{Unknown: true}
	unknown.Return = 1 << 62
	empty := torn
	empty.Output = Output{}
	require.Equal(t, porcupine.Ok, porcupine.CheckOperationsTimeout(Model, []porcupine.Operation{unknown, empty}, time.Second))
}

// TestCheckWatchers checks the watch checker on histories that break
// each guarantee.
func TestCheckWatchers(t *testing.T) {
	ev := func(k, v string, rev int64) Event { return Event{Key: k, Value: v, Rev: rev} }
	put := Input{Kind: OpPut, I: 0, Value: [2]string{"v1"}}
	acked := Output{Rev: 5}
	good := &Watcher{Node: "a", Responses: [][]Event{{ev("a/0", "v1", 5)}, {ev("h/0", "x", 7), ev("p/0", "y", 7)}}}
	require.Empty(t, CheckWatchers([]*Watcher{good, good}, []Output{acked}, []Input{put}))

	for name, w := range map[string]*Watcher{
		"unordered":  {Node: "b", Responses: [][]Event{{ev("h/0", "x", 7)}, {ev("a/0", "v1", 5)}}},
		"duplicated": {Node: "b", Responses: [][]Event{{ev("a/0", "v1", 5)}, {ev("a/0", "v1", 5), ev("h/0", "x", 7)}}},
		"torn":       {Node: "b", Responses: [][]Event{{ev("a/0", "v1", 5), ev("h/0", "x", 7)}, {ev("p/0", "y", 7)}}},
		"lost":       {Node: "b", Responses: [][]Event{{ev("h/0", "x", 7), ev("p/0", "y", 7)}}},
		"different":  {Node: "b", Responses: [][]Event{{ev("a/0", "v2", 5)}, {ev("h/0", "x", 7), ev("p/0", "y", 7)}}},
	} {
		require.NotEmpty(t, CheckWatchers([]*Watcher{good, w}, []Output{acked}, []Input{put}), name)
	}
}

// TestCheckStaleReads checks the stale-read checker: a read matching the
// history at its revision passes; an invented or torn one does not.
func TestCheckStaleReads(t *testing.T) {
	h := eventHistory{{Key: "a/0", Value: "v1", Rev: 5}, {Key: "h/0", Value: "x", Rev: 7}, {Key: "a/0", Rev: 9, Delete: true}}
	read := func(rev int64, vals map[string]string) StaleRead {
		return StaleRead{Rev: rev, Keys: []string{"a/0", "h/0"}, Values: vals}
	}
	good := []StaleRead{read(4, map[string]string{}), read(5, map[string]string{"a/0": "v1"}),
		read(8, map[string]string{"a/0": "v1", "h/0": "x"}), read(9, map[string]string{"h/0": "x"}), read(12, nil)}
	problems, checked := CheckStaleReads(h, good)
	require.Empty(t, problems)
	require.Equal(t, 4, checked, "a read above the history is not checked")
	for name, r := range map[string]StaleRead{
		"invented": read(4, map[string]string{"a/0": "v0"}),
		"torn":     read(7, map[string]string{"h/0": "x"}),
		"deleted":  read(9, map[string]string{"a/0": "v1", "h/0": "x"}),
	} {
		problems, _ := CheckStaleReads(h, []StaleRead{r})
		require.NotEmpty(t, problems, name)
	}
}

// TestCheckInformers checks the informer checker on lists and watches
// that break each guarantee.
func TestCheckInformers(t *testing.T) {
	h := eventHistory{{Key: "a/0", Value: "v1", Rev: 5}, {Key: "0/acct0", Value: "100", Rev: 6},
		{Key: "h/0", Value: "x", Rev: 7}, {Key: "p/0", Value: "y", Rev: 7}, {Key: "a/0", Rev: 9, Delete: true}}
	ev := func(i int) Event { return h[i] }
	good := &InformerEpoch{ListRev: 5, List: map[string]string{"a/0": "v1"},
		Responses: [][]Event{{ev(2), ev(3)}, {ev(4)}}, Bookmarks: []Bookmark{{After: 1, Rev: 8}}}
	require.Empty(t, CheckInformers(h, []*Informer{{Name: "good", Epochs: []*InformerEpoch{good}}}))

	bad := map[string]*InformerEpoch{
		"wrong list":         {ListRev: 5, List: map[string]string{}, Responses: good.Responses},
		"list outside":       {ListRev: 6, List: map[string]string{"a/0": "v1", "0/acct0": "100"}, Responses: good.Responses},
		"event before list":  {ListRev: 5, List: good.List, Responses: [][]Event{{ev(0)}, {ev(2), ev(3)}, {ev(4)}}},
		"torn revision":      {ListRev: 5, List: good.List, Responses: [][]Event{{ev(2)}, {ev(3)}, {ev(4)}}},
		"missed event":       {ListRev: 5, List: good.List, Responses: [][]Event{{ev(2)}, {ev(4)}}},
		"stalled":            {ListRev: 5, List: good.List, Responses: [][]Event{{ev(2), ev(3)}}},
		"event after mark":   {ListRev: 5, List: good.List, Responses: good.Responses, Bookmarks: []Bookmark{{After: 1, Rev: 9}}},
		"unordered delivery": {ListRev: 5, List: good.List, Responses: [][]Event{{ev(4)}, {ev(2), ev(3)}}},
	}
	for name, ep := range bad {
		require.NotEmpty(t, CheckInformers(h, []*Informer{{Name: name, Epochs: []*InformerEpoch{ep}}}), name)
	}
}

// TestModelConditionalDelete checks the Kubernetes profile's delete, a CAS
// writing "": it applies only if the compare holds.
func TestModelConditionalDelete(t *testing.T) {
	put := porcupine.Operation{ClientId: 0, Input: Input{Kind: OpPut, I: 1, Value: [2]string{"v"}}, Output: Output{}, Call: 0, Return: 10}
	del := porcupine.Operation{ClientId: 0, Input: Input{Kind: OpCAS, I: 1, Expect: [2]string{"v"}},
		Output: Output{Succeeded: true}, Call: 20, Return: 30}
	gone := porcupine.Operation{ClientId: 1, Input: Input{Kind: OpGet, I: 1}, Output: Output{}, Call: 40, Return: 50}
	require.Equal(t, porcupine.Ok, porcupine.CheckOperationsTimeout(Model, []porcupine.Operation{put, del, gone}, time.Second))
	still := gone
	still.Output = Output{Values: State{1: "v"}}
	require.Equal(t, porcupine.Illegal, porcupine.CheckOperationsTimeout(Model, []porcupine.Operation{put, del, still}, time.Second))
	stale := del
	stale.Input = Input{Kind: OpCAS, I: 1, Expect: [2]string{"other"}}
	require.Equal(t, porcupine.Illegal, porcupine.CheckOperationsTimeout(Model, []porcupine.Operation{put, stale, gone}, time.Second))
}

// TestRecheckReport checks a failed run's history again from its report
// folder (-robustness.recheck DIR): the unanswered writes settled by the
// first watcher's events, then porcupine with a 10-minute budget.
func TestRecheckReport(t *testing.T) {
	if *recheck == "" {
		t.Skip("-robustness.recheck names no report folder")
	}
	var hist struct {
		Operations []struct {
			Client       int
			Call, Return int64
			Input        Input
			Output       Output
		}
	}
	data, err := os.ReadFile(filepath.Join(*recheck, "history.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &hist))
	var w Watcher
	data, err = os.ReadFile(filepath.Join(*recheck, "watcher-1.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &w))
	ops := make([]porcupine.Operation, 0, len(hist.Operations))
	for _, o := range hist.Operations {
		ops = append(ops, porcupine.Operation{ClientId: o.Client, Call: o.Call, Return: o.Return, Input: o.Input, Output: o.Output})
	}
	ops, resolved, dropped, problems := ResolveUnknown(ops, reference([]*Watcher{&w}))
	t.Logf("%d operations; unanswered writes: %d took effect, %d did not", len(ops), resolved, dropped)
	require.Empty(t, problems)
	start := time.Now()
	res := porcupine.CheckOperationsTimeout(Model, ops, 10*time.Minute)
	t.Logf("porcupine: %s in %v", res, time.Since(start).Round(time.Millisecond))
	require.Equal(t, porcupine.Ok, res)
}

// TestResolveUnknown checks how unanswered writes are settled by the
// watch history: found, absent, torn, and deletes left unknown.
func TestResolveUnknown(t *testing.T) {
	h := eventHistory{{Key: "a/0", Value: "p1", Rev: 5}, {Key: "h/0", Value: "x", Rev: 7}, {Key: "p/0", Value: "y", Rev: 7},
		{Key: "w/0", Value: "z", Rev: 9}}
	unknown := Output{Unknown: true}
	op := func(in Input) porcupine.Operation {
		return porcupine.Operation{Input: in, Output: unknown, Call: 1, Return: math.MaxInt64}
	}
	ops := []porcupine.Operation{
		op(Input{Kind: OpPut, I: 0, Value: [2]string{"p1"}}),                      // took effect at 5
		op(Input{Kind: OpCAS2, I: 2, J: 4, Value: [2]string{"x", "y"}}),           // at 7
		op(Input{Kind: OpCAS, I: 1, Value: [2]string{"never"}}),                   // did not
		op(Input{Kind: OpDelete, I: 3}),                                           // stays unknown
		op(Input{Kind: OpCAS, I: 3, Expect: [2]string{"v"}}),                      // a conditional delete: stays
		{Input: Input{Kind: OpGet, I: 0}, Output: Output{Values: State{0: "p1"}}}, // answered: kept as is
	}
	out, resolved, dropped, problems := ResolveUnknown(ops, h)
	require.Empty(t, problems)
	require.Equal(t, 2, resolved)
	require.Equal(t, 1, dropped)
	require.Len(t, out, 5)
	require.Equal(t, Output{Succeeded: true, Rev: 5}, out[0].Output)
	require.Equal(t, Output{Succeeded: true, Rev: 7}, out[1].Output)
	require.True(t, out[2].Output.(Output).Unknown, "the delete")
	require.True(t, out[3].Output.(Output).Unknown, "the conditional delete")

	torn := op(Input{Kind: OpCAS2, I: 6, J: 0, Value: [2]string{"z", "missing"}})
	_, _, _, problems = ResolveUnknown([]porcupine.Operation{torn}, h)
	require.Len(t, problems, 1)
}
