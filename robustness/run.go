//go:build linux

package robustness

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/rangekv/rangekv/txnproto"
)

// Config is one robustness run.
type Config struct {
	Binary  string // the rangekv binary
	Dir     string // data directories and logs
	Nodes   int    // cluster size (3 or 5)
	Clients int    // concurrent clients, spread over the nodes
	Cycles  int    // fault cycles: traffic, a fault under it, traffic
	Seed    uint64 // seeds the fault schedule and the clients
	// Profile is the traffic: ProfileEtcd (default) or ProfileKubernetes.
	Profile string
	// Faults are the kinds to pick from (default: all of Faults).
	Faults []Fault
	// Settle is the traffic before and after each fault.
	Settle time.Duration
	// CheckTimeout bounds porcupine.
	CheckTimeout time.Duration
	Log          func(format string, args ...any)
}

// Result is what a run saw.
type Result struct {
	Operations []porcupine.Operation
	Counts     map[string]int
	Faults     []string
	Check      porcupine.CheckResult
	// WatchProblems are violations of the watch guarantees
	// (CheckWatchers); WatchEvents counts each watcher's events.
	WatchProblems []string
	WatchEvents   []int
	// Bank holds the bank's counts and invariant violations.
	Bank *Bank
	// Watchers hold what each watcher delivered.
	Watchers []*Watcher
	// StaleProblems are serializable reads that disagree with the watch
	// history at their revision (CheckStaleReads); StaleChecked counts
	// the reads checked.
	StaleProblems []string
	StaleChecked  int
	// Informers (Kubernetes profile) and the violations CheckInformers
	// found in their lists, watches and bookmarks.
	Informers        []*Informer
	InformerProblems []string
	// Resolved and Dropped count the unanswered writes ResolveUnknown
	// found in the watch history and found absent from it.
	Resolved, Dropped int
	// CatchUp is how long the watchers and informers took, after the
	// final reads, to deliver the last acknowledged write.
	CatchUp time.Duration
	// FinalReadErrors counts nodes the final read could not go through.
	FinalReadErrors int
	// LogProblems are node log lines that only a bug writes
	// (CheckNodeLogs).
	LogProblems []string
	// Report is the folder the run's evidence was written to when a
	// check did not pass.
	Report string
}

// Run starts a cluster, splits it into four ranges, runs the clients
// through Cycles faults, stops, and checks the history.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	logf := cfg.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	// A small --snapshot-count truncates the raft logs every few hundred
	// writes, so a node that was down or cut off catches up by snapshot.
	c, err := NewCluster(cfg.Binary, cfg.Dir, cfg.Nodes, "--snapshot-count", strconv.Itoa(SnapshotCount))
	if err != nil {
		return nil, err
	}
	defer c.Stop()
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := c.Start(sctx); err != nil {
		return nil, err
	}
	for _, k := range SplitKeys {
		if err := withRanges(sctx, c, rand.New(rand.NewPCG(cfg.Seed, 0)), func(rc txnproto.RangesClient) error {
			_, err := rc.SplitRange(sctx, &txnproto.SplitRangeRequest{Key: []byte(k)})
			return err
		}); err != nil {
			return nil, fmt.Errorf("split at %q: %w", k, err)
		}
	}

	// Two watchers over every key, through different nodes, from the
	// revision the traffic starts at.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	var watchers []*Watcher
	var wwg sync.WaitGroup
	var startRev int64
	for i := range 2 {
		n := c.Nodes[i%len(c.Nodes)]
		kv, err := dial(append([]string{n.Endpoint()}, c.Endpoints()...))
		if err != nil {
			return nil, err
		}
		defer kv.Close()
		if startRev == 0 {
			resp, err := kv.Get(sctx, "robustness-start")
			if err != nil {
				return nil, err
			}
			startRev = resp.Header.Revision + 1
		}
		w := &Watcher{Node: fmt.Sprintf("watcher %d (first endpoint %s)", i+1, n.Name)}
		watchers = append(watchers, w)
		wwg.Go(func() { w.Watch(wctx, kv, startRev) })
	}

	h := NewHistory()
	stale := &StaleReads{}
	stop := make(chan struct{})
	var wg sync.WaitGroup

	// Kubernetes: two informers, each through its own node.
	var informers []*Informer
	if cfg.Profile == ProfileKubernetes {
		for i := range 2 {
			n := c.Nodes[(i+1)%len(c.Nodes)]
			kv, err := dial([]string{n.Endpoint(), c.Nodes[(i+2)%len(c.Nodes)].Endpoint()})
			if err != nil {
				return nil, err
			}
			defer kv.Close()
			inf := &Informer{Name: fmt.Sprintf("informer %d (first endpoint %s)", i+1, n.Name)}
			informers = append(informers, inf)
			wwg.Go(func() { inf.Run(wctx, kv) })
		}
	}

	// The bank: two transferring clients and an auditor, each on its own
	// nodes.
	bank := &Bank{}
	bankClients := make([]*clientv3.Client, 3)
	for i := range bankClients {
		eps := []string{c.Nodes[i%len(c.Nodes)].Endpoint(), c.Nodes[(i+1)%len(c.Nodes)].Endpoint()}
		kv, err := dial(eps)
		if err != nil {
			return nil, err
		}
		defer kv.Close()
		bankClients[i] = kv
	}
	if err := bank.Open(sctx, bankClients[0]); err != nil {
		return nil, fmt.Errorf("opening the bank: %w", err)
	}
	for i, kv := range bankClients {
		rng := rand.New(rand.NewPCG(cfg.Seed, uint64(1000+i)))
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if i < 2 {
					bank.Transfer(ctx, kv, rng)
					continue
				}
				actx, acancel := context.WithTimeout(ctx, 3*time.Second)
				bank.Audit(actx, kv, n%2 == 1)
				acancel()
			}
		})
	}
	for i := range cfg.Clients {
		// Each client talks to two nodes, so it fails over when one dies.
		eps := []string{c.Nodes[i%len(c.Nodes)].Endpoint(), c.Nodes[(i+1)%len(c.Nodes)].Endpoint()}
		kv, err := dial(eps)
		if err != nil {
			close(stop)
			wg.Wait()
			return nil, err
		}
		cl := &Client{ID: i, KV: kv, History: h, Rand: rand.New(rand.NewPCG(cfg.Seed, uint64(i)+1)), Timeout: 3 * time.Second,
			Profile: cfg.Profile, Stale: stale}
		wg.Go(func() {
			defer kv.Close()
			for {
				select {
				case <-stop:
					return
				default:
				}
				cl.Step(ctx)
			}
		})
	}

	res := &Result{}
	rng := rand.New(rand.NewPCG(cfg.Seed, 1<<40))
	var faultErr error
	for cycle := range cfg.Cycles {
		time.Sleep(cfg.Settle)
		kinds := cfg.Faults
		if len(kinds) == 0 {
			kinds = Faults
		}
		f := kinds[rng.IntN(len(kinds))]
		fctx, fcancel := context.WithTimeout(ctx, time.Minute)
		what, err := f.Inject(fctx, c, rng)
		fcancel()
		res.Faults = append(res.Faults, what)
		logf("cycle %d: %s", cycle+1, what)
		if err != nil {
			faultErr = fmt.Errorf("cycle %d (%s): %w", cycle+1, what, err)
			break
		}
	}
	time.Sleep(cfg.Settle)
	close(stop)
	wg.Wait()

	// Nothing acknowledged is lost: a final linearizable read of every
	// key through each node joins the history, and a final audit.
	for i, n := range c.Nodes {
		kv, err := dial([]string{n.Endpoint()})
		if err != nil {
			return nil, err
		}
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		final := &Client{ID: finalClientID + i, KV: kv, History: h}
		if err := final.readAll(actx); err != nil {
			logf("final read through %s: %v", n.Name, err)
			res.FinalReadErrors++
		}
		bank.Audit(actx, kv, false)
		acancel()
		kv.Close()
	}
	res.Operations = h.Operations()
	res.Counts = h.Counts()
	res.Bank = bank
	logf("bank: %d transfers, %d audits, %d unanswered transfers", bank.Transfers, bank.Audits, bank.Unanswered)
	// Wait until every watcher and informer has delivered the last
	// acknowledged write (liveness), at most CatchUpTimeout, then stop
	// them; what is still missing is reported by the checks.
	lastAck := lastAcknowledged(res.Operations) // every recorded write is to the resource
	start := time.Now()
	caughtUp := func() bool {
		for _, w := range watchers {
			if w.last.Load() < lastAck {
				return false
			}
		}
		for _, inf := range informers {
			if inf.last.Load() < lastAck {
				return false
			}
		}
		return true
	}
	for !caughtUp() && time.Since(start) < CatchUpTimeout {
		time.Sleep(20 * time.Millisecond)
	}
	res.CatchUp = time.Since(start)
	logf("watchers and informers caught up with the last acknowledged write in %v (at most %v)", res.CatchUp.Round(time.Millisecond), CatchUpTimeout)
	wcancel()
	wwg.Wait()
	var outs []Output
	var ins []Input
	for _, op := range res.Operations {
		outs = append(outs, op.Output.(Output))
		ins = append(ins, op.Input.(Input))
	}
	res.WatchProblems = CheckWatchers(watchers, outs, ins)
	res.Watchers = watchers
	ref := reference(watchers)
	res.StaleProblems, res.StaleChecked = CheckStaleReads(ref, stale.Reads)
	res.Informers = informers
	res.InformerProblems = CheckInformers(ref, informers)
	res.LogProblems = CheckNodeLogs(c)
	logf("stale reads: %d checked against the watch history, %d violations", res.StaleChecked, len(res.StaleProblems))
	for _, inf := range informers {
		evs, bms := 0, 0
		for _, ep := range inf.Epochs {
			bms += len(ep.Bookmarks)
			for _, r := range ep.Responses {
				evs += len(r)
			}
		}
		logf("%s: %d lists, %d events, %d bookmarks", inf.Name, len(inf.Epochs), evs, bms)
	}
	for _, w := range watchers {
		n := 0
		for _, r := range w.Responses {
			n += len(r)
		}
		res.WatchEvents = append(res.WatchEvents, n)
		logf("%s: %d events in %d responses, %d resumes", w.Node, n, len(w.Responses), w.Resumes)
	}
	if faultErr != nil {
		res.Report = writeReport(cfg, c, res, nil)
		return res, faultErr
	}
	ops := res.Operations
	if len(res.WatchProblems) == 0 {
		var problems []string
		ops, res.Resolved, res.Dropped, problems = ResolveUnknown(ops, ref)
		res.WatchProblems = append(res.WatchProblems, problems...)
		logf("unanswered writes settled by the watch history: %d took effect, %d did not", res.Resolved, res.Dropped)
	}
	check, info := porcupine.CheckOperationsVerbose(Model, ops, cfg.CheckTimeout)
	res.Check = check
	if !res.Passed() {
		res.Report = writeReport(cfg, c, res, &info)
	}
	return res, nil
}

// Passed reports whether every check passed.
func (r *Result) Passed() bool {
	return r.Check == porcupine.Ok && len(r.WatchProblems) == 0 && len(r.Bank.Problems) == 0 &&
		len(r.StaleProblems) == 0 && len(r.InformerProblems) == 0 && r.FinalReadErrors == 0 &&
		len(r.LogProblems) == 0
}

// bugLogLines are messages a node logs only when its own invariants
// broke: a command that failed after staging writes (the pass's batch
// commits them anyway), and a write applied at or below its range's
// closed timestamp.
var bugLogLines = []string{"command failed after writing", "write applied at or below the range's closed timestamp"}

// CheckNodeLogs returns every line of the nodes' logs (all their runs)
// that carries one of bugLogLines, named by node.
func CheckNodeLogs(c *Cluster) []string {
	var out []string
	for _, nd := range c.Nodes {
		data, err := os.ReadFile(nd.LogPath)
		if err != nil {
			out = append(out, fmt.Sprintf("%s: reading its log: %v", nd.Name, err))
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			for _, bug := range bugLogLines {
				if strings.Contains(line, bug) {
					out = append(out, nd.Name+": "+line)
				}
			}
		}
	}
	return out
}

// CatchUpTimeout bounds how long a run waits, once the traffic and the
// faults have stopped, for every watch to deliver the last acknowledged
// write; a watch still behind then fails the liveness checks.
const CatchUpTimeout = 15 * time.Second

// lastAcknowledged returns the revision of the last acknowledged write.
func lastAcknowledged(ops []porcupine.Operation) (last int64) {
	for _, op := range ops {
		if out := op.Output.(Output); acknowledgedWrite(op.Input.(Input), out) && out.Rev > last {
			last = out.Rev
		}
	}
	return last
}

// acknowledgedWrite reports whether an operation is a write the client
// was told took effect: a put, or a CAS that succeeded.
func acknowledgedWrite(in Input, out Output) bool {
	return !out.Unknown && (in.Kind == OpPut || (in.Kind == OpCAS || in.Kind == OpCAS2) && out.Succeeded)
}

// SnapshotCount is the rangekv --snapshot-count of a run's nodes.
const SnapshotCount = 200

// finalClientID is the first history client ID of the final reads.
const finalClientID = 1000

// dial connects a quiet clientv3 client to endpoints.
func dial(endpoints []string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
}

// writeReport writes the history (JSON), porcupine's visualization (when
// info is set) and the nodes' logs into a folder named after the seed,
// and returns it.
func writeReport(cfg Config, c *Cluster, res *Result, info *porcupine.LinearizationInfo) string {
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("rangekv-robustness-%d-%d", cfg.Seed, time.Now().Unix()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return ""
	}
	type op struct {
		Client       int
		Call, Return int64
		Input        Input
		Output       Output
	}
	ops := make([]op, 0, len(res.Operations))
	for _, o := range res.Operations {
		ops = append(ops, op{o.ClientId, o.Call, o.Return, o.Input.(Input), o.Output.(Output)})
	}
	if data, err := json.MarshalIndent(map[string]any{"seed": cfg.Seed, "faults": res.Faults,
		"watch_problems": res.WatchProblems, "bank_problems": res.Bank.Problems, "stale_read_problems": res.StaleProblems,
		"informer_problems": res.InformerProblems, "log_problems": res.LogProblems, "operations": ops}, "", " "); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "history.json"), data, 0o644)
	}
	if info != nil {
		_ = porcupine.VisualizePath(Model, *info, filepath.Join(dir, "history.html"))
	}
	for i, inf := range res.Informers {
		if data, err := json.MarshalIndent(inf, "", " "); err == nil {
			_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("informer-%d.json", i+1)), data, 0o644)
		}
	}
	for i, w := range res.Watchers {
		if data, err := json.MarshalIndent(w, "", " "); err == nil {
			_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("watcher-%d.json", i+1)), data, 0o644)
		}
	}
	for _, n := range c.Nodes {
		if data, err := os.ReadFile(n.LogPath); err == nil {
			_ = os.WriteFile(filepath.Join(dir, n.Name+".log"), data, 0o644)
		}
	}
	return dir
}
