package rangeraft

import (
	"context"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// mdFromNode names the sending node (hex ID) on every peer RPC, so a peer
// can tell whose requests a partition injected with the rangeraftDropFrom
// failpoint must drop. Raft batches and snapshots carry it in their own
// headers.
const mdFromNode = "rangekv-from-node"

// fromNodeInterceptors stamp every RPC on a peer connection with the local
// node's ID (mdFromNode).
func (t *Transport) fromNodeInterceptors() []grpc.DialOption {
	id := strconv.FormatUint(t.s.cfg.NodeID, 16)
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, mdFromNode, id), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(metadata.AppendToOutgoingContext(ctx, mdFromNode, id), desc, cc, method, opts...)
		}),
	}
}

// PartitionInterceptors are the peer server's side of rangeraftDropFrom:
// an RPC from a node the failpoint names is blackholed, as a dropped
// packet would be. It is held until its deadline or until the partition
// lifts, then fails with Unavailable; it never reaches its handler.
// Disabled, the check costs a failpoint read.
func PartitionInterceptors() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := blackhole(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := blackhole(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
}

// blackhole waits out a partition from the RPC's sender, if any.
func blackhole(ctx context.Context) error {
	if dropList() == "" {
		return nil // the common case: no partition, no metadata to parse
	}
	from, ok := rpcFromNode(ctx)
	if !ok || !droppedFrom(from) {
		return nil
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for droppedFrom(from) {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-tick.C:
		}
	}
	return status.Error(codes.Unavailable, "dropped by a partition (rangeraftDropFrom)")
}

// rpcFromNode returns the sender an incoming peer RPC names (mdFromNode).
func rpcFromNode(ctx context.Context) (uint64, bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(mdFromNode)
	if len(v) != 1 {
		return 0, false
	}
	id, err := strconv.ParseUint(v[0], 16, 64)
	return id, err == nil
}
