package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"text/tabwriter"
	"time"
)

// The systems a comparison runs, in the order of its first round.
const (
	SystemEtcd    = "etcd"
	SystemRangekv = "rangekv"
)

// CompareConfig is one side-by-side comparison: the same workload against
// an etcd cluster and a rangekv cluster of the same size on loopback, one
// after the other, on fresh clusters each round.
type CompareConfig struct {
	// Workload names the workload; Run runs it against Config with the
	// cluster's endpoints filled in.
	Workload string
	Run      func(ctx context.Context, c Config) (*Report, error)
	Config   Config
	// Nodes is each cluster's size.
	Nodes int
	// Etcd and Rangekv are the server binaries.
	Etcd, Rangekv string
	// EtcdFlags and RangekvFlags are appended to each member's flags.
	EtcdFlags, RangekvFlags []string
	// Dir holds the clusters' data and logs (removed after each round
	// unless KeepData).
	Dir      string
	KeepData bool
	// Rounds alternate the order (etcd first, then rangekv first, ...),
	// so that neither system always runs on a warmer machine.
	Rounds int
	// Ranges, when above 1, splits rangekv's key space into that many
	// ranges with spread leaderships before its run (SplitForRanges).
	Ranges int
	// Log, when set, receives one line per step.
	Log io.Writer
}

// CompareRun is one system's run in one round.
type CompareRun struct {
	System string  `json:"system"`
	Round  int     `json:"round"`
	Report *Report `json:"report"`
}

// CompareRow is one metric of one operation for both systems (the median
// over the rounds) and their ratio, rangekv over etcd.
type CompareRow struct {
	Op      string  `json:"op"`
	Metric  string  `json:"metric"`
	Etcd    float64 `json:"etcd"`
	Rangekv float64 `json:"rangekv"`
	Ratio   float64 `json:"ratio"`
}

// CompareReport is a comparison's outcome.
type CompareReport struct {
	Workload string       `json:"workload"`
	Nodes    int          `json:"nodes"`
	Clients  int          `json:"clients"`
	Conns    int          `json:"conns"`
	Started  time.Time    `json:"started"`
	Runs     []CompareRun `json:"runs"`
	Rows     []CompareRow `json:"rows"`
}

// Compare runs cfg's workload against etcd and rangekv, Rounds times each
// in alternating order, and summarizes the medians side by side.
func Compare(ctx context.Context, cfg CompareConfig) (*CompareReport, error) {
	cfg.Rounds = max(cfg.Rounds, 1)
	cfg.Nodes = max(cfg.Nodes, 1)
	logf := func(format string, args ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, format+"\n", args...)
		}
	}
	c := cfg.Config.Defaults()
	rep := &CompareReport{Workload: cfg.Workload, Nodes: cfg.Nodes, Clients: c.Clients, Conns: c.Conns, Started: time.Now()}
	for round := range cfg.Rounds {
		order := []string{SystemEtcd, SystemRangekv}
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, system := range order {
			binary, flags := cfg.Etcd, cfg.EtcdFlags
			if system == SystemRangekv {
				binary, flags = cfg.Rangekv, cfg.RangekvFlags
			}
			dir := filepath.Join(cfg.Dir, fmt.Sprintf("%s-round%d", system, round+1))
			logf("round %d: starting %d-node %s cluster (%s)", round+1, cfg.Nodes, system, binary)
			sctx, cancel := context.WithTimeout(ctx, time.Minute)
			lc, err := StartLocalCluster(sctx, system, binary, dir, cfg.Nodes, flags...)
			cancel()
			if err != nil {
				return rep, err
			}
			run := cfg.Config
			run.Endpoints = lc.Endpoints
			if system == SystemRangekv && cfg.Ranges > 1 {
				logf("round %d: splitting rangekv into %d ranges", round+1, cfg.Ranges)
				if err := SplitForRanges(ctx, run, cfg.Ranges); err != nil {
					lc.Stop()
					return rep, err
				}
			}
			logf("round %d: %s against %s", round+1, cfg.Workload, system)
			r, err := cfg.Run(ctx, run)
			lc.Stop()
			if !cfg.KeepData {
				_ = os.RemoveAll(dir)
			}
			if err != nil {
				return rep, fmt.Errorf("bench: %s against %s: %w", cfg.Workload, system, err)
			}
			rep.Runs = append(rep.Runs, CompareRun{System: system, Round: round + 1, Report: r})
		}
	}
	rep.Rows = compareRows(rep.Runs)
	return rep, nil
}

// compareRows takes, for every operation and metric, the median of each
// system's rounds.
func compareRows(runs []CompareRun) []CompareRow {
	type key struct{ op, metric string }
	vals := map[key]map[string][]float64{}
	var order []key
	add := func(op, metric, system string, v float64) {
		k := key{op, metric}
		if vals[k] == nil {
			vals[k] = map[string][]float64{}
			order = append(order, k)
		}
		vals[k][system] = append(vals[k][system], v)
	}
	for _, run := range runs {
		for _, o := range run.Report.Ops {
			add(o.Op, "throughput /s", run.System, o.Throughput)
			add(o.Op, "p50 ms", run.System, o.P50Ms)
			add(o.Op, "p99 ms", run.System, o.P99Ms)
			add(o.Op, "p99.9 ms", run.System, o.P999Ms)
			add(o.Op, "errors", run.System, float64(o.Errors))
		}
		if s := run.Report.Server; s != nil && s.SecondsPerOp > 0 {
			add("all", "server CPU µs/op", run.System, s.SecondsPerOp*1e6)
		}
	}
	var rows []CompareRow
	for _, k := range order {
		row := CompareRow{Op: k.op, Metric: k.metric, Etcd: median(vals[k][SystemEtcd]), Rangekv: median(vals[k][SystemRangekv])}
		if row.Etcd != 0 {
			row.Ratio = row.Rangekv / row.Etcd
		}
		rows = append(rows, row)
	}
	return rows
}

// median returns the median of vs (the mean of the middle two for an even
// count), 0 for none.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// WriteTable writes the comparison: one line per round and system, then
// the medians side by side with rangekv's ratio to etcd (above 1 is more:
// better for throughput, worse for latency and CPU).
func (r *CompareReport) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "workload %s, %d-node clusters on loopback, %d clients over %d connections\n", r.Workload, r.Nodes, r.Clients, r.Conns)
	for _, run := range r.Runs {
		var thr float64
		for _, o := range run.Report.Ops {
			if o.Op != "watch" { // deliveries, not requests
				thr += o.Throughput
			}
		}
		fmt.Fprintf(w, "round %d %-8s %8.0f ops/s over %v\n", run.Round, run.System, thr, run.Report.Elapsed.Round(time.Millisecond))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "OP\tMETRIC\tETCD\tRANGEKV\tRANGEKV/ETCD\t")
	for _, row := range r.Rows {
		ratio := "-"
		if row.Ratio != 0 {
			ratio = fmt.Sprintf("%.2f", row.Ratio)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", row.Op, row.Metric, fmtMetric(row.Etcd), fmtMetric(row.Rangekv), ratio)
	}
	return tw.Flush()
}

func fmtMetric(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// WriteJSON writes the comparison, every run's report included.
func (r *CompareReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
