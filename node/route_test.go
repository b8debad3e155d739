package node

import (
	"testing"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/rangekv/rangekv/placement"
)

// TestRouteHintOnForwardedRequests checks the header range-aware clients
// rely on: a follower that forwards a put or a linearizable read names
// the range and its leader; the leader itself sets no hint.
func TestRouteHintOnForwardedRequests(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	follower := c.followers(lead)[0]
	r, err := lead.node().userRange([]byte("k"))
	require.NoError(t, err)

	call := func(m *testMember) metadata.MD {
		kv := pb.NewKVClient(m.client.ActiveConnection())
		var md metadata.MD
		_, err := kv.Put(ctxT(t, testWait), &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}, grpc.Header(&md))
		require.NoError(t, err)
		var rmd metadata.MD
		_, err = kv.Range(ctxT(t, testWait), &pb.RangeRequest{Key: []byte("k")}, grpc.Header(&rmd))
		require.NoError(t, err)
		require.Equal(t, md.Get(placement.RouteHintHeader), rmd.Get(placement.RouteHintHeader))
		return md
	}
	require.Empty(t, call(lead).Get(placement.RouteHintHeader))
	hints := call(follower).Get(placement.RouteHintHeader)
	require.Len(t, hints, 1)
	h, err := placement.ParseRouteHint(hints[0])
	require.NoError(t, err)
	require.Equal(t, placement.RouteHint{RangeID: r.RangeID, Generation: r.Descriptor().Generation, LeaderNode: lead.id()}, h)
}
