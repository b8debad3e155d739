package rangeraft

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/hlc"
	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/txnproto"
)

// startSingleStore bootstraps and runs a one-node store serving its raft
// transport on a loopback port. It returns the store and a client of the
// transport.
func startSingleStore(t *testing.T) (*Store, txnproto.RaftTransportClient) {
	t.Helper()
	eng := openEngine(t)
	ident := &txnproto.NodeIdent{ClusterId: 0xc1, NodeId: 0xa1, Name: "a",
		InitialMembers: []*txnproto.Member{{Id: 0xa1, Name: "a", PeerUrls: []string{"http://127.0.0.1:1"}}}}
	require.NoError(t, Bootstrap(eng, ident))
	s := loadSingleStore(t, eng)
	s.Start()
	t.Cleanup(s.Stop)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	s.Transport().Register(srv)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return s, txnproto.NewRaftTransportClient(conn)
}

// loadSingleStore loads the one-node store of startSingleStore from eng
// (at start, or again after a stop), not started.
func loadSingleStore(t *testing.T, eng *kvstore.Engine) *Store {
	t.Helper()
	s, err := NewStore(StoreConfig{
		NodeID: 0xa1, ClusterID: 0xc1, Engine: eng, Clock: hlc.New(0), Logger: zap.NewNop(),
		TickInterval: 10 * time.Millisecond, ElectionTicks: 10,
		Resolve: func(uint64) (string, error) { return "127.0.0.1:1", nil },
	})
	require.NoError(t, err)
	return s
}

// put proposes a Put on the user range, waiting for a leader.
func put(t *testing.T, s *Store, key string) ApplyResult {
	t.Helper()
	data, err := proto.Marshal(&pb.PutRequest{Key: []byte(key), Value: []byte("v")})
	require.NoError(t, err)
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		res, err := s.Replica(FirstUserRangeID).Propose(ctx, &txnproto.Command{Put: data})
		cancel()
		if err == nil {
			return res
		}
		var nl *NotLeaderError
		require.ErrorAs(t, err, &nl)
		require.True(t, time.Now().Before(deadline), "no leader in time")
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTransportRejectsHostileInput sends a peer stream from another
// cluster, a message for another node, and undecodable raft messages; the
// store must refuse or drop them and keep serving writes.
func TestTransportRejectsHostileInput(t *testing.T) {
	s, client := startSingleStore(t)
	before := put(t, s, "a")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// Another cluster's messages: the stream fails with FailedPrecondition.
	stream, err := client.RaftBatches(ctx)
	require.NoError(t, err)
	_ = stream.Send(&txnproto.RaftMessageBatch{ClusterId: 0xbad, ToNode: 0xa1})
	_, err = stream.CloseAndRecv()
	require.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "cluster ID mismatch")

	// A batch addressed to another node.
	stream, err = client.RaftBatches(ctx)
	require.NoError(t, err)
	_ = stream.Send(&txnproto.RaftMessageBatch{ClusterId: 0xc1, ToNode: 0xb2})
	_, err = stream.CloseAndRecv()
	require.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)

	// Garbage raft messages and unknown ranges are dropped.
	stream, err = client.RaftBatches(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&txnproto.RaftMessageBatch{ClusterId: 0xc1, ToNode: 0xa1, Messages: []*txnproto.RaftMessage{
		{RangeId: FirstUserRangeID, Message: []byte{0xff, 0x01, 0x02}},
		{RangeId: 999, Message: nil},
	}}))
	_, err = stream.CloseAndRecv()
	require.NoError(t, err)

	// A snapshot stream without a header is refused.
	snap, err := client.Snapshot(ctx)
	require.NoError(t, err)
	require.NoError(t, snap.Send(&txnproto.SnapshotChunk{ClusterId: 0xc1, ToNode: 0xa1, Final: true}))
	_, err = snap.CloseAndRecv()
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)

	after := put(t, s, "b")
	require.Greater(t, after.Revision, before.Revision, "the store keeps serving with increasing revisions")
}
