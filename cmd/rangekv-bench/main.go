// Command rangekv-bench drives etcd-compatible endpoints (rangekv or etcd)
// with the workloads of package bench and prints throughput, latency
// percentiles (HdrHistogram) and, for local servers, their CPU seconds per
// operation, as a table and optionally as JSON. Flags follow etcd's
// benchmark tool where they overlap.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/rangekv/rangekv/bench"
)

func main() {
	if err := newRootCommand(os.Stdout, os.Stderr).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

// options are the flags every workload shares.
type options struct {
	flags    interface{ Changed(string) bool }
	cfg      bench.Config
	jsonPath string
	ranges   int
	noTTY    bool
}

func newRootCommand(out, errOut io.Writer) *cobra.Command {
	o := &options{}
	root := &cobra.Command{
		Use:   "rangekv-bench",
		Short: "Benchmark etcd-compatible endpoints (rangekv or etcd)",
		Long: `rangekv-bench runs a workload against the endpoints and reports throughput,
latency percentiles and, when the servers run on this machine, their CPU
seconds per operation. Every request is counted, as a success or as an
error grouped by message.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	o.flags = pf
	pf.StringSliceVar(&o.cfg.Endpoints, "endpoints", []string{"127.0.0.1:2379"}, "gRPC endpoints")
	pf.IntVar(&o.cfg.Clients, "clients", 1, "concurrent requesters")
	pf.IntVar(&o.cfg.Conns, "conns", 1, "gRPC connections the clients share")
	pf.IntVar(&o.cfg.Total, "total", 10000, "requests to send (0, or unset with --duration: run for --duration)")
	pf.DurationVar(&o.cfg.Duration, "duration", 0, "run time (0: until --total)")
	pf.Float64Var(&o.cfg.Rate, "rate", 0, "requests per second over all clients (0: unlimited)")
	pf.StringVar(&o.cfg.Prefix, "prefix", "bench/", "prefix of every key")
	pf.IntVar(&o.cfg.KeySize, "key-size", 8, "key size in bytes, prefix included (longer if the key space needs more digits)")
	pf.IntVar(&o.cfg.KeySpace, "key-space-size", 100000, "number of distinct keys")
	pf.BoolVar(&o.cfg.Sequential, "sequential-keys", false, "use keys in order instead of at random")
	pf.IntVar(&o.cfg.ValueSize, "val-size", 256, "value size in bytes")
	pf.DurationVar(&o.cfg.DialTimeout, "dial-timeout", 5*time.Second, "dial timeout")
	pf.DurationVar(&o.cfg.RequestTimeout, "request-timeout", 5*time.Second, "timeout of each request")
	pf.StringVar(&o.jsonPath, "json", "", "also write the report as JSON to this file")
	pf.IntVar(&o.ranges, "ranges", 0, "rangekv only: first split the key space into this many ranges, and spread their leaderships over the nodes")
	pf.BoolVar(&o.cfg.RangeAware, "range-aware", false, "rangekv only: send KV requests through the range-aware client (straight to each range's leader)")
	pf.BoolVar(&o.noTTY, "no-progress", false, "do not print progress, even on a terminal")

	for _, w := range workloadCommands(func(cmd *cobra.Command, run workload) error {
		return o.run(cmd.Context(), out, errOut, run)
	}) {
		root.AddCommand(w)
	}
	root.AddCommand(newCompareCommand(o, out, errOut))
	return root
}

// workload runs one workload against a Config's endpoints.
type workload func(context.Context, bench.Config) (*bench.Report, error)

// workloadCommands returns one command per workload, each handing its
// workload to exec: run against --endpoints, or compare etcd and rangekv.
func workloadCommands(exec func(*cobra.Command, workload) error) []*cobra.Command {
	var cmds []*cobra.Command
	cmds = append(cmds, &cobra.Command{
		Use:   "put",
		Short: "Put values under --prefix",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exec(cmd, func(ctx context.Context, c bench.Config) (*bench.Report, error) {
				return bench.RunPut(ctx, c)
			})
		},
	})
	var consistency string
	var ro bench.RangeOptions
	rg := &cobra.Command{
		Use:   "range",
		Short: "Read keys under --prefix: one key per request, or the whole prefix in pages of --limit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch consistency {
			case "l":
				ro.Serializable = false
			case "s":
				ro.Serializable = true
			default:
				return fmt.Errorf(`--consistency must be "l" (linearizable) or "s" (serializable), got %q`, consistency)
			}
			if ro.Limit < 0 {
				return fmt.Errorf("--limit cannot be negative, got %d", ro.Limit)
			}
			return exec(cmd, func(ctx context.Context, c bench.Config) (*bench.Report, error) {
				return bench.RunRange(ctx, c, ro)
			})
		},
	}
	rg.Flags().StringVar(&consistency, "consistency", "l", "linearizable (l) or serializable (s) reads, as etcd's benchmark")
	rg.Flags().IntVar(&ro.Limit, "limit", 0, "list the whole prefix in pages of this many keys per request (0: read one key)")
	rg.Flags().BoolVar(&ro.NoPopulate, "no-populate", false, "do not write the key space before reading")
	cmds = append(cmds, rg)
	var to bench.TenantsOptions
	var mix []int
	tn := &cobra.Command{
		Use:   "tenants",
		Short: "A multi-tenant metadata profile shaped like kube-apiserver traffic",
		Long: `tenants gives each of --tenants tenants the prefix /tenants/<t>/ with --objects
objects, writes every object once, then runs a mix of creates and updates
(transactions comparing create_revision = 0 or the object's mod_revision),
deletes comparing the mod_revision, gets, and paged prefix lists, while one
prefix watch per tenant measures the delay from a write's acknowledgement to
its event's delivery ("watch").`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(mix) != 5 {
				return fmt.Errorf("--mix needs 5 percentages (create,update,delete,get,list), got %d", len(mix))
			}
			copy(to.Mix[:], mix)
			return exec(cmd, func(ctx context.Context, c bench.Config) (*bench.Report, error) {
				return bench.RunTenants(ctx, c, to)
			})
		},
	}
	tn.Flags().IntVar(&to.Tenants, "tenants", 64, "tenants, each under its own prefix")
	tn.Flags().IntVar(&to.Objects, "objects", 100, "objects per tenant")
	tn.Flags().IntVar(&to.PageSize, "page-size", 50, "keys per page of a list")
	tn.Flags().BoolVar(&to.NoWatch, "no-watch", false, "do not open the per-tenant prefix watches")
	tn.Flags().IntSliceVar(&mix, "mix", []int{10, 50, 10, 20, 10}, "percentages of create,update,delete,get,list (sum 100)")
	cmds = append(cmds, tn)
	var txnOps int
	var txnSpread bool
	tp := &cobra.Command{
		Use:   "txn-put",
		Short: "Transactions of one compare and --txn-ops puts under --prefix",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exec(cmd, func(ctx context.Context, c bench.Config) (*bench.Report, error) {
				return bench.RunTxnPut(ctx, c, txnOps, txnSpread)
			})
		},
	}
	tp.Flags().IntVar(&txnOps, "txn-ops", 1, "puts per transaction")
	tp.Flags().BoolVar(&txnSpread, "spread", false, "spread a txn's keys over the key space (one per --ranges range when --ranges equals --txn-ops) instead of adjacent keys")
	cmds = append(cmds, tp)
	var watchers int
	var grace time.Duration
	wl := &cobra.Command{
		Use:   "watch-latency",
		Short: "Put under --prefix while prefix watchers measure put-acknowledged-to-event-delivered latency",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exec(cmd, func(ctx context.Context, c bench.Config) (*bench.Report, error) {
				return bench.RunWatchLatency(ctx, c, watchers, grace)
			})
		},
	}
	wl.Flags().IntVar(&watchers, "watchers", 1, "prefix watchers, opened before the puts")
	wl.Flags().DurationVar(&grace, "grace", 5*time.Second, "how long to wait after the puts for events still in flight")
	cmds = append(cmds, wl)
	var count int
	var settle time.Duration
	iw := &cobra.Command{
		Use:   "watchers",
		Short: "Open --count idle watchers on the first endpoint and report what they cost its server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if count < 1 {
				return fmt.Errorf("--count must be at least 1, got %d", count)
			}
			return exec(cmd, func(ctx context.Context, c bench.Config) (*bench.Report, error) {
				return bench.RunIdleWatchers(ctx, c, count, settle)
			})
		},
	}
	iw.Flags().IntVar(&count, "count", 10000, "idle watchers to open")
	iw.Flags().DurationVar(&settle, "settle", 3*time.Second, "pause before each memory reading")
	cmds = append(cmds, iw)
	return cmds
}

// config validates the shared flags and returns the workload Config.
func (o *options) config(errOut io.Writer) (bench.Config, error) {
	c := o.cfg
	if c.Duration > 0 && !o.flags.Changed("total") {
		c.Total = 0
	}
	switch {
	case len(c.Endpoints) == 0:
		return c, fmt.Errorf("--endpoints is empty")
	case c.Clients < 1:
		return c, fmt.Errorf("--clients must be at least 1, got %d", c.Clients)
	case c.Conns < 1:
		return c, fmt.Errorf("--conns must be at least 1, got %d", c.Conns)
	case c.Total < 0 || c.Duration < 0 || c.Rate < 0:
		return c, fmt.Errorf("--total, --duration and --rate cannot be negative")
	case c.Total == 0 && c.Duration == 0:
		return c, fmt.Errorf("set --total or --duration")
	case c.KeySpace < 1:
		return c, fmt.Errorf("--key-space-size must be at least 1, got %d", c.KeySpace)
	case c.ValueSize < 0:
		return c, fmt.Errorf("--val-size cannot be negative")
	}
	if c.ValueSize == 0 {
		c.ValueSize = -1 // empty values (Defaults maps 0 to 256)
	}
	if f, ok := errOut.(*os.File); ok && !o.noTTY && term.IsTerminal(int(f.Fd())) {
		c.Progress = errOut
	}
	return c, nil
}

// run validates the flags, prepares ranges, runs the workload against
// --endpoints and prints its report.
func (o *options) run(ctx context.Context, out, errOut io.Writer, workload workload) error {
	c, err := o.config(errOut)
	if err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.ranges > 1 {
		if err := bench.SplitForRanges(ctx, c, o.ranges); err != nil {
			return err
		}
	}
	rep, err := workload(ctx, c)
	if err != nil {
		return err
	}
	if err := rep.WriteTable(out); err != nil {
		return err
	}
	return o.writeJSON(rep.WriteJSON)
}

// writeJSON writes a report with write to --json, when set.
func (o *options) writeJSON(write func(io.Writer) error) error {
	if o.jsonPath == "" {
		return nil
	}
	f, err := os.Create(o.jsonPath)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
