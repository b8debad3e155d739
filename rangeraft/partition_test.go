package rangeraft

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	gofail "go.etcd.io/gofail/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestBlackholeHoldsPartitionedRPCs checks the peer server's side of
// rangeraftDropFrom: an RPC from a named node is held until its deadline,
// or fails Unavailable once the partition lifts; others pass.
func TestBlackholeHoldsPartitionedRPCs(t *testing.T) {
	from := func(ctx context.Context, id string) context.Context {
		return metadata.NewIncomingContext(ctx, metadata.Pairs(mdFromNode, id))
	}
	require.NoError(t, blackhole(from(context.Background(), "2")), "no partition")

	require.NoError(t, gofail.Enable("rangeraftDropFrom", `return("2,a")`))
	defer func() { _ = gofail.Disable("rangeraftDropFrom") }()
	require.NoError(t, blackhole(from(context.Background(), "3")), "node 3 is not partitioned")
	require.NoError(t, blackhole(context.Background()), "an RPC naming no sender passes")

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := blackhole(from(ctx, "a"))
	require.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)

	done := make(chan error, 1)
	go func() { done <- blackhole(from(context.Background(), "2")) }()
	select {
	case err := <-done:
		t.Fatalf("a partitioned RPC returned while the partition held: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	require.NoError(t, gofail.Disable("rangeraftDropFrom"))
	select {
	case err := <-done:
		require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the RPC stayed held after the partition lifted")
	}
}
