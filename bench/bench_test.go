package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/rangekv/rangekv/node"
)

// startNode starts a one-node rangekv in-process and returns its client
// endpoint.
func startNode(t *testing.T) string {
	t.Helper()
	addr := func() url.URL {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer l.Close()
		return url.URL{Scheme: "http", Host: l.Addr().String()}
	}
	client, peer := addr(), addr()
	cfg := node.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.ListenClientURLs, cfg.AdvertiseClientURLs = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerURLs, cfg.InitialAdvertisePeerURLs = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = []node.InitialMember{{Name: cfg.Name, PeerURLs: []url.URL{peer}}}
	cfg.HeartbeatInterval, cfg.ElectionTimeout = 20*time.Millisecond, 200*time.Millisecond
	require.NoError(t, cfg.Validate())
	n, err := node.Start(cfg, zap.NewNop())
	require.NoError(t, err)
	t.Cleanup(n.Stop)
	return client.Host
}

func TestConfigKeys(t *testing.T) {
	c := Config{Prefix: "p/", KeySize: 8, KeySpace: 1000}.Defaults()
	require.Equal(t, "p/000007", c.Key(7))
	require.Len(t, c.Key(999), 8)
	// A key space wider than KeySize leaves room for every index.
	c = Config{Prefix: "p/", KeySize: 3, KeySpace: 100000}.Defaults()
	require.Equal(t, "p/00042", c.Key(42))
	d := Config{}.Defaults()
	require.Equal(t, 1, d.Clients)
	require.Equal(t, 10000, d.Total)
	require.Equal(t, 256, d.ValueSize)
	require.Equal(t, 0, Config{ValueSize: -1}.Defaults().ValueSize)
}

func TestRecorderSummary(t *testing.T) {
	r := NewRecorder()
	for i := 1; i <= 100; i++ {
		r.Observe(time.Duration(i)*time.Millisecond, nil)
	}
	r.Observe(0, context.DeadlineExceeded)
	r.Observe(0, context.DeadlineExceeded)
	r.Observe(2*time.Hour, nil) // beyond the histogram: clamped
	require.Equal(t, int64(103), r.Count())
	s := r.Summarize("put", 2*time.Second)
	require.Equal(t, int64(103), s.Requests)
	require.Equal(t, int64(2), s.Errors)
	require.Equal(t, map[string]int64{"context deadline exceeded": 2}, s.ErrorsBy)
	require.Equal(t, int64(1), s.Clamped)
	require.InDelta(t, 50.5, s.Throughput, 0.001) // 101 successes over 2 s
	require.InDelta(t, 51, s.P50Ms, 0.1)          // 1..100 ms and the clamped 60 s
	require.InDelta(t, 100, s.P99Ms, 0.1)
	require.InDelta(t, 60000, s.MaxMs, 60)
}

func TestParseStatTicks(t *testing.T) {
	// The command name may hold spaces and parentheses.
	stat := "1234 (rangekv (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 12 0 100 1000 500"
	ticks, err := parseStatTicks(stat)
	require.NoError(t, err)
	require.Equal(t, int64(175), ticks)
	_, err = parseStatTicks("garbage")
	require.Error(t, err)
	require.True(t, servesPort([]string{"rangekv", "--listen-client-urls", "http://127.0.0.1:2379"}, map[string]bool{"2379": true}))
	require.True(t, servesPort([]string{"etcd", "--advertise-client-urls=http://127.0.0.1:1,http://127.0.0.1:2379"}, map[string]bool{"2379": true}))
	require.False(t, servesPort([]string{"rangekv", "--listen-peer-urls", "http://127.0.0.1:2379"}, map[string]bool{"2379": true}))
}

// TestWorkloadsCountEveryRequest runs each workload briefly against a real
// node and checks that every request is accounted for, successes and
// errors alike (no timing assertions).
func TestWorkloadsCountEveryRequest(t *testing.T) {
	ep := startNode(t)
	ctx := context.Background()
	base := Config{Endpoints: []string{ep}, Clients: 4, Conns: 2, Total: 200, KeySpace: 50, ValueSize: 16}

	rep, err := RunPut(ctx, base)
	require.NoError(t, err)
	require.Len(t, rep.Ops, 1)
	require.Equal(t, int64(200), rep.Ops[0].Requests)
	require.Zero(t, rep.Ops[0].Errors)

	aware := base
	aware.RangeAware = true
	rep, err = RunPut(ctx, aware)
	require.NoError(t, err)
	require.Equal(t, int64(200), rep.Ops[0].Requests)
	require.Zero(t, rep.Ops[0].Errors)

	// Values over the server's request limit: every put fails, each
	// counted under etcd's message.
	big := base
	big.Total, big.ValueSize = 20, 1600<<10 // above 1.5 MiB, below clientv3's 2 MiB
	rep, err = RunPut(ctx, big)
	require.NoError(t, err)
	require.Equal(t, int64(20), rep.Ops[0].Requests)
	require.Equal(t, int64(20), rep.Ops[0].Errors)
	require.Len(t, rep.Ops[0].ErrorsBy, 1)
	for msg := range rep.Ops[0].ErrorsBy {
		require.Contains(t, msg, "request is too large")
	}

	// A duration-bound run counts what it issued, and the requests in
	// flight at the end complete rather than fail.
	timed := base
	timed.Total, timed.Duration = 0, 300*time.Millisecond
	rep, err = RunPut(ctx, timed)
	require.NoError(t, err)
	require.NotZero(t, rep.Ops[0].Requests)
	require.Zero(t, rep.Ops[0].Errors)

	wl := base
	wl.Prefix = "watched/"
	rep, err = RunWatchLatency(ctx, wl, 2, 10*time.Second)
	require.NoError(t, err)
	require.Len(t, rep.Ops, 2)
	require.Equal(t, int64(200), rep.Ops[0].Requests)
	require.Zero(t, rep.Ops[0].Errors)
	require.Equal(t, int64(400), rep.Ops[1].Requests, "each of two watchers delivers every put once")
	require.Zero(t, rep.Ops[1].Errors)

	idle, err := RunIdleWatchers(ctx, Config{Endpoints: []string{ep}, Clients: 2, Conns: 2, Prefix: "idle/"}, 50, 10*time.Millisecond)
	require.NoError(t, err)
	require.Equal(t, int64(50), idle.Ops[0].Requests)
	require.Zero(t, idle.Ops[0].Errors)
	require.NotNil(t, idle.Memory)
	require.Equal(t, 50, idle.Memory.Watchers)

	var table, js bytes.Buffer
	require.NoError(t, rep.WriteTable(&table))
	require.True(t, strings.Contains(table.String(), "watch"), table.String())
	require.NoError(t, rep.WriteJSON(&js))
	var back Report
	require.NoError(t, json.Unmarshal(js.Bytes(), &back))
	require.Equal(t, rep.Ops, back.Ops)
}

// TestReadAndTenantWorkloadsCount runs range (one key, linearizable and
// serializable), paged lists and the tenants profile briefly against a
// real node and checks every request is accounted for.
func TestReadAndTenantWorkloadsCount(t *testing.T) {
	ep := startNode(t)
	ctx := context.Background()
	base := Config{Endpoints: []string{ep}, Clients: 4, Conns: 2, Total: 150, KeySpace: 40, ValueSize: 16, Prefix: "r/"}

	for _, ser := range []bool{false, true} {
		rep, err := RunRange(ctx, base, RangeOptions{Serializable: ser})
		require.NoError(t, err)
		require.Equal(t, "range", rep.Ops[0].Op)
		require.Equal(t, int64(150), rep.Ops[0].Requests)
		require.Zero(t, rep.Ops[0].Errors)
	}
	rep, err := RunRange(ctx, base, RangeOptions{Limit: 7, NoPopulate: true})
	require.NoError(t, err)
	require.Equal(t, "list", rep.Ops[0].Op)
	require.Equal(t, int64(150), rep.Ops[0].Requests)
	require.Zero(t, rep.Ops[0].Errors)
	cli, err := dial(base.Defaults())
	require.NoError(t, err)
	kvs, _, pages, err := ListPaged(ctx, cli[0], "r/", "r0", 7)
	closeAll(cli)
	require.NoError(t, err)
	require.Equal(t, 40, len(kvs), "the populated key space")
	require.Equal(t, 6, pages, "40 keys in pages of 7")

	_, err = RunRange(ctx, base, RangeOptions{Limit: -1})
	require.Error(t, err)

	tc := Config{Endpoints: []string{ep}, Clients: 4, Conns: 2, Total: 400, ValueSize: 16}
	rep, err = RunTenants(ctx, tc, TenantsOptions{Tenants: 4, Objects: 10, PageSize: 3})
	require.NoError(t, err)
	var requests, writes int64
	for _, o := range rep.Ops {
		require.Zero(t, o.Errors, "%s: %v", o.Op, o.ErrorsBy)
		if o.Op == "watch" {
			continue
		}
		requests += o.Requests
		if o.Op == "create" || o.Op == "update" || o.Op == "delete" {
			writes += o.Requests
		}
	}
	require.Equal(t, int64(400), requests, "every request counted once")
	require.Equal(t, "watch", rep.Ops[len(rep.Ops)-1].Op)
	require.Positive(t, rep.Ops[len(rep.Ops)-1].Requests, "the watches delivered events")
	require.LessOrEqual(t, rep.Ops[len(rep.Ops)-1].Requests, writes, "at most one delivery per write")

	_, err = RunTenants(ctx, tc, TenantsOptions{Mix: [5]int{50, 50, 50}})
	require.ErrorContains(t, err, "sums to 150")
}

func TestMixPickAndMedian(t *testing.T) {
	mix := [5]int{10, 50, 10, 20, 10}
	counts := [5]int{}
	for r := range 100 {
		counts[pick(mix, r)]++
	}
	require.Equal(t, mix, counts)
	require.Equal(t, 4, pick([5]int{0, 0, 0, 0, 100}, 0))
	require.Equal(t, 2.0, median([]float64{3, 1, 2}))
	require.Equal(t, 2.5, median([]float64{4, 1, 3, 2}))
	require.Zero(t, median(nil))
	require.InDelta(t, 2, nines(99), 1e-9)
	ticks := ninesTicks{}.Ticks(0, 3)
	require.Equal(t, []string{"0%", "90%", "99%", "99.9%"}, []string{ticks[0].Label, ticks[1].Label, ticks[2].Label, ticks[3].Label})
}

// TestCompareRows checks the comparison's maths: medians over rounds per
// system, and rangekv's ratio to etcd.
func TestCompareRows(t *testing.T) {
	run := func(system string, round int, thr, p99, cpu float64) CompareRun {
		return CompareRun{System: system, Round: round, Report: &Report{
			Ops:    []OpReport{{Op: "put", Requests: 10, Throughput: thr, P99Ms: p99}},
			Server: &ServerCPU{SecondsPerOp: cpu}}}
	}
	rows := compareRows([]CompareRun{
		run(SystemEtcd, 1, 1000, 10, 400e-6), run(SystemRangekv, 1, 1500, 8, 200e-6),
		run(SystemRangekv, 2, 1700, 9, 300e-6), run(SystemEtcd, 2, 1200, 12, 600e-6),
		run(SystemEtcd, 3, 1100, 11, 500e-6), run(SystemRangekv, 3, 1600, 20, 250e-6),
	})
	byMetric := map[string]CompareRow{}
	for _, r := range rows {
		byMetric[r.Op+" "+r.Metric] = r
	}
	thr := byMetric["put throughput /s"]
	require.Equal(t, 1100.0, thr.Etcd)
	require.Equal(t, 1600.0, thr.Rangekv)
	require.InDelta(t, 1600.0/1100, thr.Ratio, 1e-9)
	require.InDelta(t, 9.0/11, byMetric["put p99 ms"].Ratio, 1e-9)
	require.InDelta(t, 0.5, byMetric["all server CPU µs/op"].Ratio, 1e-9)
	var table bytes.Buffer
	require.NoError(t, (&CompareReport{Workload: "put", Nodes: 3, Runs: nil, Rows: rows}).WriteTable(&table))
	require.Contains(t, table.String(), "RANGEKV/ETCD")
	require.Contains(t, table.String(), "1.45")
}

// TestCompareRunsBothClusters runs a comparison end to end with the
// rangekv binary on both sides (building etcd is too slow for go test):
// two rounds of one-node clusters, every run counted, the plots written.
func TestCompareRunsBothClusters(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the rangekv binary")
	}
	bin := filepath.Join(t.TempDir(), "rangekv")
	build := exec.Command("go", "build", "-o", bin, "../cmd/rangekv")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	var log bytes.Buffer
	rep, err := Compare(context.Background(), CompareConfig{
		Workload: "put", Run: RunPut, Config: Config{Clients: 2, Total: 50, ValueSize: 16},
		Nodes: 1, Etcd: bin, Rangekv: bin, Dir: t.TempDir(), Rounds: 2, Log: &log,
	})
	require.NoError(t, err, log.String())
	require.Len(t, rep.Runs, 4)
	require.Equal(t, []string{SystemEtcd, SystemRangekv, SystemRangekv, SystemEtcd},
		[]string{rep.Runs[0].System, rep.Runs[1].System, rep.Runs[2].System, rep.Runs[3].System}, "alternating order")
	for _, r := range rep.Runs {
		require.Equal(t, int64(50), r.Report.Ops[0].Requests)
		require.Zero(t, r.Report.Ops[0].Errors)
	}
	require.NotEmpty(t, rep.Rows)
	dir := t.TempDir()
	files, err := WritePlots(rep, dir)
	require.NoError(t, err)
	require.Len(t, files, 2, "a latency distribution and a throughput chart")
	for _, f := range files {
		st, err := os.Stat(f)
		require.NoError(t, err)
		require.Positive(t, st.Size())
	}
}
