package client

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// txnRecorder is a KVClient that keeps the last Txn request.
type txnRecorder struct {
	pb.KVClient
	last *pb.TxnRequest
}

func (r *txnRecorder) Txn(_ context.Context, in *pb.TxnRequest, _ ...grpc.CallOption) (*pb.TxnResponse, error) {
	r.last = in
	return &pb.TxnResponse{}, nil
}

// txnOf returns the TxnRequest clientv3 sends for a txn.
func txnOf(cmps []clientv3.Cmp, thenOps, elseOps []clientv3.Op) *pb.TxnRequest {
	rec := &txnRecorder{}
	if _, err := clientv3.NewKVFromKVClient(rec, nil).Txn(context.Background()).If(cmps...).Then(thenOps...).Else(elseOps...).Commit(); err != nil {
		panic(err)
	}
	return rec.last
}

func TestRequestSpans(t *testing.T) {
	render := func(r request) []string {
		out := []string{}
		for _, s := range r.spans {
			out = append(out, string(s.key)+"|"+string(s.end))
		}
		return out
	}

	r := rangeRequest(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("b"), Serializable: true})
	require.Equal(t, []string{"a|b"}, render(r))
	require.True(t, r.read)
	require.True(t, r.local)

	r = putRequest(&pb.PutRequest{Key: []byte("k")})
	require.Equal(t, []string{"k|"}, render(r))
	require.False(t, r.read)

	r = deleteRequest(&pb.DeleteRangeRequest{Key: []byte("k"), RangeEnd: []byte{0}})
	require.Equal(t, []string{"k|\x00"}, render(r))

	nested := clientv3.OpTxn(
		[]clientv3.Cmp{clientv3.Compare(clientv3.Value("n1"), "=", "x")},
		[]clientv3.Op{clientv3.OpDelete("n2", clientv3.WithPrefix())},
		[]clientv3.Op{clientv3.OpGet("n3")})
	txn := txnOf(
		[]clientv3.Cmp{clientv3.Compare(clientv3.Version("c"), ">", 0).WithRange("d")},
		[]clientv3.Op{clientv3.OpPut("p", "v"), nested},
		[]clientv3.Op{clientv3.OpGet("g", clientv3.WithFromKey())})
	r = txnRequest(txn)
	require.Equal(t, []string{"c|d", "p|", "n1|", "n2|n3", "n3|", "g|\x00"}, render(r))
	require.False(t, r.read)
	require.False(t, r.local)

	ro := txnOf(nil, []clientv3.Op{clientv3.OpGet("a", clientv3.WithSerializable())},
		[]clientv3.Op{clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpGet("b", clientv3.WithSerializable())}, nil)})
	r = txnRequest(ro)
	require.True(t, r.read)
	require.True(t, r.local)
	ro = txnOf(nil, []clientv3.Op{clientv3.OpGet("a", clientv3.WithSerializable()), clientv3.OpGet("b")}, nil)
	r = txnRequest(ro)
	require.True(t, r.read)
	require.False(t, r.local, "one linearizable read")

	require.Empty(t, txnRequest(&pb.TxnRequest{}).spans)
}

func TestDialTarget(t *testing.T) {
	require.Equal(t, "127.0.0.1:2379", dialTarget("http://127.0.0.1:2379"))
	require.Equal(t, "node1:2379", dialTarget("https://node1:2379"))
	require.Equal(t, "127.0.0.1:2379", dialTarget("127.0.0.1:2379"))
	require.Equal(t, "unix:///tmp/rangekv.sock", dialTarget("unix:///tmp/rangekv.sock"))
}
