package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// runToExit runs bin/rangekv with args in the foreground and returns its
// stderr and exit code. It fails the test if the process is still running
// after commandTimeout, that is if it started when it should have refused.
func runToExit(t *testing.T, args ...string) (stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, rangekvBin, args...)
	cmd.Env = cleanEnv()
	var errBuf bytes.Buffer
	cmd.Stderr = &errBuf
	setProcessAttrs(cmd)
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("rangekv %s kept running for %v; it should have refused to start; stderr:\n%s",
			strings.Join(args, " "), commandTimeout, errBuf.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run rangekv: %v", err)
	}
	return errBuf.String(), cmd.ProcessState.ExitCode()
}

// lastLine returns the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// withFlag returns args with flag's value replaced by value (or flag
// appended when absent).
func withFlag(args []string, flag, value string) []string {
	out := append([]string(nil), args...)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == flag {
			out[i+1] = value
			return out
		}
	}
	return append(out, flag, value)
}

// TestCrashRecovery SIGKILLs a single node after acknowledged writes and
// checks that all of them are there after a restart, then that a restart
// with another --initial-cluster-token is refused without harming the data.
func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	nd := c.nodes[0]
	cli := newClient(t, nd.endpoint())

	const n = 200
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range n {
		_, err := cli.Put(ctx, fmt.Sprintf("crash/%03d", i), fmt.Sprintf("v%d", i))
		require.NoError(t, err)
	}
	// The last acknowledged write before the crash overwrites a key.
	_, err := cli.Put(ctx, "crash/000", "overwritten")
	require.NoError(t, err)
	del, err := cli.Delete(ctx, "crash/001")
	require.NoError(t, err)
	lastRev := del.Header.Revision

	c.kill(0)
	c.restart(0)

	check := func(t *testing.T) {
		t.Helper()
		for _, opts := range [][]clientv3.OpOption{{clientv3.WithSerializable()}, nil} {
			resp, err := cli.Get(ctx, "crash/", append(opts, clientv3.WithPrefix())...)
			require.NoError(t, err)
			got := map[string]string{}
			for _, kv := range resp.Kvs {
				got[string(kv.Key)] = string(kv.Value)
			}
			for i := range n {
				k, want := fmt.Sprintf("crash/%03d", i), fmt.Sprintf("v%d", i)
				switch i {
				case 0:
					want = "overwritten"
				case 1:
					_, found := got[k]
					require.False(t, found, "deleted key %s is back", k)
					continue
				}
				require.Equal(t, want, got[k], "key %s", k)
			}
			require.Len(t, got, n-1, "keys under crash/")
		}
	}
	check(t)
	// Writes work after recovery, at revisions above those before the crash.
	require.Greater(t, c.revisionOf("put", "after-crash", "yes"), lastRev)

	t.Run("OtherClusterToken", func(t *testing.T) {
		c := c.on(t)
		c.kill(0)
		stderr, code := runToExit(t, withFlag(nd.args, "--initial-cluster-token", "another-cluster")...)
		require.Equal(t, 1, code, stderr)
		line := lastLine(stderr)
		require.True(t, strings.HasPrefix(line, "rangekv: failed to start node: data dir "+nd.dataDir+" "), line)
		require.Contains(t, line, `belongs to cluster`, line)
		require.Contains(t, line, `--initial-cluster-token`, line)

		// The refused start left the data intact.
		c.restart(0)
		check(t)
		require.Equal(t, "after-crash\nyes\n", c.mustCtl("get", "after-crash"))
	})
}

// TestCorruptDataDir checks that rangekv refuses, with exit code 1 and a
// one-line error naming the data directory, to start on a directory that
// is not a rangekv engine or whose files were overwritten with garbage.
func TestCorruptDataDir(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1) // flags only; started below
	nd := c.nodes[0]

	requireRefused := func(t *testing.T, dataDir string) {
		t.Helper()
		stderr, code := runToExit(t, withFlag(nd.args, "--data-dir", dataDir)...)
		require.Equal(t, 1, code, stderr)
		line := lastLine(stderr)
		require.True(t, strings.HasPrefix(line, "rangekv: failed to start node: "), line)
		require.Contains(t, line, "corrupt", line)
		require.Contains(t, line, dataDir, line)
	}

	t.Run("GarbageCURRENT", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "data")
		require.NoError(t, os.MkdirAll(dir, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "CURRENT"), randomBytes(t, 64), 0o644))
		requireRefused(t, dir)
	})

	t.Run("GarbageFiles", func(t *testing.T) {
		c := c.on(t)
		c.restart(0)
		require.Equal(t, "OK\n", c.mustCtl("put", "k", "v"))
		c.kill(0)
		entries, err := os.ReadDir(nd.dataDir)
		require.NoError(t, err)
		overwritten := 0
		for _, e := range entries {
			if e.IsDir() || e.Name() == "LOCK" {
				continue
			}
			require.NoError(t, os.WriteFile(filepath.Join(nd.dataDir, e.Name()), randomBytes(t, 4096), 0o644))
			overwritten++
		}
		require.Positive(t, overwritten)
		requireRefused(t, nd.dataDir)
	})
}

// randomBytes returns n random bytes.
func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}
