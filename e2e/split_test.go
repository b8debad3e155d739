package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/rangekv/rangekv/txnproto"
)

// splitTimeout bounds waits on cluster state after splits and restarts:
// replicas applying a split, statistics catching up, leaders elected.
const splitTimeout = 30 * time.Second

// manualSplitsOnly are node flags turning off automatic splits (by size
// and by load) and leader balancing, so that the tests know every range
// boundary and where leaders stay.
var manualSplitsOnly = []string{"--range-max-bytes", "0", "--range-split-qps", "0", "--leader-balance=false"}

// JSON shapes of `rangekvctl -w json` output.

type rangeReplica struct {
	NodeID    string `json:"node_id"`
	ReplicaID uint64 `json:"replica_id"`
	Type      string `json:"type"`
}

type rangeRow struct {
	RangeID      uint64         `json:"range_id"`
	StartKey     string         `json:"start_key"`
	EndKey       string         `json:"end_key"`
	Replicas     []rangeReplica `json:"replicas"`
	LeaderNodeID string         `json:"leader_node_id"`
	Bytes        int64          `json:"bytes"`
	Keys         int64          `json:"keys"`
	QPS          float64        `json:"qps"`
}

// leaderIndex returns the index, in ids, of the node leading the row
// that holds key (-1 when none does).
func leaderIndex(rows []rangeRow, ids []string, key string) int {
	for _, r := range rows {
		if r.holds(key) {
			return slices.Index(ids, r.LeaderNodeID)
		}
	}
	return -1
}

// holds reports whether key lies in the row's span [start, end).
func (r rangeRow) holds(key string) bool {
	return key >= r.StartKey && (r.EndKey == "" || key < r.EndKey)
}

type nodeRow struct {
	NodeID     string   `json:"node_id"`
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peer_urls"`
	ClientURLs []string `json:"client_urls"`
	Replicas   uint64   `json:"replicas"`
	Leaders    uint64   `json:"leaders"`
}

// rangesOn runs `rangekvctl range list -w json` against node i. It returns
// the rows, or nil and a description of the failure (for polling).
func (c *cluster) rangesOn(i int) ([]rangeRow, string) {
	c.t.Helper()
	res := c.rctlOn(i, "range", "list", "-w", "json")
	if res.code != 0 {
		return nil, res.String()
	}
	var rows []rangeRow
	if err := json.Unmarshal([]byte(res.stdout), &rows); err != nil {
		return nil, fmt.Sprintf("decoding: %v; %s", err, res)
	}
	return rows, res.stdout
}

// mustRangesOn is rangesOn failing the test on an error.
func (c *cluster) mustRangesOn(i int) []rangeRow {
	c.t.Helper()
	rows, state := c.rangesOn(i)
	require.NotNil(c.t, rows, state)
	return rows
}

// layout renders ranges without the statistics and leaders that differ
// from node to node: one "id [start, end) replicas" line per range.
func layout(rows []rangeRow) string {
	var b strings.Builder
	for _, r := range rows {
		var reps []string
		for _, rep := range r.Replicas {
			reps = append(reps, fmt.Sprintf("%s/%d/%s", rep.NodeID, rep.ReplicaID, rep.Type))
		}
		fmt.Fprintf(&b, "%d [%q, %q) %s\n", r.RangeID, r.StartKey, r.EndKey, strings.Join(reps, ","))
	}
	return b.String()
}

// boundaries returns the keys where ranges meet (every start key but the
// first).
func boundaries(rows []rangeRow) []string {
	var out []string
	for _, r := range rows[min(1, len(rows)):] {
		out = append(out, r.StartKey)
	}
	return out
}

// tilingProblem describes how rows fail to tile the keyspace with
// replicas as voters on exactly the nodes nodeIDs, or returns "".
func tilingProblem(rows []rangeRow, nodeIDs []string) string {
	if len(rows) == 0 {
		return "no ranges"
	}
	if rows[0].StartKey != "" {
		return fmt.Sprintf("first range starts at %q, not at the beginning", rows[0].StartKey)
	}
	if last := rows[len(rows)-1]; last.EndKey != "" {
		return fmt.Sprintf("last range ends at %q, not at the end", last.EndKey)
	}
	ids := map[uint64]bool{}
	want := slices.Sorted(slices.Values(nodeIDs))
	for i, r := range rows {
		if ids[r.RangeID] {
			return fmt.Sprintf("range %d listed twice", r.RangeID)
		}
		ids[r.RangeID] = true
		if i+1 < len(rows) && r.EndKey != rows[i+1].StartKey {
			return fmt.Sprintf("range %d ends at %q but the next starts at %q", r.RangeID, r.EndKey, rows[i+1].StartKey)
		}
		if r.EndKey != "" && r.StartKey >= r.EndKey {
			return fmt.Sprintf("range %d is empty or inverted: [%q, %q)", r.RangeID, r.StartKey, r.EndKey)
		}
		var got []string
		replicaIDs := map[uint64]bool{}
		for _, rep := range r.Replicas {
			if rep.Type != "voter" {
				return fmt.Sprintf("range %d has a %s replica on %s", r.RangeID, rep.Type, rep.NodeID)
			}
			if rep.ReplicaID == 0 || replicaIDs[rep.ReplicaID] {
				return fmt.Sprintf("range %d: bad or repeated replica ID %d", r.RangeID, rep.ReplicaID)
			}
			replicaIDs[rep.ReplicaID] = true
			got = append(got, rep.NodeID)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			return fmt.Sprintf("range %d has replicas on %v, want one on each of %v", r.RangeID, got, want)
		}
	}
	return ""
}

// nodeIDs returns every node's ID (hex, as rangekvctl prints it) in
// c.nodes order, from `rangekvctl node list`, once every member has
// published its name.
func (c *cluster) nodeIDs() []string {
	c.t.Helper()
	ids := make([]string, len(c.nodes))
	waitFor(c.t, splitTimeout, "every node listed by name", func() (bool, string) {
		res := c.rctlOn(0, "node", "list", "-w", "json")
		var rows []nodeRow
		if res.code != 0 || json.Unmarshal([]byte(res.stdout), &rows) != nil {
			return false, res.String()
		}
		clear(ids)
		for _, r := range rows {
			i := slices.IndexFunc(c.nodes, func(nd *node) bool { return nd.name == r.Name })
			if i < 0 {
				return false, res.stdout
			}
			ids[i] = r.NodeID
		}
		return !slices.Contains(ids, ""), res.stdout
	})
	return ids
}

// awaitLayout polls `range list` on every running node in idx (every node
// when empty) until all of them tile the keyspace at exactly the
// boundaries want, with the same range IDs and replicas, each range having
// a leader among nodeIDs; it returns the agreed rows.
func (c *cluster) awaitLayout(nodeIDs []string, want []string, idx ...int) []rangeRow {
	c.t.Helper()
	return c.awaitLayoutOneOf(nodeIDs, [][]string{want}, idx...)
}

// awaitLayoutOneOf is awaitLayout accepting any of several boundary lists
// (all nodes must agree on one).
func (c *cluster) awaitLayoutOneOf(nodeIDs []string, wants [][]string, idx ...int) []rangeRow {
	c.t.Helper()
	if len(idx) == 0 {
		for i := range c.nodes {
			idx = append(idx, i)
		}
	}
	var agreed []rangeRow
	waitFor(c.t, splitTimeout, fmt.Sprintf("every node to list ranges split at one of %q", wants), func() (bool, string) {
		var first []rangeRow
		for _, i := range idx {
			rows, state := c.rangesOn(i)
			if rows == nil {
				return false, state
			}
			if p := tilingProblem(rows, nodeIDs); p != "" {
				return false, fmt.Sprintf("node %d: %s: %s", i, p, state)
			}
			b := boundaries(rows)
			if !slices.ContainsFunc(wants, func(w []string) bool { return slices.Equal(b, w) }) {
				return false, fmt.Sprintf("node %d: boundaries %q: %s", i, b, state)
			}
			for _, r := range rows {
				if !slices.Contains(nodeIDs, r.LeaderNodeID) {
					return false, fmt.Sprintf("node %d: range %d has no known leader: %s", i, r.RangeID, state)
				}
			}
			if first == nil {
				first = rows
			} else if layout(rows) != layout(first) {
				return false, fmt.Sprintf("node %d lists\n%s\nnode %d lists\n%s", idx[0], layout(first), i, layout(rows))
			}
		}
		agreed = first
		return true, ""
	})
	return agreed
}

// kvPair is one key and value of a model.
type kvPair struct{ key, value string }

// sortedKVs returns the model's pairs in key order.
func sortedKVs(model map[string]string) []kvPair {
	out := make([]kvPair, 0, len(model))
	for _, k := range slices.Sorted(maps.Keys(model)) {
		out = append(out, kvPair{k, model[k]})
	}
	return out
}

// orderProblem describes a repeated or out-of-order key in got, or
// returns "".
func orderProblem(got []jsonKV) string {
	seen := map[string]int{}
	for i, kv := range got {
		if j, dup := seen[string(kv.Key)]; dup {
			return fmt.Sprintf("key %q returned twice (at %d and %d)", kv.Key, j, i)
		}
		seen[string(kv.Key)] = i
		if i > 0 && bytes.Compare(got[i-1].Key, kv.Key) >= 0 {
			return fmt.Sprintf("keys out of order at %d: %q then %q", i, got[i-1].Key, kv.Key)
		}
	}
	return ""
}

// kvsProblem describes how got differs from want (order, duplicates,
// values), or returns "".
func kvsProblem(got []jsonKV, want []kvPair) string {
	if p := orderProblem(got); p != "" {
		return p
	}
	for i := 0; i < max(len(got), len(want)); i++ {
		switch {
		case i >= len(got):
			return fmt.Sprintf("%d kvs returned, want %d: first missing %q", len(got), len(want), want[i].key)
		case i >= len(want):
			return fmt.Sprintf("%d kvs returned, want %d: first extra %q", len(got), len(want), got[i].Key)
		case string(got[i].Key) != want[i].key || string(got[i].Value) != want[i].value:
			return fmt.Sprintf("kv %d is %q=%q, want %q=%q", i, got[i].Key, got[i].Value, want[i].key, want[i].value)
		}
	}
	return ""
}

// scanProblem runs `etcdctl get <args> -w json` through node i and
// describes how the result differs from want (every kv, count, more
// false), or returns "".
func (c *cluster) scanProblem(i int, want []kvPair, args ...string) string {
	c.t.Helper()
	res := c.ctlOn(i, append(append([]string{"get"}, args...), "-w", "json")...)
	if res.code != 0 {
		return res.String()
	}
	var g jsonGet
	if err := jsonUnmarshal(res.stdout, &g); err != nil {
		return fmt.Sprintf("decoding: %v", err)
	}
	if p := kvsProblem(g.Kvs, want); p != "" {
		return fmt.Sprintf("node %d, get %s: %s", i, strings.Join(args, " "), p)
	}
	if g.Count != int64(len(want)) || g.More {
		return fmt.Sprintf("node %d, get %s: count %d more %v, want count %d more false", i, strings.Join(args, " "), g.Count, g.More, len(want))
	}
	return ""
}

// requireScans checks `get --prefix <prefix>` through every node: a
// linearizable scan must match want at once; a serializable one is polled
// until the node has applied far enough.
func (c *cluster) requireScans(prefix string, want []kvPair) {
	c.t.Helper()
	for i := range c.nodes {
		p := c.scanProblem(i, want, "--prefix", prefix)
		require.Empty(c.t, p, "linearizable scan through node %d", i)
		waitFor(c.t, splitTimeout, fmt.Sprintf("serializable scan through node %d", i), func() (bool, string) {
			p := c.scanProblem(i, want, "--prefix", prefix, "--consistency=s")
			return p == "", p
		})
	}
}

// awaitKeyStats polls node i's `range list` until every range's keys
// count equals the number of model keys in its span (statistics are kept
// per node, on apply).
func (c *cluster) awaitKeyStats(i int, model map[string]string) {
	c.t.Helper()
	waitFor(c.t, splitTimeout, fmt.Sprintf("node %d's range statistics to count the live keys", i), func() (bool, string) {
		rows, state := c.rangesOn(i)
		if rows == nil {
			return false, state
		}
		var sum int64
		for _, r := range rows {
			want := int64(0)
			for k := range model {
				if r.holds(k) {
					want++
				}
			}
			if r.Keys != want {
				return false, fmt.Sprintf("range %d [%q, %q) counts %d keys, want %d: %s", r.RangeID, r.StartKey, r.EndKey, r.Keys, want, state)
			}
			sum += r.Keys
		}
		return sum == int64(len(model)), state
	})
}

// splitAt runs `rangekvctl range split key -w json` through node i,
// requires success and returns the left and right ranges it printed.
func (c *cluster) splitAt(i int, key string) (left, right rangeRow) {
	c.t.Helper()
	out := c.mustRctlOn(i, "range", "split", key, "-w", "json")
	var rows []rangeRow
	require.NoError(c.t, json.Unmarshal([]byte(out), &rows), out)
	require.Len(c.t, rows, 2, out)
	return rows[0], rows[1]
}

// rowsHolding returns the rows whose spans intersect [start, end).
func rowsHolding(rows []rangeRow, start, end string) []rangeRow {
	var out []rangeRow
	for _, r := range rows {
		if (r.EndKey == "" || start < r.EndKey) && r.StartKey < end {
			out = append(out, r)
		}
	}
	return out
}

// TestManualSplits splits a loaded three-node cluster by hand with
// rangekvctl and checks the range map it reports, its errors, reads
// spanning ranges (scans, limit, count, sorting) through every node, the
// refusal of multi-range writes, single-range writes, compaction and a
// restart of every node.
func TestManualSplits(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3, manualSplitsOnly...)
	ids := c.nodeIDs()

	// 200 keys k000..k199; the values are a permutation of v000..v199 in
	// another order than the keys, so sorting by value differs from key
	// order.
	model := map[string]string{}
	for i := range 200 {
		model[fmt.Sprintf("k%03d", i)] = fmt.Sprintf("v%03d", i*37%200)
	}
	cli := newClient(t, strings.Split(c.endpoints(), ",")...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(model))
	keys := slices.Sorted(maps.Keys(model))
	for w := range 4 {
		wg.Go(func() {
			for j := w; j < len(keys); j += 4 {
				if _, err := cli.Put(ctx, keys[j], model[keys[j]]); err != nil {
					errs <- fmt.Errorf("put %s: %w", keys[j], err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	before := c.awaitLayout(ids, nil)
	require.Len(t, before, 1)

	// Each split goes through another node, so most are forwarded to the
	// range's leader.
	splitKeys := []string{"k050", "k100", "k150"}
	prev := before[0]
	for i, key := range splitKeys {
		left, right := c.splitAt(i, key)
		out := fmt.Sprintf("%+v\n%+v", left, right)
		require.Equal(t, prev.RangeID, left.RangeID, "the left side keeps the range ID: %s", out)
		require.Equal(t, prev.StartKey, left.StartKey, out)
		require.Equal(t, key, left.EndKey, out)
		require.Equal(t, key, right.StartKey, out)
		require.Equal(t, "", right.EndKey, out)
		require.NotEqual(t, left.RangeID, right.RangeID, out)
		require.Equal(t, left.Replicas, right.Replicas, "the right side has the left side's replicas: %s", out)
		prev = right
	}
	rows := c.awaitLayout(ids, splitKeys)
	require.Len(t, rows, 4)
	want := sortedKVs(model)

	t.Run("RangeList", func(t *testing.T) {
		c := c.on(t)
		for i := range c.nodes {
			c.awaitKeyStats(i, model)
		}
		// The table lists the same ranges.
		table := c.mustRctlOn(1, "range", "list")
		lines := strings.Split(strings.TrimRight(table, "\n"), "\n")
		require.Len(t, lines, 5, table)
		require.Regexp(t, `^RANGE ID +START KEY +END KEY +REPLICAS +LEADER +BYTES +KEYS +QPS$`, lines[0])
		for j, r := range rows {
			end := strconv.Quote(r.EndKey)
			if r.EndKey == "" {
				end = "<end>"
			}
			require.Regexp(t, fmt.Sprintf(`^%d +%s +%s +\S+ +[0-9a-f]+ +\d+ +\d+ +\d+\.\d$`, r.RangeID,
				regexp.QuoteMeta(strconv.Quote(r.StartKey)), regexp.QuoteMeta(end)), lines[j+1])
		}
	})

	t.Run("RangeShow", func(t *testing.T) {
		c := c.on(t)
		for _, key := range []string{"a", "k000", "k049", "k050", "k099", "k100", "k1", "k149", "k150", "k199", "zzz"} {
			var want rangeRow
			for _, r := range rows {
				if r.holds(key) {
					want = r
				}
			}
			i := len(key) % 3
			out := c.mustRctlOn(i, "range", "show", key, "-w", "json")
			var got []rangeRow
			require.NoError(t, json.Unmarshal([]byte(out), &got), out)
			require.Len(t, got, 1, out)
			require.Equal(t, layout([]rangeRow{want}), layout(got), "range show %s through node %d", key, i)
		}
	})

	t.Run("SplitErrors", func(t *testing.T) {
		c := c.on(t)
		// An empty key is refused by rangekvctl itself: even with no
		// server to ask.
		for _, eps := range []string{c.endpoints(), fmt.Sprintf("127.0.0.1:%d", freePorts(t, 1)[0])} {
			res := rangekvctl(t, eps, "range", "split", "")
			require.NotZero(t, res.code, "%s", res)
			require.Equal(t, "Error: split key is not provided", res.errLine(), "%s", res)
			require.Empty(t, res.stdout, "%s", res)
		}
		// Splitting where a range already starts, through every node.
		for i := range c.nodes {
			res := c.rctlOn(i, "range", "split", "k100")
			require.NotZero(t, res.code, "%s", res)
			require.Equal(t, fmt.Sprintf(`Error: rangekv: "k100" is already the start of range %d`, rows[2].RangeID),
				res.errLine(), "%s", res)
			require.Empty(t, res.stdout, "%s", res)
		}
		// Nothing changed.
		c.awaitLayout(ids, splitKeys)
		require.Equal(t, layout(rows), layout(c.mustRangesOn(0)))
	})

	t.Run("ScanThroughEveryNode", func(t *testing.T) {
		c.on(t).requireScans("k", want)
	})

	t.Run("LimitAndCount", func(t *testing.T) {
		c := c.on(t)
		for _, tc := range []struct {
			start, end string
			limit      int
		}{
			{"k", "k2", 7},       // every range, limit inside the first
			{"k045", "k055", 7},  // the limit crosses k050
			{"k045", "k055", 0},  // two ranges, no limit
			{"k095", "k160", 60}, // three ranges, limit in the third
			{"k148", "k152", 10}, // limit above the count
			{"a", "zz", 1},
		} {
			var in []kvPair
			for _, kv := range want {
				if kv.key >= tc.start && kv.key < tc.end {
					in = append(in, kv)
				}
			}
			wantKVs, wantMore := in, false
			if tc.limit > 0 && len(in) > tc.limit {
				wantKVs, wantMore = in[:tc.limit], true
			}
			for i := range c.nodes {
				var g jsonGet
				mustCtlJSON(t, c.endpoints(i), &g, "get", tc.start, tc.end, "--limit", strconv.Itoa(tc.limit))
				require.Empty(t, kvsProblem(g.Kvs, wantKVs), "get %s %s --limit %d through node %d", tc.start, tc.end, tc.limit, i)
				require.Equal(t, int64(len(in)), g.Count, "count of get %s %s --limit %d through node %d", tc.start, tc.end, tc.limit, i)
				require.Equal(t, wantMore, g.More, "more of get %s %s --limit %d through node %d", tc.start, tc.end, tc.limit, i)
			}
		}
	})

	t.Run("SortAcrossRanges", func(t *testing.T) {
		c := c.on(t)
		byValueDesc := slices.Clone(want)
		sort.SliceStable(byValueDesc, func(i, j int) bool { return byValueDesc[i].value > byValueDesc[j].value })
		byKeyDesc := slices.Clone(want)
		slices.Reverse(byKeyDesc)
		for _, tc := range []struct {
			args []string
			want []kvPair
		}{
			{[]string{"--sort-by=VALUE", "--order=DESCEND"}, byValueDesc},
			{[]string{"--sort-by=VALUE", "--order=DESCEND", "--limit", "5"}, byValueDesc[:5]},
			{[]string{"--sort-by=KEY", "--order=DESCEND", "--limit", "60"}, byKeyDesc[:60]},
		} {
			var g jsonGet
			args := append([]string{"get", "--prefix", "k"}, tc.args...)
			mustCtlJSON(t, c.endpoints(2), &g, args...)
			require.Equal(t, len(tc.want), len(g.Kvs), "%v", args)
			for j, kv := range g.Kvs {
				require.Equal(t, tc.want[j], kvPair{string(kv.Key), string(kv.Value)}, "kv %d of %v", j, args)
			}
			require.Equal(t, int64(len(want)), g.Count, "%v", args)
			require.Equal(t, len(tc.want) < len(want), g.More, "%v", args)
		}
	})

	t.Run("MultiRangeWrites", func(t *testing.T) {
		c := c.on(t)
		// A txn writing on both sides of k150: one revision for both.
		res := etcdctl(t, c.endpoints(), "\nput k010 changed\nput k160 changed\n\n\n", "txn")
		require.Zero(t, res.code, "%s", res)
		var g1, g2 jsonGet
		mustCtlJSON(t, c.endpoints(1), &g1, "get", "k010")
		mustCtlJSON(t, c.endpoints(2), &g2, "get", "k160")
		require.Equal(t, "changed", string(g1.Kvs[0].Value))
		require.Equal(t, "changed", string(g2.Kvs[0].Value))
		require.Equal(t, g1.Kvs[0].ModRevision, g2.Kvs[0].ModRevision)

		// A delete over two ranges removes every key at one revision.
		held := rowsHolding(rows, "k045", "k055")
		require.Greater(t, len(held), 1, "k045..k055 spans ranges")
		res = c.ctl("del", "--range", "k045", "k055")
		require.Zero(t, res.code, "%s", res)
		require.Equal(t, "10", strings.TrimSpace(res.stdout))
		var g jsonGet
		mustCtlJSON(t, c.endpoints(0), &g, "get", "k045", "k055")
		require.Zero(t, g.Count)

		// Put everything back for the subtests that follow.
		etcdctl(t, c.endpoints(), fmt.Sprintf("\nput k010 %s\nput k160 %s\n\n\n", model["k010"], model["k160"]), "txn")
		for i := 45; i < 55; i++ {
			k := fmt.Sprintf("k%03d", i)
			c.mustCtl("put", k, model[k])
		}
		c.requireScans("k", want)
	})

	t.Run("MultiRangeReadOnlyTxn", func(t *testing.T) {
		c := c.on(t)
		// Compares and gets on both sides of k150, through every node:
		// served at one revision (etcdctl's txn is linearizable).
		for i := range c.nodes {
			txn := fmt.Sprintf("value(\"k010\") = %q\nvalue(\"k160\") = %q\n\nget k010\nget k160\n\nget k020\n\n", model["k010"], model["k160"])
			res := etcdctl(t, c.endpoints(i), txn, "txn")
			require.Zero(t, res.code, "%s", res)
			require.Equal(t, "SUCCESS\n\nk010\n"+model["k010"]+"\n\nk160\n"+model["k160"]+"\n", res.stdout, "node %d", i)

			txn = fmt.Sprintf("value(\"k010\") = %q\nvalue(\"k160\") = \"nope\"\n\nget k010\n\nget k020\nget k170\n\n", model["k010"])
			res = etcdctl(t, c.endpoints(i), txn, "txn")
			require.Zero(t, res.code, "%s", res)
			require.Equal(t, "FAILURE\n\nk020\n"+model["k020"]+"\n\nk170\n"+model["k170"]+"\n", res.stdout, "node %d", i)
		}
		// Serializable (every read serializable), through clientv3.
		cli := newClient(t, strings.Split(c.endpoints(1), ",")...)
		ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
		defer cancel()
		resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("k160"), "=", model["k160"])).
			Then(clientv3.OpGet("k010", clientv3.WithSerializable()), clientv3.OpGet("k", clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithSerializable())).
			Commit()
		require.NoError(t, err)
		require.True(t, resp.Succeeded)
		require.Equal(t, model["k010"], string(resp.Responses[0].GetResponseRange().Kvs[0].Value))
		require.Equal(t, int64(len(want)), resp.Responses[1].GetResponseRange().Count)
	})

	t.Run("SingleRangeWrites", func(t *testing.T) {
		c := c.on(t)
		txn := fmt.Sprintf("value(\"k120\") = %q\n\nput k121 txnval\nget k120\n\nput k122 failed\n\n", model["k120"])
		res := etcdctl(t, c.endpoints(), txn, "txn")
		require.Zero(t, res.code, "%s", res)
		require.Equal(t, "SUCCESS\n\nOK\n\nk120\n"+model["k120"]+"\n", res.stdout)
		model["k121"] = "txnval"

		require.Equal(t, "10\n", c.mustCtl("del", "--range", "k060", "k070"))
		require.Equal(t, "1\n", c.mustCtl("del", "k199"))
		require.Equal(t, "1\n", c.mustCtl("del", "k050")) // the first key of a range
		for i := 60; i < 70; i++ {
			delete(model, fmt.Sprintf("k%03d", i))
		}
		delete(model, "k199")
		delete(model, "k050")
		want = sortedKVs(model)
		c.requireScans("k", want)
		for i := range c.nodes {
			c.awaitKeyStats(i, model)
		}
	})

	t.Run("RevisionsAcrossRanges", func(t *testing.T) {
		// DESIGN.md: header revisions never go backward for a client, and
		// etcd serves a read at any revision it has reported. After a
		// write to one range, a linearizable read of another, idle range
		// must report at least the write's revision and must be able to
		// read at it.
		c := c.on(t)
		put := c.revisionOf("put", "k160", model["k160"])
		for _, key := range []string{"k020", "k080", "k120"} {
			res := c.ctl("get", key, "--rev", revString(put))
			require.Zero(t, res.code, "BUG: get %s --rev %d (the revision of an acknowledged put to another range): %s", key, put, res)
			require.Equal(t, key+"\n"+model[key]+"\n", res.stdout)
			got := c.revisionOf("get", key)
			require.GreaterOrEqual(t, got, put, "BUG: get %s reports header revision %d after put k160 was acknowledged at %d", key, got, put)
		}
	})

	t.Run("Compaction", func(t *testing.T) {
		c := c.on(t)
		old := c.revisionOf("get", "--prefix", "k")
		// One write in every range after old; the last is the newest
		// write of the cluster, and the compaction revision.
		var rev int64
		for _, key := range []string{"k010", "k060b", "k110", "k160"} {
			model[key] = "after-" + key
			rev = c.revisionOf("put", key, model[key])
		}
		want = sortedKVs(model)
		require.Equal(t, fmt.Sprintf("compacted revision %d\n", rev), c.mustCtl("compaction", revString(rev)))

		for _, key := range []string{"k010", "k060b", "k110", "k160"} {
			for i := range c.nodes {
				requireCtlError(t, c.ctlOn(i, "get", key, "--rev", revString(old)),
					"etcdserver: mvcc: required revision has been compacted")
			}
		}
		requireCtlError(t, c.ctl("get", "--prefix", "k", "--rev", revString(old)),
			"etcdserver: mvcc: required revision has been compacted")
		// The compacted revision itself stays readable across ranges.
		require.Empty(t, c.scanProblem(0, want, "--prefix", "k", "--rev", revString(rev)))
		// Compacting again at it is refused.
		requireCtlError(t, c.ctl("compaction", revString(rev)), "etcdserver: mvcc: required revision has been compacted")
	})

	t.Run("CompactionAtReadRevision", func(t *testing.T) {
		// The README's recipe: compact at a revision taken from a response
		// header. The header of a read over several ranges is a revision
		// every range has closed; etcd compacts at any revision it
		// reported.
		c := c.on(t)
		rev := c.revisionOf("get", "--prefix", "k")
		res := c.ctl("compaction", revString(rev))
		require.Zero(t, res.code, "BUG: compaction at the header revision of a multi-range read: %s", res)
		require.Equal(t, fmt.Sprintf("compacted revision %d\n", rev), res.stdout)
	})

	t.Run("ReadsAfterCompaction", func(t *testing.T) {
		// Every range but k160's last wrote below the compaction revision
		// (compaction closed them above their last writes): plain reads
		// of them must still work, and so must the health checks, which
		// read the key "health" (in the first range).
		c := c.on(t)
		for _, nd := range c.nodes {
			for _, path := range []string{"/readyz", "/livez", "/health"} {
				code, body := httpGet(t, nd.clientURL+path)
				require.Equal(t, 200, code, "BUG: GET %s on %s after compaction: %s", path, nd.name, body)
			}
		}
		for _, key := range []string{"k010", "k060b", "k110", "k160"} {
			for i := range c.nodes {
				for _, cons := range []string{"--consistency=l", "--consistency=s"} {
					res := c.ctlOn(i, "get", key, cons)
					require.Zero(t, res.code, "BUG: get %s after compaction through node %d: %s", key, i, res)
					require.Equal(t, key+"\n"+model[key]+"\n", res.stdout)
				}
			}
		}
	})

	t.Run("Restart", func(t *testing.T) {
		// Right after the compaction: no range has written since, so
		// every range's newest write is below the compacted revision.
		c := c.on(t)
		c.restartAll()
		after := c.awaitLayout(ids, splitKeys)
		require.Equal(t, layout(rows), layout(after), "the same ranges after a restart")
		c.requireScans("k", want)
		for i := range c.nodes {
			c.awaitKeyStats(i, model)
		}
	})
}

// httpGet returns the status code and body of GET url.
func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// toJSONKVs converts clientv3 results to the shape kvsProblem takes.
func toJSONKVs(kvs []*mvccpb.KeyValue) []jsonKV {
	out := make([]jsonKV, 0, len(kvs))
	for _, kv := range kvs {
		out = append(out, jsonKV{Key: kv.Key, Value: kv.Value, CreateRevision: kv.CreateRevision,
			ModRevision: kv.ModRevision, Version: kv.Version})
	}
	return out
}

// clientScanProblem scans prefix through cli (serializably when asked) and
// describes how the result differs from want, or returns "".
func clientScanProblem(cli *clientv3.Client, prefix string, want []kvPair, serializable bool) string {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	resp, err := cli.Get(ctx, prefix, opts...)
	if err != nil {
		return err.Error()
	}
	if p := kvsProblem(toJSONKVs(resp.Kvs), want); p != "" {
		return p
	}
	if resp.Count != int64(len(want)) || resp.More {
		return fmt.Sprintf("count %d more %v, want count %d more false", resp.Count, resp.More, len(want))
	}
	return ""
}

// TestSplitUnderLoad splits ranges six times, through different nodes,
// while four writers and two readers (linearizable gets of written keys)
// run through different nodes, with a scanner counting keys across every
// range, and checks that not one client request failed and that
// afterwards every acknowledged put is present exactly once, with its
// value, through every node.
func TestSplitUnderLoad(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3, manualSplitsOnly...)
	ids := c.nodeIDs()
	clients := make([]*clientv3.Client, len(c.nodes))
	for i, nd := range c.nodes {
		clients[i] = newClient(t, nd.endpoint())
	}

	var (
		mu        sync.Mutex
		acked     = map[string]string{} // unique keys under "l"
		ackedKeys []string
		counters  = map[string]string{} // per-writer keys under "c/", overwritten
		failures  []string
		slowest   time.Duration
		slowestOp string
		acks      atomic.Int64
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, fmt.Sprintf(format, args...))
	}
	timed := func(op string, fn func()) {
		start := time.Now()
		fn()
		d := time.Since(start)
		mu.Lock()
		defer mu.Unlock()
		if d > slowest {
			slowest, slowestOp = d, op
		}
	}
	const requestTimeout = 15 * time.Second
	// Writers stop first, so that reads racing the last writes are seen
	// through to the end.
	stopWriters, stopReaders := make(chan struct{}), make(chan struct{})
	var writers, readers sync.WaitGroup
	stopLoad := sync.OnceFunc(func() {
		close(stopWriters)
		writers.Wait()
		close(stopReaders)
		readers.Wait()
	})
	defer stopLoad()
	stopped := func(ch chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}

	for w := range 4 {
		node := w % 3
		writers.Go(func() {
			for seq := 0; !stopped(stopWriters); seq++ {
				// Keys spread over l000..l999, so every split cuts through
				// live traffic; every fifth put overwrites the writer's
				// counter key.
				key := fmt.Sprintf("l%03d/w%d/%05d", (seq*397+w*211)%1000, w, seq)
				if seq%5 == 4 {
					key = fmt.Sprintf("c/w%d", w)
				}
				val := fmt.Sprintf("w%d-%d", w, seq)
				var err error
				timed(fmt.Sprintf("put %s through node %d", key, node), func() {
					ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
					defer cancel()
					_, err = clients[node].Put(ctx, key, val)
				})
				if err != nil {
					fail("writer %d: put %s through node %d: %v", w, key, node, err)
					continue
				}
				mu.Lock()
				if strings.HasPrefix(key, "c/") {
					counters[key] = val
				} else {
					acked[key] = val
					ackedKeys = append(ackedKeys, key)
				}
				mu.Unlock()
				acks.Add(1)
			}
		})
	}
	// sample returns a random acknowledged unique key (none with a nil
	// rng), its value and how many unique keys were acknowledged.
	sample := func(rng *rand.Rand) (string, string, int) {
		mu.Lock()
		defer mu.Unlock()
		n := len(ackedKeys)
		if n == 0 || rng == nil {
			return "", "", n
		}
		key := ackedKeys[rng.IntN(n)]
		return key, acked[key], n
	}
	for r := range 2 {
		node := r + 1
		readers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 7))
			for !stopped(stopReaders) {
				key, val, n := sample(rng)
				if n == 0 {
					time.Sleep(pollInterval) // nothing written yet
					continue
				}
				var resp *clientv3.GetResponse
				var err error
				timed(fmt.Sprintf("get %s through node %d", key, node), func() {
					ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
					defer cancel()
					resp, err = clients[node].Get(ctx, key)
				})
				switch {
				case err != nil:
					fail("reader %d: get %s through node %d: %v", r, key, node, err)
				case len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != val:
					fail("reader %d: get %s through node %d returned %v, want value %q", r, key, node, resp.Kvs, val)
				}
			}
		})
	}
	// The scanner counts every key under "l", linearizably, across all
	// ranges while they split. It uses the KV API directly: clientv3
	// retries a read that failed with Unavailable, which would hide a
	// server-side failure such as a timeout.
	readers.Go(func() {
		kv := pb.NewKVClient(clients[0].ActiveConnection())
		for !stopped(stopReaders) {
			_, _, n := sample(nil)
			var resp *pb.RangeResponse
			var err error
			timed("count of l* through node 0", func() {
				ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
				defer cancel()
				resp, err = kv.Range(ctx, &pb.RangeRequest{Key: []byte("l"), RangeEnd: []byte("m"), CountOnly: true})
			})
			switch {
			case err != nil:
				fail("scanner: count through node 0: %v", err)
			case resp.Count < int64(n):
				fail("scanner: count through node 0 is %d, below the %d puts acknowledged before", resp.Count, n)
			}
		}
	})

	waitAcks := func(n int64) {
		t.Helper()
		waitFor(t, splitTimeout, fmt.Sprintf("%d acknowledged puts", n), func() (bool, string) {
			mu.Lock()
			defer mu.Unlock()
			return acks.Load() >= n, fmt.Sprintf("%d acknowledged; failures: %q", acks.Load(), failures)
		})
	}
	waitAcks(100)
	splitKeys := []string{"l500", "l250", "l750", "l100", "l400", "l850"}
	for i, key := range splitKeys {
		left, right := c.splitAt(i%3, key)
		require.Equal(t, key, left.EndKey)
		require.Equal(t, key, right.StartKey)
		waitAcks(acks.Load() + 150) // traffic on the new ranges before the next split
	}
	stopLoad()
	t.Logf("%d puts acknowledged during %d splits; slowest request: %s, %v", acks.Load(), len(splitKeys), slowestOp, slowest)

	require.Empty(t, failures, "failed client requests")
	c.awaitLayout(ids, slices.Sorted(slices.Values(splitKeys)))
	want, wantCounters := sortedKVs(acked), sortedKVs(counters)
	for i, cli := range clients {
		require.Empty(t, clientScanProblem(cli, "l", want, false), "linearizable scan through node %d", i)
		require.Empty(t, clientScanProblem(cli, "c/", wantCounters, false), "linearizable scan through node %d", i)
		waitFor(t, splitTimeout, fmt.Sprintf("serializable scan through node %d", i), func() (bool, string) {
			p := clientScanProblem(cli, "l", want, true) + clientScanProblem(cli, "c/", wantCounters, true)
			return p == "", p
		})
	}
}

// writeLog records puts whose outcome the test knows (acknowledged) and
// those it does not (failed with a possibly ambiguous error while a node
// was down).
type writeLog struct {
	t       *testing.T
	acked   map[string]string
	unknown map[string]string
}

// seedWrites writes keys prefix000..prefix099 through all of c's nodes
// while every node is up, and returns the log of them.
func seedWrites(t *testing.T, c *cluster, prefix string) *writeLog {
	t.Helper()
	log := &writeLog{t: t, acked: map[string]string{}, unknown: map[string]string{}}
	all := newClient(t, strings.Split(c.endpoints(), ",")...)
	for i := range 100 {
		log.put(all, fmt.Sprintf("%s%03d", prefix, i), fmt.Sprintf("v%d", i))
	}
	require.Empty(t, log.unknown, "puts failed with every node up")
	return log
}

// put writes a key that was never written before, through cli.
func (l *writeLog) put(cli *clientv3.Client, key, val string) {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, val); err != nil {
		l.t.Logf("put %s: %v (it may or may not have applied)", key, err)
		l.unknown[key] = val
		return
	}
	l.acked[key] = val
}

// scanProblem describes how a scan result differs from the log: every
// acknowledged key exactly once with its value, in order, and no key but
// those, except puts of unknown outcome.
func (l *writeLog) scanProblem(got []jsonKV) string {
	if p := orderProblem(got); p != "" {
		return p
	}
	seen := map[string]bool{}
	for _, kv := range got {
		k, v := string(kv.Key), string(kv.Value)
		seen[k] = true
		if want, ok := l.acked[k]; ok && want != v {
			return fmt.Sprintf("%q=%q, want %q", k, v, want)
		}
		if want, ok := l.unknown[k]; ok && want != v {
			return fmt.Sprintf("%q=%q, want %q", k, v, want)
		}
		if _, ok := l.acked[k]; !ok {
			if _, ok := l.unknown[k]; !ok {
				return fmt.Sprintf("unexpected key %q=%q", k, v)
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(l.acked)) {
		if !seen[k] {
			return fmt.Sprintf("acknowledged key %q missing (%d kvs returned, %d acknowledged)", k, len(got), len(l.acked))
		}
	}
	return ""
}

// requireScans checks a full scan of prefix through every node,
// linearizable at once and serializable once the node caught up.
func (l *writeLog) requireScans(c *cluster, prefix string) {
	l.t.Helper()
	for i := range c.nodes {
		for _, cons := range []string{"l", "s"} {
			waitFor(l.t, splitTimeout, fmt.Sprintf("scan of %q through node %d (--consistency=%s)", prefix, i, cons), func() (bool, string) {
				res := c.ctlOn(i, "get", "--prefix", prefix, "--consistency="+cons, "-w", "json")
				var g jsonGet
				if res.code != 0 || jsonUnmarshal(res.stdout, &g) != nil {
					return false, res.String()
				}
				if p := l.scanProblem(g.Kvs); p != "" {
					return false, p
				}
				if g.Count != int64(len(g.Kvs)) || g.More {
					return false, fmt.Sprintf("count %d more %v for %d kvs", g.Count, g.More, len(g.Kvs))
				}
				return true, ""
			})
		}
	}
}

// TestSplitKillNode SIGKILLs a follower right after a split is
// acknowledged, and then the leader of a range right after a split of it
// was issued (the split may or may not apply), restarts each, and checks
// that every acknowledged key is present exactly once, in order, through
// every node and that every node lists the same ranges.
func TestSplitKillNode(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3, manualSplitsOnly...)
	ids := c.nodeIDs()
	log := seedWrites(t, c, "f")

	// A failed step leaves a node down: later steps would only time out.
	if !t.Run("Follower", func(t *testing.T) {
		c := c.on(t)
		log.t = t
		rows := c.awaitLayout(ids, nil)
		leader := slices.Index(ids, rows[0].LeaderNodeID)
		follower := (leader + 1) % 3
		// The leader acknowledges once it applied the split; the
		// follower may not have applied it yet when it dies.
		c.splitAt(leader, "f050")
		c.kill(follower)
		survivors := newClient(t, strings.Split(c.endpoints(others(follower)...), ",")...)
		for i := range 10 {
			log.put(survivors, fmt.Sprintf("f%03d+", i*10), "while-down") // on both sides of f050
		}
		c.restart(follower)
		c.awaitLayout(ids, []string{"f050"})
		log.requireScans(c, "f")
	}) {
		return
	}

	// Kill the leader of the range being split right after issuing the
	// split, once with the split sent to the leader itself (the node
	// handling it dies) and once through another node (which forwards it
	// to the leader and sees it die): the split may or may not apply. Then
	// once more as soon as the leader logs that it applied the split
	// (before it could answer): the split must apply everywhere.
	bounds := []string{"f050"}
	for _, tc := range []struct {
		name, key  string
		direct     bool
		afterApply bool
	}{
		{"LeaderOfSplitRange/Direct", "f075", true, false},
		{"LeaderOfSplitRange/Forwarded", "f025", false, false},
		{"LeaderOfSplitRange/AfterApply", "f090", true, true},
	} {
		if !t.Run(tc.name, func(t *testing.T) {
			c := c.on(t)
			log.t = t
			rows := c.awaitLayout(ids, bounds)
			leader := leaderIndex(rows, ids, tc.key)
			via := leader
			if !tc.direct {
				via = (leader + 1) % 3
			}
			// A warm connection, so the split goes out at once.
			rc := txnproto.NewRangesClient(dialRaw(t, c, via))
			ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
			defer cancel()
			_, err := rc.ListRanges(ctx, &txnproto.ListRangesRequest{})
			require.NoError(t, err)
			type result struct {
				resp *txnproto.SplitRangeResponse
				err  error
			}
			applyLogs := countSplitLogs(t, c.nodes[leader].logPath)
			done := make(chan result, 1)
			go func() {
				resp, err := rc.SplitRange(ctx, &txnproto.SplitRangeRequest{Key: []byte(tc.key)})
				done <- result{resp, err}
			}()
			if tc.afterApply {
				awaitSplitLog(t, c.nodes[leader].logPath, applyLogs)
			}
			c.kill(leader)
			survivors := newClient(t, strings.Split(c.endpoints(others(leader)...), ",")...)
			for i := range 10 {
				// On both sides of the split key.
				log.put(survivors, fmt.Sprintf("%s%02d-", tc.key[:3], i*2), "during-failover")
			}
			res := <-done
			t.Logf("split at %s through node %d, its range's leader killed (direct %v): %v", tc.key, via, tc.direct, res.err)
			acked := res.err == nil

			// The survivors agree on the ranges, then so does the
			// restarted node.
			withSplit := slices.Sorted(slices.Values(append(slices.Clone(bounds), tc.key)))
			c.awaitLayoutOneOf(ids, [][]string{bounds, withSplit}, others(leader)...)
			c.restart(leader)
			rows = c.awaitLayoutOneOf(ids, [][]string{bounds, withSplit})
			applied := slices.Equal(boundaries(rows), withSplit)
			t.Logf("split acknowledged %v, applied %v", acked, applied)
			if acked || tc.afterApply {
				require.True(t, applied, "an acknowledged or applied split must apply everywhere: %s", layout(rows))
			}
			// Splitting again either completes the split or reports it
			// done.
			again := c.rctlOn(via, "range", "split", tc.key)
			if applied {
				var id uint64
				for _, r := range rows {
					if r.StartKey == tc.key {
						id = r.RangeID
					}
				}
				require.NotZero(t, again.code, "%s", again)
				require.Equal(t, fmt.Sprintf(`Error: rangekv: %q is already the start of range %d`, tc.key, id), again.errLine(), "%s", again)
			} else if again.code != 0 {
				// The first split may still have committed after the check
				// above: a new leader commits its predecessor's entries.
				require.Regexp(t, fmt.Sprintf(`^Error: rangekv: %s is already the start of range \d+$`, regexp.QuoteMeta(strconv.Quote(tc.key))),
					again.errLine(), "%s", again)
			}
			bounds = withSplit
			c.awaitLayout(ids, bounds)
			log.requireScans(c, "f")
		}) {
			return
		}
	}
}

// TestSplitKillMidApply stops a node inside the apply of a split, on each
// side of the commit of the split's batch (gofail failpoints
// rangeraftBeforeSplitCommit and rangeraftAfterSplitCommit, which sleep),
// SIGKILLs it there, once as a follower and once as the leader of the range
// being split, keeps writing through the survivors, restarts it, and checks
// that the split (committed in every case: only committed entries apply)
// holds on every node and that every acknowledged key is present exactly
// once, in order, through every node.
func TestSplitKillMidApply(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3, manualSplitsOnly...)
	ids := c.nodeIDs()
	log := seedWrites(t, c, "m")

	var bounds []string
	for _, tc := range []struct {
		name, failpoint, logLine, key string
		leader                        bool
	}{
		{"Follower/BeforeCommit", "rangeraftBeforeSplitCommit", `"msg":"applying split"`, "m050", false},
		{"Follower/AfterCommit", "rangeraftAfterSplitCommit", `"msg":"split committed"`, "m025", false},
		{"Leader/BeforeCommit", "rangeraftBeforeSplitCommit", `"msg":"applying split"`, "m075", true},
		{"Leader/AfterCommit", "rangeraftAfterSplitCommit", `"msg":"split committed"`, "m012", true},
	} {
		if !t.Run(tc.name, func(t *testing.T) {
			c := c.on(t)
			log.t = t
			rows := c.awaitLayout(ids, bounds)
			leader := leaderIndex(rows, ids, tc.key)
			victim := leader
			if !tc.leader {
				victim = (leader + 1) % 3
			}
			via := (victim + 1) % 3
			nd := c.nodes[victim]
			seen := countLogLines(t, nd.logPath, tc.logLine)
			nd.enableFailpoint(t, tc.failpoint, `sleep("10m")`)

			// The split answers once its leader applied it; with the
			// leader stopped inside apply it does not, so do not wait.
			done := make(chan ctlResult, 1)
			go func() { done <- c.rctlOn(via, "range", "split", tc.key) }()
			waitFor(t, splitTimeout, nd.name+" to reach "+tc.failpoint, func() (bool, string) {
				n := countLogLines(t, nd.logPath, tc.logLine)
				return n > seen, fmt.Sprintf("%d lines %s", n, tc.logLine)
			})
			c.kill(victim)
			survivors := newClient(t, strings.Split(c.endpoints(others(victim)...), ",")...)
			for i := range 10 {
				// On both sides of the split key.
				log.put(survivors, fmt.Sprintf("%s%02d-", tc.key[:3], i*2), "while-down")
			}
			res := <-done
			t.Logf("split at %s through node %d while node %d (leader %v) sat at %s: exit %d %s", tc.key, via, victim, tc.leader, tc.failpoint, res.code, res.errLine())

			bounds = slices.Sorted(slices.Values(append(slices.Clone(bounds), tc.key)))
			c.awaitLayout(ids, bounds, others(victim)...)
			c.restart(victim)
			c.awaitLayout(ids, bounds)
			log.requireScans(c, "m")
		}) {
			return
		}
	}
}

// others returns the indexes of a three-node cluster's nodes but i.
func others(i int) []int {
	var out []int
	for j := range 3 {
		if j != i {
			out = append(out, j)
		}
	}
	return out
}

// countLogLines returns how many lines of the log contain s.
func countLogLines(t testing.TB, logPath, s string) int {
	t.Helper()
	b, err := os.ReadFile(logPath)
	require.NoError(t, err)
	return bytes.Count(b, []byte(s))
}

// splitApplyLog marks the log line a replica writes when it applied a
// split (rangeraft: "split range" with the new generation).
var splitApplyLog = regexp.MustCompile(`"msg":"split range".*"generation"`)

// countSplitLogs returns how many splits the node logged as applied.
func countSplitLogs(t testing.TB, logPath string) int {
	t.Helper()
	b, err := os.ReadFile(logPath)
	require.NoError(t, err)
	return len(splitApplyLog.FindAll(b, -1))
}

// awaitSplitLog waits, polling the log every millisecond so as to act
// before the node answers, until it logged more than n applied splits.
func awaitSplitLog(t testing.TB, logPath string, n int) {
	t.Helper()
	deadline := time.Now().Add(splitTimeout)
	for countSplitLogs(t, logPath) <= n {
		if time.Now().After(deadline) {
			t.Fatalf("no split applied in %s after %v", logPath, splitTimeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestWatchAcrossSplit watches one key, through every node, while its
// range splits seven times (moving the key to a new range, shrinking that
// range, and splitting exactly at the key) under a stream of puts, and
// checks that the watchers (etcdctl watch and clientv3) deliver every put
// exactly once, in order, with its revision. A prefix watch whose keys end
// up in eight ranges delivers every event of the prefix in revision order,
// whether it was created before the splits or after.
func TestWatchAcrossSplit(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3, manualSplitsOnly...)
	ids := c.nodeIDs()
	rows := c.awaitLayout(ids, nil)
	leader := slices.Index(ids, rows[0].LeaderNodeID)
	follower := (leader + 1) % 3
	writer := newClient(t, c.nodes[(leader+2)%3].endpoint())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Every acknowledged put of the watched key, in order.
	type put struct {
		value string
		rev   int64
	}
	var puts []put
	putKey := func(value string) {
		t.Helper()
		resp, err := writer.Put(ctx, "wk", value)
		require.NoError(t, err)
		puts = append(puts, put{value, resp.Header.Revision})
	}

	// The prefix watch, created before any split, on the raw stream so
	// a cancel reason would be visible (clientv3 drops the reason of a
	// watch cancelled after creation).
	stream, err := pb.NewWatchClient(dialRaw(t, c, follower)).Watch(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
		CreateRequest: &pb.WatchCreateRequest{Key: []byte("w"), RangeEnd: []byte("x")}}}))
	created, err := stream.Recv()
	require.NoError(t, err)
	require.True(t, created.Created, "%v", created)
	require.False(t, created.Canceled, "%v", created)
	// Raw watches of the single key, eight through each node, which show
	// a cancel reason if there is one.
	var keyStreams []pb.Watch_WatchClient
	for i := range 24 {
		ks, err := pb.NewWatchClient(dialRaw(t, c, i%3)).Watch(ctx)
		require.NoError(t, err)
		require.NoError(t, ks.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
			CreateRequest: &pb.WatchCreateRequest{Key: []byte("wk")}}}))
		created, err := ks.Recv()
		require.NoError(t, err)
		require.True(t, created.Created && !created.Canceled, "%v", created)
		keyStreams = append(keyStreams, ks)
	}

	// The single-key watchers: clientv3 (revisions) and etcdctl (its
	// printed events), both through a follower of the range.
	wcli := newClient(t, c.nodes[follower].endpoint())
	wch := wcli.Watch(ctx, "wk", clientv3.WithCreatedNotify())
	select {
	case resp := <-wch:
		require.True(t, resp.Created, "%+v", resp)
	case <-ctx.Done():
		t.Fatal("clientv3 watch not created")
	}
	proc := startEtcdctl(t, c.endpoints(follower), "watch", "wk")
	// etcdctl's watch is established once one of these puts shows up.
	mark := -1
	for i := 0; mark < 0; i++ {
		require.Less(t, i, 200, "etcdctl watch not established: stdout %q, stderr %q", proc.stdout, proc.stderr)
		value := fmt.Sprintf("establish-%d", i)
		putKey(value)
		deadline := time.Now().Add(time.Second)
		for mark < 0 && time.Now().Before(deadline) {
			ev := "PUT\nwk\n" + value + "\n"
			if idx := strings.Index(proc.stdout.String(), ev); idx >= 0 {
				mark = idx
			}
			time.Sleep(pollInterval)
		}
	}
	etcdctlFrom := len(puts) - 1 // index of the first put etcdctl printed after mark

	// Events of puts before the split reach the prefix watch.
	putKey("before-split")
	c.mustCtl("put", "wa", "other-key")

	// A writer keeps putting the key while the test splits.
	stop := make(chan struct{})
	writerDone := make(chan struct{})
	var mu sync.Mutex
	var writerErr error
	go func() {
		defer close(writerDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := writer.Put(ctx, "wk", fmt.Sprintf("during-%d", i))
			mu.Lock()
			if err != nil {
				writerErr = fmt.Errorf("put wk during-%d: %w", i, err)
				mu.Unlock()
				return
			}
			puts = append(puts, put{fmt.Sprintf("during-%d", i), resp.Header.Revision})
			mu.Unlock()
		}
	}()
	countPuts := func() (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return len(puts), writerErr
	}
	// Splits at wb..wj move wk to a new range each time (the watchers
	// follow it); wl shrinks wk's range; wk starts one.
	for i, key := range []string{"wb", "wd", "wf", "wh", "wj", "wl", "wk"} {
		c.splitAt(i%3, key)
		n, _ := countPuts()
		waitFor(t, splitTimeout, "puts after the split at "+key, func() (bool, string) {
			m, err := countPuts()
			require.NoError(t, err, "a put of the watched key failed")
			return m >= n+5, fmt.Sprintf("%d puts", m)
		})
	}
	close(stop)
	<-writerDone
	require.NoError(t, writerErr, "a put of the watched key failed")
	putKey("after-splits")
	_, err = writer.Delete(ctx, "wk")
	require.NoError(t, err)
	putKey("last")
	c.awaitLayout(ids, []string{"wb", "wd", "wf", "wh", "wj", "wk", "wl"})

	// Every put (its value and revision), then the delete, then "last",
	// exactly once, in revision order.
	var want []string
	for _, p := range puts[:len(puts)-1] {
		want = append(want, fmt.Sprintf("PUT %s@%d", p.value, p.rev))
	}
	want = append(want, "DELETE", "PUT last")
	render := func(ev *mvccpb.Event) string {
		if ev.Type == mvccpb.DELETE {
			return "DELETE"
		}
		if string(ev.Kv.Value) == "last" {
			return "PUT last"
		}
		return fmt.Sprintf("PUT %s@%d", ev.Kv.Value, ev.Kv.ModRevision)
	}

	t.Run("ClientWatchDeliversEveryPut", func(t *testing.T) {
		var got []string
		var lastRev int64
		deadline := time.After(watchTimeout)
		for len(got) == 0 || got[len(got)-1] != "PUT last" {
			select {
			case resp, ok := <-wch:
				require.True(t, ok, "BUG: the clientv3 watch of wk was closed by the server after %q; see RawWatchesOfKeyNotCancelled for the reason", got)
				require.NoError(t, resp.Err())
				for _, ev := range resp.Events {
					require.Greater(t, ev.Kv.ModRevision, lastRev, "events out of revision order: %q", got)
					lastRev = ev.Kv.ModRevision
					got = append(got, render(ev))
				}
			case <-deadline:
				t.Fatalf("watch did not deliver the last put; got %q", got)
			}
		}
		require.Equal(t, want, got, "puts watched across the splits")
	})

	t.Run("RawWatchesOfKeyNotCancelled", func(t *testing.T) {
		for i, ks := range keyStreams {
			var got []string
			for len(got) == 0 || got[len(got)-1] != "PUT last" {
				resp, err := ks.Recv()
				require.NoError(t, err)
				require.False(t, resp.Canceled, "BUG: watch %d of wk, through node %d, was cancelled after %d events: %q",
					i, i%3, len(got), resp.CancelReason)
				for _, ev := range resp.Events {
					got = append(got, render(ev))
				}
			}
			require.Equal(t, want, got, "puts watched across the splits by watch %d", i)
		}
	})

	t.Run("EtcdctlWatchDeliversEveryPut", func(t *testing.T) {
		var want strings.Builder
		for _, p := range puts[etcdctlFrom : len(puts)-1] {
			fmt.Fprintf(&want, "PUT\nwk\n%s\n", p.value)
		}
		want.WriteString("DELETE\nwk\n\nPUT\nwk\nlast\n")
		waitFor(t, watchTimeout, "etcdctl watch to print the last put", func() (bool, string) {
			select {
			case <-proc.exited:
				t.Fatalf("BUG: etcdctl watch wk ended (exit %d) while its key's range split: stdout %q, stderr %q",
					proc.code, proc.stdout, proc.stderr)
			default:
			}
			return strings.HasSuffix(proc.stdout.String(), "PUT\nwk\nlast\n"), proc.stdout.String()
		})
		require.Equal(t, want.String(), proc.stdout.String()[mark:])
	})

	t.Run("PrefixWatchFollowsSplits", func(t *testing.T) {
		// The watch of "w".."x", created before any split, keeps going as
		// its keys spread over eight ranges: every put, the delete and the
		// last put, exactly once, in revision order.
		var all []string
		for _, p := range puts[:len(puts)-1] {
			all = append(all, "PUT wk="+p.value)
			if p.value == "before-split" {
				all = append(all, "PUT wa=other-key")
			}
		}
		all = append(all, "DELETE wk=", "PUT wk=last")
		var events []string
		var lastRev int64
		for len(events) < len(all) {
			resp, err := stream.Recv()
			require.NoError(t, err)
			require.Equal(t, created.WatchId, resp.WatchId)
			require.False(t, resp.Canceled, "prefix watch cancelled after %d events: %q", len(events), resp.CancelReason)
			for _, ev := range resp.Events {
				require.GreaterOrEqual(t, ev.Kv.ModRevision, lastRev, "events out of revision order: %q", events)
				lastRev = ev.Kv.ModRevision
				events = append(events, fmt.Sprintf("%s %s=%s", ev.Type, ev.Kv.Key, ev.Kv.Value))
			}
		}
		require.Equal(t, all, events)
	})

	t.Run("PrefixWatchOfSeveralRanges", func(t *testing.T) {
		// Created after the splits: etcdctl and clientv3 watches of keys
		// in several ranges see puts in any of them.
		w := startEtcdctl(t, c.endpoints(follower), "watch", "--prefix", "w")
		cch := wcli.Watch(ctx, "w", clientv3.WithFromKey())
		waitFor(t, watchTimeout, "a prefix watch over several ranges", func() (bool, string) {
			c.mustCtl("put", "wa2", "first-range")
			c.mustCtl("put", "wm", "last-range")
			out := w.stdout.String()
			return strings.Contains(out, "PUT\nwa2\nfirst-range\n") && strings.Contains(out, "PUT\nwm\nlast-range\n"),
				out + w.stderr.String()
		})
		seen := map[string]bool{}
		for !seen["wa2"] || !seen["wm"] {
			select {
			case resp := <-cch:
				require.NoError(t, resp.Err())
				for _, ev := range resp.Events {
					seen[string(ev.Kv.Key)] = true
				}
			case <-time.After(watchTimeout):
				t.Fatalf("clientv3 watch from w saw only %v", seen)
			}
		}
	})
}

// TestMoveLeader moves the leadership of a range to each node in turn,
// asking through a different node each time, checks that every node then
// reports that leader and that the range keeps serving writes, and checks
// the errors for a node without a voter and a malformed node ID.
func TestMoveLeader(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3, manualSplitsOnly...)
	ids := c.nodeIDs()
	c.splitAt(0, "m")
	for round := range 2 {
		for i := range c.nodes {
			via := (i + 1) % 3
			out := c.mustRctlOn(via, "range", "move-leader", "a", ids[i], "-w", "json")
			var rows []rangeRow
			require.NoError(t, json.Unmarshal([]byte(out), &rows), out)
			require.Len(t, rows, 1)
			require.Equal(t, ids[i], rows[0].LeaderNodeID, out)
			rows = c.awaitLayout(ids, []string{"m"})
			require.Equal(t, ids[i], rows[0].LeaderNodeID)
			require.Equal(t, "OK\n", c.mustCtlOn(via, "put", fmt.Sprintf("a%d-%d", round, i), "v"))
		}
	}
	var g jsonGet
	mustCtlJSON(t, c.endpoints(), &g, "get", "a", "--prefix", "--keys-only")
	require.Equal(t, int64(6), g.Count)

	res := c.rctlOn(0, "range", "move-leader", "a", "1234")
	require.Equal(t, 1, res.code, "%s", res)
	require.Regexp(t, `^Error: rangekv: node 1234 holds no voter of range \d+$`, res.errLine())
	res = c.rctlOn(0, "range", "move-leader", "a", "not-hex")
	require.Equal(t, 1, res.code, "%s", res)
	require.Equal(t, `Error: bad node ID "not-hex" (want the hex ID that node list prints)`, res.errLine())
}
