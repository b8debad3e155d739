package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// watchTimeout bounds how long a watcher may take to print an event.
const watchTimeout = 20 * time.Second

// startWatch starts `etcdctl watch <args>` in the background and returns
// it once the watch is established, with the stdout offset after which
// events of later writes appear. It proves the watch established by
// putting sentinel keys (sentinelKey-N, which args must match) until one
// shows up in the output. Events of sentinels come before that offset.
func startWatch(t *testing.T, c *cluster, sentinelKey string, args ...string) (*bgProcess, int) {
	t.Helper()
	w := startEtcdctl(t, c.endpoints(), append([]string{"watch"}, args...)...)
	deadline := time.Now().Add(watchTimeout)
	for i := 0; ; i++ {
		key := fmt.Sprintf("%s-%d", sentinelKey, i)
		c.mustCtl("put", key, "sentinel")
		// A fresh key has no previous value, so the event reads the same
		// with or without --prev-kv.
		event := fmt.Sprintf("PUT\n%s\nsentinel\n", key)
		appeared := time.Now().Add(time.Second)
		for time.Now().Before(appeared) {
			if idx := strings.Index(w.stdout.String(), event); idx >= 0 {
				return w, idx + len(event)
			}
			select {
			case <-w.exited:
				t.Fatalf("etcdctl watch exited with %d: stdout %q, stderr %q", w.code, w.stdout, w.stderr)
			case <-time.After(pollInterval):
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch not established after %v: stdout %q, stderr %q", watchTimeout, w.stdout, w.stderr)
		}
	}
}

// events renders watch events the way etcdctl's simple printer does: the
// type, then the previous key and value (with --prev-kv, when there is
// one), then the key and value.
func events(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

// TestWatch checks the event stream etcdctl watch prints for puts, deletes
// and a multi-key transaction, replay from a past revision with --rev, and
// the cancellation of a watch that starts below the compacted revision.
func TestWatch(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)

	live, mark := startWatch(t, c, "k-sentinel", "--prefix", "k", "--prev-kv")

	r0 := c.revisionOf("put", "k1", "a")
	r1 := c.revisionOf("put", "k1", "b")
	require.Equal(t, "1\n", c.mustCtl("del", "k1"))
	res := etcdctl(t, c.endpoints(), "\nput k2 x\nput k3 y\n\n\n", "txn")
	require.Zero(t, res.code, "%s", res)
	c.mustCtl("put", "k2", "z")
	c.mustCtl("put", "not-watched", "v")
	c.mustCtl("put", "kz-end", "done")

	t.Run("LiveWithPrevKV", func(t *testing.T) {
		end := live.waitOutput(t, "PUT\nkz-end\ndone\n", watchTimeout)
		require.Equal(t, events(
			"PUT", "k1", "a",
			"PUT", "k1", "a", "k1", "b",
			"DELETE", "k1", "b", "k1", "",
			"PUT", "k2", "x",
			"PUT", "k3", "y",
			"PUT", "k2", "x", "k2", "z",
			"PUT", "kz-end", "done",
		), live.stdout.String()[mark:end])
	})

	t.Run("ReplayFromRevision", func(t *testing.T) {
		c := c.on(t)
		w := startEtcdctl(t, c.endpoints(), "watch", "--prefix", "k", "--rev", revString(r0))
		end := w.waitOutput(t, "PUT\nkz-end\ndone\n", watchTimeout)
		require.Equal(t, events(
			"PUT", "k1", "a",
			"PUT", "k1", "b",
			"DELETE", "k1", "",
			"PUT", "k2", "x",
			"PUT", "k3", "y",
			"PUT", "k2", "z",
			"PUT", "kz-end", "done",
		), w.stdout.String()[:end])

		// One key, from the revision of its second version.
		single := startEtcdctl(t, c.endpoints(), "watch", "k1", "--rev", revString(r1))
		end = single.waitOutput(t, "DELETE\nk1\n\n", watchTimeout)
		require.Equal(t, events("PUT", "k1", "b", "DELETE", "k1", ""), single.stdout.String()[:end])
	})

	t.Run("FromCompactedRevision", func(t *testing.T) {
		c := c.on(t)
		compactAt := c.revisionOf("get", "k2")
		c.mustCtl("compaction", revString(compactAt))
		res := c.ctl("watch", "--prefix", "k", "--rev", revString(r0))
		require.Equal(t, 5, res.code, "etcdctl exits with ExitInterrupted; %s", res)
		require.Empty(t, res.stdout, "%s", res)
		require.True(t, strings.HasSuffix(res.stderr,
			"watch was canceled (etcdserver: mvcc: required revision has been compacted)\n"+
				"Error: watch is canceled by the server\n"), "%s", res)
	})
}
