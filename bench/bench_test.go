package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/url"
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
