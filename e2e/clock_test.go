package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// readyz returns a node's GET /readyz?verbose status and body.
func readyz(t testing.TB, nd *node) (int, string) {
	t.Helper()
	resp, err := http.Get(nd.clientURL + "/readyz?verbose")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestClockOffsetEnforced starts a three-node cluster whose third node's
// clock runs 2 s ahead (--unsafe-clock-skew) with the default 500 ms
// --max-clock-offset. That node, off from both its peers, must stop
// serving KV and watches with a message saying why, fail /readyz's
// clock_offset check, log the reason and lead no range, while the other
// two (each off from only one peer) keep serving. Restarted with a skew
// inside the bound it serves again.
func TestClockOffsetEnforced(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3, manualSplitsOnly...)
	skewed := c.nodes[2]
	base := append([]string(nil), skewed.args...)
	skewed.args = append(skewed.args, "--unsafe-clock-skew", "2s")
	for _, nd := range c.nodes {
		nd.start(t)
	}
	c.nodes[0].waitReady(t)
	c.nodes[1].waitReady(t)

	waitFor(t, readyTimeout, "the skewed node to fail its clock check", func() (bool, string) {
		code, body := readyz(t, skewed)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "[-]clock_offset failed") &&
			strings.Contains(body, "off from 2 of 2 peers"), fmt.Sprintf("%d %s", code, body)
	})
	res := c.ctlOn(2, "put", "k", "v")
	require.Equal(t, 1, res.code, "%s", res)
	require.Contains(t, res.errLine(), "this node's clock is off from 2 of 2 peers by more than --max-clock-offset (500ms)")
	require.Contains(t, res.errLine(), "not serving until it is back within bounds")

	// The healthy nodes serve, reads and writes alike.
	for i := range 2 {
		code, body := readyz(t, c.nodes[i])
		require.Equal(t, http.StatusOK, code, body)
		require.Equal(t, "OK\n", c.mustCtlOn(i, "put", fmt.Sprintf("k%d", i), "v"))
	}
	require.Equal(t, "k0\nv\n", c.mustCtlOn(1, "get", "k0"))

	// The skewed node hands off every leadership and says why in its log.
	ids := c.nodeIDs()
	waitFor(t, readyTimeout, "no range led by the skewed node", func() (bool, string) {
		out := c.rctlOn(0, "range", "list", "-w", "json")
		var rows []rangeRow
		if out.code != 0 || json.Unmarshal([]byte(out.stdout), &rows) != nil {
			return false, out.String()
		}
		for _, r := range rows {
			if r.LeaderNodeID == ids[2] || r.LeaderNodeID == "" {
				return false, out.stdout
			}
		}
		return true, ""
	})
	require.Positive(t, countLogLines(t, skewed.logPath, "clock offset exceeds --max-clock-offset"))

	// Within the bound the node serves again.
	skewed.stopProcess()
	skewed.args = append(base, "--unsafe-clock-skew", "200ms")
	skewed.start(t)
	skewed.waitReady(t)
	require.Equal(t, "k0\nv\n", c.mustCtlOn(2, "get", "k0"))
	require.Equal(t, "OK\n", c.mustCtlOn(2, "put", "k2", "v"))
}
