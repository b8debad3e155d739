package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/rangekv/rangekv/bench"
)

// etcdVersion is the etcd release compare runs against, pinned in
// tools/etcd/go.mod.
const etcdVersion = "v3.7.3"

// compareOptions are the flags of rangekv-bench compare.
type compareOptions struct {
	nodes                   int
	rounds                  int
	etcdBin, rangekvBin     string
	etcdFlags, rangekvFlags []string
	dataDir                 string
	keepData                bool
	plotDir                 string
}

func newCompareCommand(o *options, out, errOut io.Writer) *cobra.Command {
	co := &compareOptions{}
	cmp := &cobra.Command{
		Use:   "compare",
		Short: "Run a workload against etcd " + etcdVersion + " and rangekv clusters of the same size, side by side",
		Long: `compare starts an etcd cluster and a rangekv cluster of --nodes members on
loopback, one after the other, runs the same workload against each on a fresh
cluster, and prints both results with rangekv's ratio to etcd. With --rounds N
it alternates which system goes first and reports medians.

etcd comes from --etcd-bin, else bin/etcd of this repository, else it is built
from tools/etcd (etcd ` + etcdVersion + ` pinned in its own module), else installed
with go install. rangekv comes from --rangekv-bin, else bin/rangekv, else it is
built from this repository, else taken from PATH.`,
		Example: `  rangekv-bench compare put --clients 100 --conns 10 --duration 20s --plot bench/plots
  rangekv-bench compare range --consistency s --clients 100 --key-space-size 1000 --total 100000
  rangekv-bench compare tenants --tenants 64 --clients 64 --duration 30s --rounds 2`,
	}
	f := cmp.PersistentFlags()
	f.IntVar(&co.nodes, "nodes", 3, "members of each cluster")
	f.IntVar(&co.rounds, "rounds", 1, "runs of each system, alternating which goes first")
	f.StringVar(&co.etcdBin, "etcd-bin", "", "etcd binary (default: bin/etcd, built if missing)")
	f.StringVar(&co.rangekvBin, "rangekv-bin", "", "rangekv binary (default: bin/rangekv, built if missing)")
	f.StringArrayVar(&co.etcdFlags, "etcd-flag", nil, "extra flag for every etcd member (repeatable), e.g. --etcd-flag=--snapshot-count=10000")
	f.StringArrayVar(&co.rangekvFlags, "rangekv-flag", nil, "extra flag for every rangekv member (repeatable)")
	f.StringVar(&co.dataDir, "data-dir", "", "where the clusters' data and logs go (default: a new temporary directory)")
	f.BoolVar(&co.keepData, "keep-data", false, "keep each cluster's data directory and logs")
	f.StringVar(&co.plotDir, "plot", "", "write latency-distribution and throughput charts (PNG) to this directory")
	var names []string
	for _, w := range workloadCommands(func(cmd *cobra.Command, run workload) error {
		return co.run(cmd, o, run, out, errOut)
	}) {
		cmp.AddCommand(w)
		names = append(names, w.Name())
	}
	cmp.Args = cobra.ArbitraryArgs
	cmp.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return fmt.Errorf("compare needs a workload: %s", strings.Join(names, ", "))
		}
		return fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return cmp
}

// run resolves the binaries, runs the comparison and prints it.
func (co *compareOptions) run(cmd *cobra.Command, o *options, run workload, out, errOut io.Writer) error {
	c, err := o.config(errOut)
	if err != nil {
		return err
	}
	switch {
	case co.nodes < 1:
		return fmt.Errorf("--nodes must be at least 1, got %d", co.nodes)
	case co.rounds < 1:
		return fmt.Errorf("--rounds must be at least 1, got %d", co.rounds)
	case o.flags.Changed("endpoints"):
		return fmt.Errorf("--endpoints does not apply to compare: it starts its own clusters")
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := moduleRoot()
	etcd, err := findEtcd(ctx, co.etcdBin, root, errOut)
	if err != nil {
		return err
	}
	rangekv, err := findRangekv(ctx, co.rangekvBin, root, errOut)
	if err != nil {
		return err
	}
	dir := co.dataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "rangekv-bench-compare-"); err != nil {
			return err
		}
		if !co.keepData {
			defer os.RemoveAll(dir)
		}
	}
	rep, err := bench.Compare(ctx, bench.CompareConfig{
		Workload: cmd.Name(), Run: run, Config: c, Nodes: co.nodes, Etcd: etcd, Rangekv: rangekv,
		EtcdFlags: co.etcdFlags, RangekvFlags: co.rangekvFlags, Dir: dir, KeepData: co.keepData,
		Rounds: co.rounds, Ranges: o.ranges, Log: errOut,
	})
	if err != nil {
		return err
	}
	if err := rep.WriteTable(out); err != nil {
		return err
	}
	if co.plotDir != "" {
		if err := os.MkdirAll(co.plotDir, 0o755); err != nil {
			return err
		}
		files, err := bench.WritePlots(rep, co.plotDir)
		if err != nil {
			return fmt.Errorf("plotting: %w", err)
		}
		for _, f := range files {
			fmt.Fprintln(out, "wrote", f)
		}
	}
	return o.writeJSON(rep.WriteJSON)
}

// moduleRoot returns the root of the rangekv repository the command runs
// in (the directory of a go.mod declaring github.com/rangekv/rangekv,
// found upward from the working directory), or "".
func moduleRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			bytes.HasPrefix(data, []byte("module github.com/rangekv/rangekv\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// findEtcd returns the etcd binary to compare against: flag, else
// <root>/bin/etcd, else built there from tools/etcd, else go install'ed
// into the user's cache. It warns when the binary is not etcdVersion.
func findEtcd(ctx context.Context, flag, root string, log io.Writer) (string, error) {
	bin := flag
	switch {
	case bin != "":
	case root != "" && isFile(filepath.Join(root, "bin", "etcd")):
		bin = filepath.Join(root, "bin", "etcd")
	case root != "":
		bin = filepath.Join(root, "bin", "etcd")
		fmt.Fprintf(log, "building etcd %s from tools/etcd into %s\n", etcdVersion, bin)
		if err := goCommand(ctx, filepath.Join(root, "tools", "etcd"), nil, "build", "-o", bin, "go.etcd.io/etcd/server/v3"); err != nil {
			return "", fmt.Errorf("building etcd: %w", err)
		}
	default:
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		gobin := filepath.Join(cache, "rangekv-bench", "etcd-"+etcdVersion)
		bin = filepath.Join(gobin, "v3") // go install names it after the module's last element
		if !isFile(bin) {
			fmt.Fprintf(log, "installing etcd %s into %s\n", etcdVersion, gobin)
			if err := goCommand(ctx, "", []string{"GOBIN=" + gobin}, "install", "go.etcd.io/etcd/server/v3@"+etcdVersion); err != nil {
				return "", fmt.Errorf("installing etcd: %w", err)
			}
		}
	}
	v, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("etcd binary %s: %w", bin, err)
	}
	if !strings.Contains(string(v), "etcd Version: "+strings.TrimPrefix(etcdVersion, "v")+"\n") {
		fmt.Fprintf(log, "warning: %s is not etcd %s:\n%s", bin, etcdVersion, v)
	}
	return bin, nil
}

// findRangekv returns the rangekv binary: flag, else <root>/bin/rangekv
// (built from the repository if missing), else rangekv beside this
// command, else on PATH.
func findRangekv(ctx context.Context, flag, root string, log io.Writer) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if root != "" {
		bin := filepath.Join(root, "bin", "rangekv")
		if !isFile(bin) {
			fmt.Fprintf(log, "building rangekv into %s\n", bin)
			if err := goCommand(ctx, root, nil, "build", "-o", bin, "./cmd/rangekv"); err != nil {
				return "", fmt.Errorf("building rangekv: %w", err)
			}
		}
		return bin, nil
	}
	if self, err := os.Executable(); err == nil && isFile(filepath.Join(filepath.Dir(self), "rangekv")) {
		return filepath.Join(filepath.Dir(self), "rangekv"), nil
	}
	if bin, err := exec.LookPath("rangekv"); err == nil {
		return bin, nil
	}
	return "", errors.New("no rangekv binary: pass --rangekv-bin, or run inside the rangekv repository")
}

func goCommand(ctx context.Context, dir string, env []string, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func isFile(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}
