package node

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/placement"
	"github.com/rangekv/rangekv/rangeraft"
	"github.com/rangekv/rangekv/txnproto"
)

// directoryRecords reads every range record from the meta range through n.
func directoryRecords(t testing.TB, n *Node) map[string]*txnproto.RangeDescriptor {
	t.Helper()
	prefix := rangeraft.MetaRangeKey(nil)
	resp, err := n.metaRead(ctxT(t, testWait), &pb.RangeRequest{Key: prefix, RangeEnd: prefixEnd(prefix)})
	require.NoError(t, err)
	out := map[string]*txnproto.RangeDescriptor{}
	for _, kv := range resp.Kvs {
		d := &txnproto.RangeDescriptor{}
		require.NoError(t, proto.Unmarshal(kv.Value, d))
		out[string(kv.Key)] = d
	}
	return out
}

// directoryProblem compares the meta range's records with n's user
// replicas: every range's record must hold its current descriptor.
func directoryProblem(t testing.TB, n *Node) string {
	recs := directoryRecords(t, n)
	for _, r := range n.store.Replicas() {
		if r.Keyspace() != kvstore.UserKeys || !r.Initialized() {
			continue
		}
		d := r.Descriptor()
		rec := recs[string(rangeraft.MetaRangeKey(d.EndKey))]
		if rec == nil || !proto.Equal(rec, d) {
			return fmt.Sprintf("range %d generation %d: record %v", d.RangeId, d.Generation, rec)
		}
	}
	return ""
}

// TestDirectoryFollowsSplits splits a range several times and checks that
// the meta range records every range's current descriptor; then it puts
// a stale record back (as a node dying between a split and its record
// would leave it) and checks that the range's leader repairs it after a
// restart, and that a stale write never replaces a newer record.
func TestDirectoryFollowsSplits(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	n := lead.node()
	for _, k := range []string{"m", "f", "t", "c"} {
		_, _, err := n.splitAt(ctxT(t, testWait), []byte(k))
		require.NoError(t, err)
	}
	require.Empty(t, directoryProblem(t, n))

	// The range [t, end) took over the record of the range it split from.
	right, err := n.userRange([]byte("z"))
	require.NoError(t, err)
	key := rangeraft.MetaRangeKey(right.Descriptor().EndKey)
	left, err := n.userRange([]byte("a"))
	require.NoError(t, err)
	stale := proto.Clone(right.Descriptor()).(*txnproto.RangeDescriptor)
	stale.RangeId, stale.Generation, stale.StartKey = left.RangeID, 1, left.Descriptor().StartKey
	require.True(t, placement.Supersedes(right.Descriptor(), stale))

	// writeDirectory refuses to go backward.
	require.NoError(t, n.writeDirectory(ctxT(t, testWait), stale))
	require.Empty(t, directoryProblem(t, n))

	// Force the stale record in, then restart every node: the leader of
	// the range finds and rewrites it.
	data, err := proto.Marshal(stale)
	require.NoError(t, err)
	_, err = n.metaTxn(ctxT(t, testWait), &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{
		RequestPut: &pb.PutRequest{Key: key, Value: data}}}}})
	require.NoError(t, err)
	require.NotEmpty(t, directoryProblem(t, n))
	c.stopAll()
	for _, m := range c.members {
		c.restart(m)
	}
	c.waitReady()
	deadline := time.Now().Add(testWait)
	for {
		p := directoryProblem(t, c.members[0].node())
		if p == "" {
			break
		}
		require.False(t, time.Now().After(deadline), "directory not repaired: %s", p)
		time.Sleep(50 * time.Millisecond)
	}
}
