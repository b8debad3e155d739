package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// requireCtlError asserts that etcdctl failed with exit code 1 and printed
// "Error: <msg>" as its last line on stderr, and nothing on stdout.
func requireCtlError(t *testing.T, res ctlResult, msg string) {
	t.Helper()
	require.Equal(t, 1, res.code, "%s", res)
	require.Equal(t, "Error: "+msg, res.errLine(), "%s", res)
	require.Empty(t, res.stdout, "%s", res)
}

// TestSingleNodeKV drives one node started with etcd's defaults (only
// --data-dir and the URL flags) through etcdctl's key-value commands,
// comparing etcdctl's output byte for byte with what etcd makes it print.
func TestSingleNodeKV(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)

	t.Run("PutGet", func(t *testing.T) {
		c := c.on(t)
		require.Equal(t, "OK\n", c.mustCtl("put", "foo", "bar"))
		require.Equal(t, "foo\nbar\n", c.mustCtl("get", "foo"))
		require.Equal(t, "", c.mustCtl("get", "missing"))
		require.Equal(t, "OK\nfoo\nbar\n", c.mustCtl("put", "foo", "bar2", "--prev-kv"))
		require.Equal(t, "bar2\n", c.mustCtl("get", "foo", "--print-value-only"))
		require.Equal(t, "OK\n", c.mustCtl("put", "foo", "bar"))
	})

	t.Run("GetPrefix", func(t *testing.T) {
		c := c.on(t)
		c.mustCtl("put", "foo2", "baz")
		c.mustCtl("put", "foo3", "qux")
		c.mustCtl("put", "fop", "not-in-prefix")
		require.Equal(t, "foo\nbar\nfoo2\nbaz\nfoo3\nqux\n", c.mustCtl("get", "--prefix", "foo"))
		require.Equal(t, "foo\n\nfoo2\n\nfoo3\n\n", c.mustCtl("get", "--prefix", "foo", "--keys-only"))
		require.Equal(t, "foo3\nqux\nfoo2\nbaz\nfoo\nbar\n",
			c.mustCtl("get", "--prefix", "foo", "--sort-by", "key", "--order", "descend"))
		// A range [key, range_end).
		require.Equal(t, "foo2\nbaz\nfoo3\nqux\n", c.mustCtl("get", "foo2", "fop"))
	})

	t.Run("GetFromKey", func(t *testing.T) {
		c := c.on(t)
		// "~" sorts after every other key this test writes.
		c.mustCtl("put", "~1", "a")
		c.mustCtl("put", "~2", "b")
		c.mustCtl("put", "~3", "c")
		require.Equal(t, "~2\nb\n~3\nc\n", c.mustCtl("get", "--from-key", "~2"))
	})

	t.Run("GetLimit", func(t *testing.T) {
		c := c.on(t)
		for _, k := range []string{"lim/a", "lim/b", "lim/c"} {
			c.mustCtl("put", k, "v-"+k)
		}
		var r jsonGet
		mustCtlJSON(t, c.endpoints(), &r, "get", "--prefix", "lim/", "--limit", "2")
		require.Len(t, r.Kvs, 2)
		require.Equal(t, "lim/a", string(r.Kvs[0].Key))
		require.Equal(t, "v-lim/a", string(r.Kvs[0].Value))
		require.Equal(t, "lim/b", string(r.Kvs[1].Key))
		require.True(t, r.More, "more with 3 keys and --limit 2")
		require.Equal(t, int64(3), r.Count)
		require.Equal(t, int64(1), r.Kvs[0].Version)
		require.Equal(t, r.Kvs[0].CreateRevision, r.Kvs[0].ModRevision)
		require.Less(t, r.Kvs[0].ModRevision, r.Kvs[1].ModRevision)
		require.GreaterOrEqual(t, r.Header.Revision, r.Kvs[1].ModRevision)

		r = jsonGet{}
		mustCtlJSON(t, c.endpoints(), &r, "get", "--prefix", "lim/", "--limit", "3")
		require.Len(t, r.Kvs, 3)
		require.False(t, r.More)
		require.Equal(t, int64(3), r.Count)

		require.Equal(t, "lim/a\nv-lim/a\n", c.mustCtl("get", "--prefix", "lim/", "--limit", "1"))
		out := c.mustCtl("get", "--prefix", "lim/", "--count-only", "-w", "fields")
		require.Contains(t, out, "\n\"Count\" : 3\n")
		require.NotContains(t, out, `"Key"`)
	})

	t.Run("Delete", func(t *testing.T) {
		c := c.on(t)
		require.Equal(t, "1\n", c.mustCtl("del", "lim/a"))
		require.Equal(t, "0\n", c.mustCtl("del", "lim/a"))
		require.Equal(t, "1\nlim/b\nv-lim/b\n", c.mustCtl("del", "lim/b", "--prev-kv"))
		c.mustCtl("put", "lim/d", "d")
		require.Equal(t, "2\n", c.mustCtl("del", "--prefix", "lim/"))
		require.Equal(t, "", c.mustCtl("get", "--prefix", "lim/"))
	})

	t.Run("Txn", func(t *testing.T) {
		c := c.on(t)
		c.mustCtl("put", "tx/k", "v1")
		// Compares, blank line, success ops, blank line, failure ops.
		txn := "value(\"tx/k\") = \"v1\"\n\nput tx/k v2\nget tx/k\n\nget tx/k\n\n"
		res := etcdctl(t, c.endpoints(), txn, "txn")
		require.Zero(t, res.code, "%s", res)
		require.Equal(t, "SUCCESS\n\nOK\n\ntx/k\nv2\n", res.stdout)

		// The value is v2 now: the same txn takes the failure branch.
		res = etcdctl(t, c.endpoints(), txn, "txn")
		require.Zero(t, res.code, "%s", res)
		require.Equal(t, "FAILURE\n\ntx/k\nv2\n", res.stdout)

		// Several compares and a delete in one branch.
		txn = "value(\"tx/k\") = \"v2\"\nversion(\"tx/k\") = \"2\"\nmod(\"tx/missing\") = \"0\"\n\n" +
			"del tx/k\nput tx/n new\n\nput tx/never x\n\n"
		res = etcdctl(t, c.endpoints(), txn, "txn")
		require.Zero(t, res.code, "%s", res)
		require.Equal(t, "SUCCESS\n\n1\n\nOK\n", res.stdout)
		require.Equal(t, "tx/n\nnew\n", c.mustCtl("get", "--prefix", "tx/"))
	})

	t.Run("Compaction", func(t *testing.T) {
		c := c.on(t)
		r1 := c.revisionOf("put", "cmp/k", "v1")
		r2 := c.revisionOf("put", "cmp/k", "v2")
		require.Greater(t, r2, r1)
		require.Equal(t, "cmp/k\nv1\n", c.mustCtl("get", "cmp/k", "--rev", revString(r1)))

		require.Equal(t, fmt.Sprintf("compacted revision %d\n", r2), c.mustCtl("compaction", revString(r2)))
		requireCtlError(t, c.ctl("get", "cmp/k", "--rev", revString(r1)),
			"etcdserver: mvcc: required revision has been compacted")
		// The compacted revision itself stays readable.
		require.Equal(t, "cmp/k\nv2\n", c.mustCtl("get", "cmp/k", "--rev", revString(r2)))
		// Compacting again at or below the compacted revision fails.
		requireCtlError(t, c.ctl("compaction", revString(r1)),
			"etcdserver: mvcc: required revision has been compacted")
		// So does compacting in the future.
		requireCtlError(t, c.ctl("compaction", revString(r2+1<<50)),
			"etcdserver: mvcc: required revision is a future revision")
	})

	t.Run("FutureRevision", func(t *testing.T) {
		c := c.on(t)
		r := c.revisionOf("get", "foo")
		// About twelve days ahead on the HLC (physical milliseconds << 20).
		future := r + 1<<50
		requireCtlError(t, c.ctl("get", "foo", "--rev", revString(future)),
			"etcdserver: mvcc: required revision is a future revision")
	})

	t.Run("EmptyKey", func(t *testing.T) {
		c := c.on(t)
		requireCtlError(t, c.ctl("put", "", "x"), "etcdserver: key is not provided")
	})

	t.Run("IgnoreValueOnMissingKey", func(t *testing.T) {
		c := c.on(t)
		requireCtlError(t, c.ctl("put", "iv/missing", "--ignore-value"), "etcdserver: key not found")
		c.mustCtl("put", "iv/k", "v")
		require.Equal(t, "OK\n", c.mustCtl("put", "iv/k", "--ignore-value"))
		require.Equal(t, "iv/k\nv\n", c.mustCtl("get", "iv/k"))
	})

	t.Run("DuplicateKeyInTxn", func(t *testing.T) {
		c := c.on(t)
		res := etcdctl(t, c.endpoints(), "\nput dup/a 1\nput dup/a 2\n\n\n", "txn")
		requireCtlError(t, res, "etcdserver: duplicate key given in txn request")
		require.Equal(t, "", c.mustCtl("get", "dup/a"))
	})

	t.Run("MemberList", func(t *testing.T) {
		c := c.on(t)
		nd := c.nodes[0]
		var ml jsonMemberList
		mustCtlJSON(t, c.endpoints(), &ml, "member", "list")
		require.Len(t, ml.Members, 1)
		m := ml.Members[0]
		require.Equal(t, "default", m.Name)
		require.Equal(t, []string{nd.peerURL}, m.PeerURLs)
		require.Equal(t, []string{nd.clientURL}, m.ClientURLs)
		require.Equal(t, ml.Header.MemberID, m.ID)
		require.Equal(t, fmt.Sprintf("%x, started, default, %s, %s, false\n", m.ID, nd.peerURL, nd.clientURL),
			c.mustCtl("member", "list"))
	})

	t.Run("EndpointStatus", func(t *testing.T) {
		c := c.on(t)
		var st jsonEndpointStatus
		mustCtlJSON(t, c.endpoints(), &st, "endpoint", "status")
		require.Len(t, st, 1)
		require.Equal(t, c.nodes[0].endpoint(), st[0].Endpoint)
		require.Equal(t, "3.7.0", st[0].Status.Version)
		require.NotZero(t, st[0].Status.Header.MemberID)
		require.Equal(t, st[0].Status.Header.MemberID, st[0].Status.Leader, "a single node leads")
		require.Empty(t, st[0].Status.Errors)
		require.NotZero(t, st[0].Status.RaftTerm)
		require.GreaterOrEqual(t, st[0].Status.RaftIndex, st[0].Status.RaftAppliedIndex)
		require.Positive(t, st[0].Status.DBSize)
	})

	t.Run("EndpointHealth", func(t *testing.T) {
		c := c.on(t)
		out := c.mustCtl("endpoint", "health")
		require.Regexp(t, "^"+regexp.QuoteMeta(c.nodes[0].endpoint())+
			` is healthy: successfully committed proposal: took = \S+`+"\n$", out)
	})

	t.Run("HTTP", func(t *testing.T) {
		c := c.on(t)
		get := func(path string) (int, string) {
			resp, err := http.Get(c.nodes[0].clientURL + path)
			require.NoError(t, err)
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			return resp.StatusCode, string(b)
		}

		code, body := get("/health")
		require.Equal(t, http.StatusOK, code, body)
		var health map[string]string
		require.NoError(t, json.Unmarshal([]byte(body), &health), body)
		require.Equal(t, "true", health["health"], body)

		for _, p := range []string{"/livez", "/readyz"} {
			code, body = get(p)
			require.Equal(t, http.StatusOK, code, p)
			require.Equal(t, "ok", body, p)
		}

		code, body = get("/version")
		require.Equal(t, http.StatusOK, code, body)
		var version map[string]string
		require.NoError(t, json.Unmarshal([]byte(body), &version), body)
		require.Equal(t, "3.7.0", version["etcdserver"], body)
		require.Equal(t, "3.7.0", version["etcdcluster"], body)

		code, body = get("/metrics")
		require.Equal(t, http.StatusOK, code)
		require.Contains(t, strings.Split(body, "\n"), "etcd_server_has_leader 1")
	})
}

// TestRequestLimits checks --max-request-bytes and --max-txn-ops with the
// errors etcd returns for them.
func TestRequestLimits(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1, "--max-request-bytes", "1024", "--max-txn-ops", "4")

	t.Run("MaxRequestBytes", func(t *testing.T) {
		c := c.on(t)
		requireCtlError(t, c.ctl("put", "big", strings.Repeat("x", 2000)), "etcdserver: request is too large")
		require.Equal(t, "", c.mustCtl("get", "big"))
		require.Equal(t, "OK\n", c.mustCtl("put", "big", strings.Repeat("x", 900)))
		require.Equal(t, strings.Repeat("x", 900)+"\n", c.mustCtl("get", "big", "--print-value-only"))
	})

	t.Run("MaxTxnOps", func(t *testing.T) {
		c := c.on(t)
		txn := func(n int) string {
			var b strings.Builder
			b.WriteString("\n") // no compares
			for i := range n {
				fmt.Fprintf(&b, "put ops/%d v\n", i)
			}
			b.WriteString("\n\n") // end of success ops; no failure ops
			return b.String()
		}
		requireCtlError(t, etcdctl(t, c.endpoints(), txn(5), "txn"), "etcdserver: too many operations in txn request")
		require.Equal(t, "", c.mustCtl("get", "--prefix", "ops/"))

		res := etcdctl(t, c.endpoints(), txn(4), "txn")
		require.Zero(t, res.code, "%s", res)
		require.Equal(t, "SUCCESS\n\nOK\n\nOK\n\nOK\n\nOK\n", res.stdout)
		require.Equal(t, "ops/0\n\nops/1\n\nops/2\n\nops/3\n\n", c.mustCtl("get", "--prefix", "ops/", "--keys-only"))
	})

	t.Run("WholeKeyspaceHoldsOnlyUserKeys", func(t *testing.T) {
		c := c.on(t)
		// No internal key (members, health probes, range metadata) shows
		// through the etcd API.
		want := "big\n\nops/0\n\nops/1\n\nops/2\n\nops/3\n\n"
		require.Equal(t, want, c.mustCtl("get", "--prefix", "", "--keys-only"))
		require.Equal(t, want, c.mustCtl("get", "--from-key", "", "--keys-only"))
		require.Equal(t, "5\n", c.mustCtl("del", "--prefix", ""))
		require.Equal(t, "", c.mustCtl("get", "--from-key", ""))
		c.nodes[0].waitReady(t) // deleting everything leaves the node healthy
	})
}
