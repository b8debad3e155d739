package node

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rangekv/rangekv/kvstore"
)

// TestLeaderBalance splits the keyspace into six ranges, which leaves
// every one led by the same node, and waits until the balancer has spread
// them two per node; writes keep succeeding meanwhile.
func TestLeaderBalance(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	for _, k := range []string{"b", "d", "f", "h", "j"} {
		_, _, err := lead.node().splitAt(ctxT(t, testWait), []byte(k))
		require.NoError(t, err)
	}
	counts := func() map[uint64]int {
		out := map[uint64]int{}
		for _, r := range lead.node().store.Replicas() {
			if r.Keyspace() == kvstore.UserKeys && r.Initialized() {
				out[r.Status().LeaderNode]++
			}
		}
		return out
	}
	deadline := time.Now().Add(testWait)
	for i := 0; ; i++ {
		got := counts()
		balanced := len(got) == 3
		for _, n := range got {
			balanced = balanced && n == 2
		}
		if balanced {
			break
		}
		require.False(t, time.Now().After(deadline), "leaders not balanced: %v", got)
		_, err := c.members[i%3].client.Put(ctxT(t, testWait), fmt.Sprintf("%c%d", 'a'+i%12, i), "v")
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond)
	}
}
