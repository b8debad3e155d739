package node

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/rangeraft"
	"github.com/rangekv/rangekv/txnproto"
)

// rangesServer implements the Ranges service (txnproto/rangekv.proto): on
// the client URLs it lists ranges and nodes for rangekvctl and routing
// clients and splits ranges by hand; on the peer URLs (peer=true) it runs
// forwarded splits and closes on the local leader.
type rangesServer struct {
	txnproto.UnimplementedRangesServer
	n    *Node
	peer bool
}

// rangeInfo describes a local replica's range in user keys.
func (n *Node) rangeInfo(r *rangeraft.Replica) *txnproto.RangeInfo {
	d := r.Descriptor()
	st := r.Status()
	info := &txnproto.RangeInfo{
		RangeId:      d.RangeId,
		Replicas:     d.Replicas,
		LeaderNodeId: st.LeaderNode,
		Bytes:        st.Stats.TotalBytes,
		Keys:         st.Stats.LiveKeys,
		Qps:          r.QPS(),
		Generation:   d.Generation,
	}
	info.StartKey, _ = kvstore.UserKeyFromSpan(d.StartKey)
	if !bytes.Equal(d.EndKey, kvstore.UserSpanEnd) {
		info.EndKey, _ = kvstore.UserKeyFromSpan(d.EndKey)
	}
	return info
}

// ListRanges lists the user ranges in key order, with this node's view of
// their leaders and statistics.
func (s *rangesServer) ListRanges(ctx context.Context, _ *txnproto.ListRangesRequest) (*txnproto.ListRangesResponse, error) {
	rs, err := s.n.spanRanges(kvstore.UserSpanStart, kvstore.UserSpanEnd)
	if err != nil {
		return nil, err
	}
	resp := &txnproto.ListRangesResponse{}
	for _, r := range rs {
		resp.Ranges = append(resp.Ranges, s.n.rangeInfo(r))
	}
	return resp, nil
}

// RangeForKey returns the range holding key.
func (s *rangesServer) RangeForKey(ctx context.Context, req *txnproto.RangeForKeyRequest) (*txnproto.RangeInfo, error) {
	r, err := s.n.userRange(req.Key)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return s.n.rangeInfo(r), nil
}

// ListNodes lists the members with the replicas and leaderships this node
// knows of.
func (s *rangesServer) ListNodes(ctx context.Context, _ *txnproto.ListNodesRequest) (*txnproto.ListNodesResponse, error) {
	ms, err := s.n.members()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	replicas, leaders := map[uint64]uint64{}, map[uint64]uint64{}
	for _, r := range s.n.store.Replicas() {
		if !r.Initialized() {
			continue
		}
		for _, rd := range r.Descriptor().Replicas {
			replicas[rd.NodeId]++
		}
		leaders[r.Status().LeaderNode]++
	}
	resp := &txnproto.ListNodesResponse{}
	for _, m := range ms {
		resp.Nodes = append(resp.Nodes, &txnproto.NodeInfo{Member: m, Replicas: replicas[m.Id], Leaders: leaders[m.Id]})
	}
	return resp, nil
}

// SplitRange splits the range holding key at key (InvalidArgument for a
// missing key; FailedPrecondition when key already starts a range).
func (s *rangesServer) SplitRange(ctx context.Context, req *txnproto.SplitRangeRequest) (*txnproto.SplitRangeResponse, error) {
	if len(req.Key) == 0 {
		return nil, status.Error(codes.InvalidArgument, "rangekv: split key is not provided")
	}
	if s.peer {
		return s.splitForwarded(ctx, req)
	}
	left, right, err := s.n.splitAt(ctx, req.Key)
	if err != nil {
		return nil, err
	}
	return &txnproto.SplitRangeResponse{Left: s.n.rangeInfo(left), Right: s.n.rangeInfo(right)}, nil
}

// splitAt splits the local range holding key so that a new range starts at
// key. The new range ID comes from the meta range, the split goes through
// the range's raft log on its leader (forwarded when this node does not
// lead), and the meta range's descriptors are updated after it applied
// (see writeDirectory and directoryRepair).
// It returns this node's replicas of both sides.
func (n *Node) splitAt(ctx context.Context, key []byte) (left, right *rangeraft.Replica, err error) {
	ctx, cancel := context.WithTimeout(ctx, n.reqTimeout)
	defer cancel()
	splitKey := kvstore.UserSpanKey(key)
	route := func() (*rangeraft.Replica, error) { return n.userRange(key) }
	r, err := route()
	if err != nil {
		return nil, nil, err
	}
	if start, _ := r.Span(); bytes.Equal(start, splitKey) {
		return nil, nil, status.Errorf(codes.FailedPrecondition, "rangekv: %q is already the start of range %d", key, r.RangeID)
	}
	newID, err := n.allocRangeID(ctx)
	if err != nil {
		return nil, nil, err
	}
	kv := &kvServer{n: n}
	_, err = onLeader(ctx, kv, route, false, func(ctx context.Context, r *rangeraft.Replica) (*txnproto.SplitRangeResponse, error) {
		return splitLocal(ctx, r, splitKey, newID)
	}, func(ctx context.Context, cc grpc.ClientConnInterface) (*txnproto.SplitRangeResponse, error) {
		return txnproto.NewRangesClient(cc).SplitRange(withForwardedSplitID(ctx, newID), &txnproto.SplitRangeRequest{Key: key})
	})
	if err != nil {
		return nil, nil, err
	}
	// Wait for this node's replica to apply the split (it has when the
	// split ran here; a forwarded one applies here shortly after).
	for {
		right = n.store.Replica(newID)
		if right != nil && right.Initialized() {
			break
		}
		select {
		case <-ctx.Done():
			return nil, nil, status.FromContextError(ctx.Err()).Err()
		case <-n.stopc:
			return nil, nil, status.Error(codes.Unavailable, "rangekv: node is stopping")
		case <-time.After(2 * time.Millisecond):
		}
	}
	left = n.store.Replica(r.RangeID)
	if err := n.writeDirectory(ctx, left.Descriptor(), right.Descriptor()); err != nil {
		// The leaders' directory repair records them later.
		n.log.Warn("recording split descriptors in the meta range", zap.Error(err))
	}
	n.log.Info("split range", zap.Uint64("range-id", left.RangeID),
		zap.Uint64("right-range-id", right.RangeID), zap.String("split-key", strconv.Quote(string(key))))
	return left, right, nil
}

// splitLocal proposes a split on the local leader, mapping its errors.
func splitLocal(ctx context.Context, r *rangeraft.Replica, splitKey []byte, newID uint64) (*txnproto.SplitRangeResponse, error) {
	_, _, err := r.ProposeSplit(ctx, splitKey, newID)
	switch {
	case errors.Is(err, rangeraft.ErrBadSplitKey):
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, rangeraft.ErrDescriptorChanged), errors.Is(err, rangeraft.ErrSplitThroughIntent):
		return nil, errStaleRange
	case err != nil:
		return nil, err
	}
	return &txnproto.SplitRangeResponse{}, nil
}

// splitForwarded runs a split another node forwarded, on the named local
// range, with the range ID that node allocated.
func (s *rangesServer) splitForwarded(ctx context.Context, req *txnproto.SplitRangeRequest) (*txnproto.SplitRangeResponse, error) {
	newID := forwardedSplitID(ctx)
	if newID == 0 {
		return nil, status.Error(codes.InvalidArgument, "rangekv: forwarded split without a range id")
	}
	kv := &kvServer{n: s.n, peer: true}
	return onLeader(ctx, kv, kv.route(ctx, nil), false, func(ctx context.Context, r *rangeraft.Replica) (*txnproto.SplitRangeResponse, error) {
		return splitLocal(ctx, r, kvstore.UserSpanKey(req.Key), newID)
	}, nil)
}

// CloseRange runs on the leader of a forwarded range: see
// closeLocal.
func (s *rangesServer) CloseRange(ctx context.Context, req *txnproto.CloseRangeRequest) (*txnproto.CloseRangeResponse, error) {
	// A peer with a fast clock must not close ranges in the future: every
	// later write would be pushed past it.
	if req.Revision > s.n.maxIssuedRevision() {
		return nil, rpctypes.ErrGRPCFutureRev
	}
	// The revision comes from the asking node's clock round: this node's
	// clock takes it, so the side channel can close there.
	_ = s.n.clock.Update(req.Revision)
	r := s.n.store.Replica(req.RangeId)
	if r == nil {
		return nil, status.Errorf(codes.Unavailable, "%s: no replica of range %d", notLeaderPrefix, req.RangeId)
	}
	resp, err := closeLocal(ctx, r, req.Revision)
	var nl *rangeraft.NotLeaderError
	if errors.As(err, &nl) {
		return nil, status.Errorf(codes.Unavailable, "%s of range %d", notLeaderPrefix, req.RangeId)
	}
	return resp, translateErr(ctx, err)
}

// metaRangeIDKey holds the last range ID handed out.
var metaRangeIDKey = []byte("range-id-last")

// allocRangeID hands out a range ID never used before, with a
// compare-and-swap on a counter in the meta range.
func (n *Node) allocRangeID(ctx context.Context) (uint64, error) {
	for {
		cur, err := n.metaRead(ctx, &pb.RangeRequest{Key: metaRangeIDKey})
		if err != nil {
			return 0, err
		}
		last, modRev := uint64(rangeraft.FirstUserRangeID), int64(0)
		if len(cur.Kvs) == 1 {
			if last, err = strconv.ParseUint(string(cur.Kvs[0].Value), 10, 64); err != nil {
				return 0, status.Errorf(codes.Internal, "rangekv: corrupt range ID counter: %v", err)
			}
			modRev = cur.Kvs[0].ModRevision
		}
		next := last + 1
		txn := &pb.TxnRequest{
			Compare: []*pb.Compare{{Key: metaRangeIDKey, Target: pb.Compare_MOD, Result: pb.Compare_EQUAL,
				TargetUnion: &pb.Compare_ModRevision{ModRevision: modRev}}},
			Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{
				Key: metaRangeIDKey, Value: []byte(strconv.FormatUint(next, 10))}}}},
		}
		resp, err := n.metaTxn(ctx, txn)
		if err != nil {
			return 0, err
		}
		if resp.Succeeded {
			return next, nil
		}
	}
}

// metaTxn runs a write txn on the meta range's leader.
func (n *Node) metaTxn(ctx context.Context, txn *pb.TxnRequest) (*pb.TxnResponse, error) {
	s := &kvServer{n: n}
	meta := func() (*rangeraft.Replica, error) { return n.metaRange(), nil }
	data, err := proto.Marshal(txn)
	if err != nil {
		return nil, err
	}
	return onLeader(ctx, s, meta, false, func(ctx context.Context, r *rangeraft.Replica) (*pb.TxnResponse, error) {
		res, err := r.Propose(ctx, &txnproto.Command{Txn: data})
		if err != nil {
			return nil, err
		}
		resp := res.Response.(*pb.TxnResponse)
		resp.Header = n.header(res.Revision, res.Term)
		return resp, nil
	}, func(ctx context.Context, cc grpc.ClientConnInterface) (*pb.TxnResponse, error) {
		return pb.NewKVClient(cc).Txn(ctx, txn)
	})
}

// MoveLeader transfers a range's leadership to the target node. On the
// client URLs the range is the one holding req.Key and the call runs on
// its leader (forwarded when another node leads); on the peer URLs it
// runs on the named local range.
func (s *rangesServer) MoveLeader(ctx context.Context, req *txnproto.MoveLeaderRequest) (*txnproto.MoveLeaderResponse, error) {
	if req.TargetNode == 0 {
		return nil, status.Error(codes.InvalidArgument, "rangekv: target node is not provided")
	}
	kv := &kvServer{n: s.n, peer: s.peer}
	var route func() (*rangeraft.Replica, error)
	switch {
	case s.peer:
		route = func() (*rangeraft.Replica, error) {
			if r := s.n.store.Replica(req.RangeId); r != nil {
				return r, nil
			}
			return nil, status.Errorf(codes.Unavailable, "%s: no replica of range %d", notLeaderPrefix, req.RangeId)
		}
	case len(req.Key) == 0:
		return nil, status.Error(codes.InvalidArgument, "rangekv: key is not provided")
	default:
		route = func() (*rangeraft.Replica, error) { return s.n.userRange(req.Key) }
	}
	var rangeID uint64
	_, err := onLeader(ctx, kv, route, true, func(ctx context.Context, r *rangeraft.Replica) (*txnproto.MoveLeaderResponse, error) {
		rangeID = r.RangeID
		err := r.MoveLeader(ctx, req.TargetNode)
		if errors.Is(err, rangeraft.ErrNotVoterNode) {
			return nil, status.Errorf(codes.FailedPrecondition, "rangekv: node %x holds no voter of range %d", req.TargetNode, r.RangeID)
		}
		return &txnproto.MoveLeaderResponse{}, err
	}, func(ctx context.Context, cc grpc.ClientConnInterface) (*txnproto.MoveLeaderResponse, error) {
		r, err := route()
		if err != nil {
			return nil, err
		}
		rangeID = r.RangeID
		return txnproto.NewRangesClient(cc).MoveLeader(ctx, &txnproto.MoveLeaderRequest{RangeId: r.RangeID, TargetNode: req.TargetNode})
	})
	if err != nil {
		return nil, err
	}
	// Answer with this node's view once it sees the new leader.
	r := s.n.store.Replica(rangeID)
	for r != nil && r.Status().LeaderNode != req.TargetNode {
		select {
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	if r == nil {
		return &txnproto.MoveLeaderResponse{}, nil
	}
	return &txnproto.MoveLeaderResponse{Range: s.n.rangeInfo(r)}, nil
}
