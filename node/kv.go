package node

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/hlc"
	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/placement"
	"github.com/rangekv/rangekv/rangeraft"
	"github.com/rangekv/rangekv/txnproto"
)

// Forwarding metadata. A node that does not lead a request's range sends
// the etcd request unchanged to the leader's peer URL with these keys; the
// leader executes it on exactly that range and never forwards again.
const (
	mdForwardedRange = "rangekv-forwarded-range"
	// notLeaderPrefix starts the message of the Unavailable status a peer
	// returns when it no longer leads the range; the forwarder retries.
	notLeaderPrefix = "rangekv: not leader"
	// staleRangePrefix starts the message of the Unavailable status a peer
	// returns when the range it was asked to use no longer holds the
	// request's keys (a split raced the request); the forwarder re-routes.
	staleRangePrefix = "rangekv: stale range"
)

// errStaleRange: a request reached a replica whose span no longer holds
// its keys. Retried after routing again; never returned to clients.
var errStaleRange = status.Error(codes.Unavailable, staleRangePrefix+": the keys moved to another range; retry")

// kvServer implements etcd's KV service. On the client URLs it routes each
// request to its range's leader; on the peer URLs (peer=true) it serves
// forwarded requests on the named local range only.
type kvServer struct {
	pb.UnimplementedKVServer
	n    *Node
	peer bool
	// routeHints: this is the client-facing server, which tells clients
	// when it forwarded their request (placement.RouteHintHeader).
	// Internal callers (meta reads, closes, splits) leave it unset, so a
	// hint always names the range of the client's own request.
	routeHints bool
}

// header builds an etcd response header for this node.
func (n *Node) header(rev int64, term uint64) *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: n.ident.ClusterId, MemberId: n.id, Revision: rev, RaftTerm: term}
}

// route returns the resolver of the replica a request on [key, end) runs
// on: the forwarded range on the peer server, else the local range holding
// key (resolved afresh on every call, so a retry after a split finds the
// new range). Requests spanning ranges are handled before this.
func (s *kvServer) route(ctx context.Context, key []byte) func() (*rangeraft.Replica, error) {
	return func() (*rangeraft.Replica, error) {
		if s.peer {
			md, _ := metadata.FromIncomingContext(ctx)
			v := md.Get(mdForwardedRange)
			if len(v) != 1 {
				return nil, status.Error(codes.InvalidArgument, "rangekv: peer KV request without range")
			}
			id, err := strconv.ParseUint(v[0], 10, 64)
			if err != nil {
				return nil, status.Error(codes.InvalidArgument, "rangekv: malformed range id")
			}
			r := s.n.store.Replica(id)
			if r == nil {
				return nil, status.Errorf(codes.Unavailable, "%s: no replica of range %d", notLeaderPrefix, id)
			}
			return r, nil
		}
		return s.n.userRange(key)
	}
}

// onLeader runs local on the replica resolve returns when this node leads
// its range, and otherwise forwards with remote to the leader, retrying
// while leadership is in flux or a split moved the keys (the range is
// resolved again) until ctx ends. Only errors that prove the request did
// not execute are retried, so a write is never applied twice by a retry.
func onLeader[T proto.Message](ctx context.Context, s *kvServer, resolve func() (*rangeraft.Replica, error), idempotent bool,
	local func(context.Context, *rangeraft.Replica) (T, error),
	remote func(context.Context, grpc.ClientConnInterface) (T, error)) (T, error) {
	var zero T
	ctx, cancel := context.WithTimeout(ctx, s.n.reqTimeout)
	defer cancel()
	backoff := time.Millisecond
	for {
		r, err := resolve()
		var res T
		if err == nil {
			res, err = local(ctx, r)
		} else if !errors.Is(err, errStaleRange) {
			return zero, err
		}
		var nl *rangeraft.NotLeaderError
		stale := errors.Is(err, kvstore.ErrKeyOutsideSpan) || errors.Is(err, errStaleRange)
		switch {
		case stale && s.peer:
			return zero, status.Errorf(codes.Unavailable, "%s: the range no longer holds the keys", staleRangePrefix)
		case stale:
			// A split moved the keys: resolve again.
		case !errors.As(err, &nl):
			return res, translateErr(ctx, err)
		case s.peer:
			return zero, status.Errorf(codes.Unavailable, "%s of range %d", notLeaderPrefix, r.RangeID)
		case nl.LeaderNode != 0 && nl.LeaderNode != s.n.id:
			res, err = forward(ctx, s.n, r.RangeID, nl.LeaderNode, remote)
			if err == nil {
				s.setRouteHint(ctx, r, nl.LeaderNode)
				waitLocalApply(ctx, r, res)
				return res, nil
			}
			if !retryableForward(err) && !(idempotent && transportFailure(err)) {
				return zero, forwardErr(ctx, err)
			}
		}
		select {
		case <-ctx.Done():
			if requiresLeader(ctx) || nl == nil || nl.LeaderNode == 0 {
				return zero, rpctypes.ErrGRPCNoLeader
			}
			return zero, rpctypes.ErrGRPCTimeout
		case <-time.After(backoff):
			backoff = min(backoff*2, 100*time.Millisecond)
		}
	}
}

// forward sends a request to the leader node's peer KV service, naming
// the range it must run on. The response header's member ID is this
// node's, as etcd reports the member the client talked to.
func forward[T proto.Message](ctx context.Context, n *Node, rangeID, node uint64,
	call func(context.Context, grpc.ClientConnInterface) (T, error)) (T, error) {
	var zero T
	conn, err := n.store.Transport().Conn(node)
	if err != nil {
		return zero, status.Errorf(codes.Unavailable, "%s: cannot reach node %x: %v", notLeaderPrefix, node, err)
	}
	fctx := metadata.AppendToOutgoingContext(ctx, mdForwardedRange, strconv.FormatUint(rangeID, 10))
	var md metadata.MD
	res, err := call(fctx, headerConn{ClientConnInterface: conn, md: &md})
	if err != nil {
		return zero, err
	}
	if h, ok := any(res).(interface{ GetHeader() *pb.ResponseHeader }); ok && h.GetHeader() != nil {
		h.GetHeader().MemberId = n.id
	}
	installForwardedClose(n, rangeID, md)
	return res, nil
}

// headerConn captures the response header metadata of unary calls.
type headerConn struct {
	grpc.ClientConnInterface
	md *metadata.MD
}

func (c headerConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.ClientConnInterface.Invoke(ctx, method, args, reply, append(opts, grpc.Header(c.md))...)
}

// mdClosed, a response header of forwarded reads, carries the leader's
// closed timestamp after the read as "revision/index" (a side-channel
// close: rangeraft.Replica.InstallClosed). The forwarding node installs
// it, so its replica can serve the read's revision at once instead of at
// the next side-channel round.
const mdClosed = "rangekv-closed"

// setForwardedClose sends r's closed timestamp back with a forwarded read.
func setForwardedClose(ctx context.Context, r *rangeraft.Replica) {
	rev, index := r.ClosedPromise()
	_ = grpc.SetHeader(ctx, metadata.Pairs(mdClosed, strconv.FormatInt(rev, 10)+"/"+strconv.FormatUint(index, 10)))
}

// installForwardedClose installs the close a leader sent with a forwarded
// read (mdClosed) on the local replica of the range.
func installForwardedClose(n *Node, rangeID uint64, md metadata.MD) {
	v := md.Get(mdClosed)
	if len(v) != 1 {
		return
	}
	revStr, indexStr, ok := strings.Cut(v[0], "/")
	rev, err1 := strconv.ParseInt(revStr, 10, 64)
	index, err2 := strconv.ParseUint(indexStr, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return
	}
	n.installClose(rangeID, rev, index)
}

// installClose installs on the local replica of a range a close its
// leader made (readable at rev once applied through index), without
// waiting for the side channel to bring it. The clock first: a node's
// readable revisions never pass its clock (rangeraft.Store.WaitClockQuorum
// counts this node at its clock).
func (n *Node) installClose(rangeID uint64, rev int64, index uint64) {
	_ = n.clock.Update(rev)
	if r := n.store.Replica(rangeID); r != nil {
		r.InstallClosed(rev, index)
	}
}

// prepareRead readies r to serve a linearizable read
// (docs/revisions.md, "Real-time order across ranges"). On the leader,
// raft's ReadIndex confirms leadership and waits for the commit index to
// apply (raft thesis §6.4), while a clock round brings this node's clock
// past every revision acknowledged before the read arrived; the range is
// then closed at the round's reading, so the read's header revision is at
// least every such revision. On a follower, when follower is set, the
// leader does the same for a batch of reads (closeForRead) and the
// follower waits until it has applied as far ("Linearizable reads on a
// follower"); otherwise a follower returns *rangeraft.NotLeaderError. A
// requested revision rev above the reading is etcd's future revision
// unless the range is readable there. It returns the leader a follower
// asked (0 on the leader), for the route hint.
func (n *Node) prepareRead(ctx context.Context, r *rangeraft.Replica, rev int64, follower bool) (leader uint64, err error) {
	leaderErr := r.CheckLeader()
	var nl *rangeraft.NotLeaderError
	if leaderErr != nil && (!follower || !errors.As(leaderErr, &nl) || nl.LeaderNode == 0) {
		return 0, leaderErr // no round for a follower that cannot ask its leader
	}
	round := n.store.StartClockRound()
	if leaderErr == nil {
		if err := r.ReadIndex(ctx); err != nil {
			round.Cancel()
			return 0, err
		}
	}
	target, err := round.Wait(ctx)
	if err != nil {
		return 0, err
	}
	// Every revision acknowledged before the read arrived is at or below
	// target; a later one is a future revision, as in etcd, unless the
	// range is readable there already.
	if rev > target && rev > r.ReadableRevision() {
		return 0, rpctypes.ErrGRPCFutureRev
	}
	if leaderErr == nil {
		if rev > target {
			return 0, nil
		}
		return 0, r.CloseAt(ctx, target)
	}
	if err := n.closeForRead(ctx, r, target); err != nil {
		if rpctypes.ErrorDesc(err) == rpctypes.ErrorDesc(rpctypes.ErrGRPCFutureRev) {
			// The leader will not close at this node's reading: a clock
			// it heard runs further ahead of the leader's than
			// --max-clock-offset. The leader serves the read itself.
			return 0, nl
		}
		return 0, err
	}
	return nl.LeaderNode, r.WaitReadable(ctx, target)
}

// retryableForward reports whether a forwarding error proves the request
// was not executed (the peer did not lead, or the connection was never
// made).
func retryableForward(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return false
	}
	msg := st.Message()
	return strings.HasPrefix(msg, notLeaderPrefix) || strings.HasPrefix(msg, staleRangePrefix) ||
		strings.Contains(msg, "while dialing") ||
		strings.Contains(msg, "connection refused")
}

// waitLocalApply waits, within ctx, until the local replica has applied
// through the revision of a forwarded response, so that a serializable
// read through this node right after sees at least as much: etcd answers a
// write, and a linearizable read, on the member that received it only once
// that member has applied that far. If ctx ends first the response is
// returned anyway (a write is already durable).
func waitLocalApply(ctx context.Context, r *rangeraft.Replica, res proto.Message) {
	h, ok := res.(interface{ GetHeader() *pb.ResponseHeader })
	if !ok || h.GetHeader() == nil {
		return
	}
	_ = r.WaitReadable(ctx, h.GetHeader().Revision)
}

// transportFailure reports whether err is gRPC's own failure (the
// connection broke) rather than an answer from the peer.
func transportFailure(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.Unavailable && !strings.HasPrefix(st.Message(), "etcdserver:")
}

// forwardErr maps a failed forward to the error etcd gives in the same
// situation. A write whose connection to the leader broke may or may not
// have applied: etcd reports that as a timeout due to leader failure.
func forwardErr(ctx context.Context, err error) error {
	if transportFailure(err) {
		return rpctypes.ErrGRPCTimeoutDueToLeaderFail
	}
	switch status.Code(err) {
	case codes.DeadlineExceeded:
		if ctx.Err() != nil {
			return rpctypes.ErrGRPCTimeout
		}
	case codes.Canceled:
		if ctx.Err() == nil {
			return rpctypes.ErrGRPCTimeoutDueToLeaderFail
		}
	}
	return err
}

// requiresLeader reports whether the client asked to fail fast without a
// leader (clientv3.WithRequireLeader sets metadata hasleader=true).
func requiresLeader(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(rpctypes.MetadataRequireLeaderKey)
	return len(v) > 0 && v[0] == rpctypes.MetadataHasLeader
}

// translateErr maps internal errors to etcd's gRPC errors.
func translateErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		if ctx.Err() != nil {
			return rpctypes.ErrGRPCTimeout
		}
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, context.Canceled.Error())
	case errors.Is(err, kvstore.ErrKeyOutsideSpan):
		return status.Errorf(codes.Unavailable, "%s: %v", notLeaderPrefix, err)
	}
	return status.Error(codes.Unknown, err.Error())
}

// checkSize enforces --max-request-bytes as etcd does for raft requests.
func (s *kvServer) checkSize(m proto.Message) error {
	if proto.Size(m) > s.n.cfg.MaxRequestBytes {
		return rpctypes.ErrGRPCRequestTooLarge
	}
	return nil
}

// propose replicates a client write on r's range after this node's
// clock round (docs/revisions.md, rule 2) and answers once a majority's
// clocks cover its revision (rule 1). On a follower the write goes to the
// range's leader inside the raft stream (rangeraft.Replica.ProposeRequest)
// and the answer is this replica's apply; on the peer server (a request
// another node forwarded by RPC) only the leader proposes.
func (s *kvServer) propose(ctx context.Context, r *rangeraft.Replica, key []byte, cmd *txnproto.Command) (rangeraft.ApplyResult, error) {
	var leader uint64 // the leader a follower hands the write to
	if err := r.CheckLeader(); err != nil {
		var nl *rangeraft.NotLeaderError
		if s.peer || !errors.As(err, &nl) || nl.LeaderNode == 0 {
			return rangeraft.ApplyResult{}, err
		}
		leader = nl.LeaderNode
	}
	// Whatever is proposed below is stamped after the round, on this node
	// or, through the raft batch carrying it, on the leader's.
	if _, err := s.n.store.ClockRound(ctx); err != nil {
		return rangeraft.ApplyResult{}, err
	}
	for {
		res, err := r.ProposeRequest(ctx, cmd, key, !s.peer)
		var conflict *rangeraft.IntentConflictError
		if errors.As(err, &conflict) {
			// Locked by a cross-range transaction: nothing was written.
			// Wait for its intent to resolve (its coordinator, or the
			// intent resolver past its expiry), then propose again.
			if err := r.WaitIntent(ctx, conflict.Txn.GetId()); err != nil {
				return res, err
			}
			continue
		}
		if err != nil {
			return res, err
		}
		if leader != 0 {
			s.setRouteHint(ctx, r, leader)
		}
		return res, s.n.store.WaitClockQuorum(ctx, res.Revision)
	}
}

// setRouteHint names r's leader to a routing client (placement.RouteHint)
// when the client asked for hints.
func (s *kvServer) setRouteHint(ctx context.Context, r *rangeraft.Replica, leader uint64) {
	if !s.routeHints {
		return
	}
	_, _, gen := r.SpanGeneration()
	_ = grpc.SetHeader(ctx, metadata.Pairs(placement.RouteHintHeader, placement.FormatRouteHint(placement.RouteHint{
		RangeID: r.RangeID, Generation: gen, LeaderNode: leader})))
}

// Range implements etcd's KV.Range. A range request over keys of several
// ranges reads every one of them at one revision (multiRange).
func (s *kvServer) Range(ctx context.Context, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := kvstore.ValidateRange(req); err != nil {
		return nil, err
	}
	route := s.routeSpans(ctx, req.Key, func(add func(start, end []byte)) { add(userSpan(req.Key, req.RangeEnd)) })
	var resp *pb.RangeResponse
	var err error
	if req.Serializable {
		var r *rangeraft.Replica
		if r, err = route(); err == nil {
			resp, err = s.n.readLocal(r, req)
		}
	} else {
		resp, err = onLeader(ctx, s, route, true, func(ctx context.Context, r *rangeraft.Replica) (*pb.RangeResponse, error) {
			leader, err := s.n.prepareRead(ctx, r, req.Revision, !s.peer)
			if err != nil {
				return nil, err
			}
			resp, err := s.n.readLocal(r, req)
			if err != nil {
				return nil, err
			}
			if leader != 0 {
				s.setRouteHint(ctx, r, leader)
			}
			return resp, s.acknowledge(ctx, r, resp.Header)
		}, func(ctx context.Context, cc grpc.ClientConnInterface) (*pb.RangeResponse, error) {
			return pb.NewKVClient(cc).Range(ctx, req)
		})
	}
	if errors.Is(err, errSpansRanges) || req.Serializable && errors.Is(err, errStaleRange) {
		// The keys lie (or, after a split, now lie) in several ranges.
		return s.multiRange(ctx, req)
	}
	return resp, err
}

// acknowledge holds a response with header h, served on r, until a
// majority of the cluster's nodes have clocks at least its revision
// (rangeraft.Store.WaitClockQuorum), so that no request begun after it
// gets a smaller revision; a forwarded read also carries the range's
// closed timestamp back (mdClosed).
func (s *kvServer) acknowledge(ctx context.Context, r *rangeraft.Replica, h *pb.ResponseHeader) error {
	if s.peer {
		setForwardedClose(ctx, r)
	}
	return s.n.store.WaitClockQuorum(ctx, h.Revision)
}

// maxIssuedRevision bounds the revisions any node may have issued: this
// node's clock plus the maximum clock offset.
func (n *Node) maxIssuedRevision() int64 {
	return n.clock.Now() + n.cfg.MaxClockOffset.Milliseconds()<<hlc.LogicalBits
}

// readLocal serves a Range from the local replica's applied state.
func (n *Node) readLocal(r *rangeraft.Replica, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	r.RecordRequest(req.Key)
	view := r.NewReadView()
	defer view.Close()
	if r.Keyspace() == kvstore.UserKeys {
		if start, end := userSpan(req.Key, req.RangeEnd); !inSpan(view.Span, start, end) {
			return nil, errStaleRange
		}
	}
	resp, err := kvstore.ExecRange(view.Reader, r.Keyspace(), view.Span, req, view.Revision, view.CompactRevision)
	if err != nil {
		return nil, err
	}
	resp.Header = n.header(view.Revision, view.Term)
	return resp, nil
}

// Put implements etcd's KV.Put.
func (s *kvServer) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	if err := kvstore.ValidatePut(req); err != nil {
		return nil, err
	}
	if err := s.checkSize(req); err != nil {
		return nil, err
	}
	route := s.route(ctx, req.Key)
	data, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	return onLeader(ctx, s, route, false, func(ctx context.Context, r *rangeraft.Replica) (*pb.PutResponse, error) {
		res, err := s.propose(ctx, r, req.Key, &txnproto.Command{Put: data})
		if err != nil {
			return nil, err
		}
		resp := res.Response.(*pb.PutResponse)
		resp.Header = s.n.header(res.Revision, res.Term)
		return resp, nil
	}, func(ctx context.Context, cc grpc.ClientConnInterface) (*pb.PutResponse, error) {
		return pb.NewKVClient(cc).Put(ctx, req)
	})
}

// DeleteRange implements etcd's KV.DeleteRange.
func (s *kvServer) DeleteRange(ctx context.Context, req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := kvstore.ValidateDeleteRange(req); err != nil {
		return nil, err
	}
	if err := s.checkSize(req); err != nil {
		return nil, err
	}
	route := s.routeSpans(ctx, req.Key, func(add func(start, end []byte)) { add(userSpan(req.Key, req.RangeEnd)) })
	data, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	resp, err := onLeader(ctx, s, route, false, func(ctx context.Context, r *rangeraft.Replica) (*pb.DeleteRangeResponse, error) {
		res, err := s.propose(ctx, r, req.Key, &txnproto.Command{DeleteRange: data})
		if err != nil {
			return nil, err
		}
		resp := res.Response.(*pb.DeleteRangeResponse)
		resp.Header = s.n.header(res.Revision, res.Term)
		return resp, nil
	}, func(ctx context.Context, cc grpc.ClientConnInterface) (*pb.DeleteRangeResponse, error) {
		return pb.NewKVClient(cc).DeleteRange(ctx, req)
	})
	if !s.peer && errors.Is(err, errSpansRanges) {
		// Over several ranges: a cross-range transaction of one delete.
		tresp, err := s.crossRangeTxn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{
			{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: req}}}})
		if err != nil {
			return nil, err
		}
		resp = tresp.Responses[0].GetResponseDeleteRange()
		resp.Header = tresp.Header
		return resp, nil
	}
	return resp, err
}

// Txn implements etcd's KV.Txn. Read-only transactions take the read path
// (ReadIndex, or local for serializable ones) as in etcd; others go
// through the range's raft log as one command at one revision.
func (s *kvServer) Txn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := kvstore.ValidateTxn(req, s.n.cfg.MaxTxnOps); err != nil {
		return nil, err
	}
	if err := s.checkSize(req); err != nil {
		return nil, err
	}
	route := s.routeSpans(ctx, txnFirstKey(req), func(add func(start, end []byte)) { txnSpans(req, add) })
	if placement.TxnReadOnly(req) {
		var resp *pb.TxnResponse
		var err error
		if placement.TxnSerializable(req) {
			var r *rangeraft.Replica
			if r, err = route(); err == nil {
				resp, err = s.n.txnLocal(r, req)
			}
		} else {
			resp, err = onLeader(ctx, s, route, true, func(ctx context.Context, r *rangeraft.Replica) (*pb.TxnResponse, error) {
				leader, err := s.n.prepareRead(ctx, r, 0, !s.peer)
				if err != nil {
					return nil, err
				}
				resp, err := s.n.txnLocal(r, req)
				if err != nil {
					return nil, err
				}
				if leader != 0 {
					s.setRouteHint(ctx, r, leader)
				}
				return resp, s.acknowledge(ctx, r, resp.Header)
			}, func(ctx context.Context, cc grpc.ClientConnInterface) (*pb.TxnResponse, error) {
				return pb.NewKVClient(cc).Txn(ctx, req)
			})
		}
		if !s.peer && (errors.Is(err, errSpansRanges) || errors.Is(err, errStaleRange)) {
			// The keys lie (or, after a split, now lie) in several ranges.
			return s.multiRangeTxn(ctx, req)
		}
		return resp, err
	}
	data, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	resp, err := onLeader(ctx, s, route, false, func(ctx context.Context, r *rangeraft.Replica) (*pb.TxnResponse, error) {
		res, err := s.propose(ctx, r, txnFirstKey(req), &txnproto.Command{Txn: data})
		if err != nil {
			return nil, err
		}
		resp := res.Response.(*pb.TxnResponse)
		resp.Header = s.n.header(res.Revision, res.Term)
		fillTxnHeaders(resp, resp.Header)
		return resp, nil
	}, func(ctx context.Context, cc grpc.ClientConnInterface) (*pb.TxnResponse, error) {
		return pb.NewKVClient(cc).Txn(ctx, req)
	})
	if !s.peer && errors.Is(err, errSpansRanges) {
		// Keys in several ranges: intents and a transaction record.
		return s.crossRangeTxn(ctx, req)
	}
	return resp, err
}

// txnLocal evaluates a read-only txn against the local replica's applied
// state; its batch is discarded.
func (n *Node) txnLocal(r *rangeraft.Replica, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	view := r.NewReadView()
	defer view.Close()
	ok := true
	txnSpans(req, func(start, end []byte) { ok = ok && inSpan(view.Span, start, end) })
	if !ok {
		return nil, errStaleRange
	}
	return n.readTxn(req, r.Keyspace(), view.Span, view.Revision, view.CompactRevision, view.Term)
}

// readTxn runs a read-only txn on the engine at revision rev over span,
// whose ranges have applied every write at or below rev, and answers with
// header revision rev and raft term term (etcd's headers, nested ones
// included).
func (n *Node) readTxn(req *pb.TxnRequest, ks kvstore.Keyspace, span kvstore.Span, rev, compactRev int64, term uint64) (*pb.TxnResponse, error) {
	b := n.eng.DB.NewIndexedBatch()
	defer b.Close()
	wb := &kvstore.WriteBatch{Batch: b, Rev: rev, Keyspace: ks, Span: span, CompactRev: compactRev}
	resp, err := kvstore.ApplyTxn(wb, req)
	if err != nil {
		return nil, err
	}
	resp.Header = n.header(rev, term)
	fillTxnHeaders(resp, resp.Header)
	return resp, nil
}

// fillTxnHeaders sets the header of every nested response, as etcd does.
func fillTxnHeaders(resp *pb.TxnResponse, h *pb.ResponseHeader) {
	for _, op := range resp.Responses {
		switch v := op.Response.(type) {
		case *pb.ResponseOp_ResponseRange:
			v.ResponseRange.Header = proto.Clone(h).(*pb.ResponseHeader)
		case *pb.ResponseOp_ResponsePut:
			v.ResponsePut.Header = proto.Clone(h).(*pb.ResponseHeader)
		case *pb.ResponseOp_ResponseDeleteRange:
			v.ResponseDeleteRange.Header = proto.Clone(h).(*pb.ResponseHeader)
		case *pb.ResponseOp_ResponseTxn:
			v.ResponseTxn.Header = proto.Clone(h).(*pb.ResponseHeader)
			fillTxnHeaders(v.ResponseTxn, h)
		}
	}
}

// Compact implements etcd's KV.Compact on every user range: each compaction
// goes through its range's raft log so every replica compacts at the same
// revision; with physical set the call returns after this node removed the
// old versions. A range whose newest revision is below the compaction
// revision first closes it, so the compaction is never "in the future" for
// an idle range.
func (s *kvServer) Compact(ctx context.Context, req *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	if s.peer {
		return s.compactRange(ctx, s.route(ctx, nil), req)
	}
	ctx, cancel := context.WithTimeout(ctx, s.n.reqTimeout)
	defer cancel()
	rs, err := s.n.spanRanges(kvstore.UserSpanStart, kvstore.UserSpanEnd)
	if err != nil {
		return nil, err
	}
	// etcd's checks against the whole store: the compacted revision, and
	// the newest revision of any range. The local replicas may lag the
	// leaders (a client that wrote through another node compacts at its
	// write's revision here), so the newest comes from the leaders: close
	// every range at the newest revision any of them is readable at.
	var newest, compacted int64
	for _, r := range rs {
		newest, compacted = max(newest, r.ReadableRevision()), max(compacted, r.Status().CompactRevision)
	}
	if req.Revision <= compacted {
		return nil, rpctypes.ErrGRPCCompacted
	}
	newest, err = s.n.closeAcross(ctx, rs, newest)
	if err != nil {
		return nil, translateErr(ctx, err)
	}
	if req.Revision > newest {
		return nil, rpctypes.ErrGRPCFutureRev
	}
	var resp *pb.CompactionResponse
	for _, r := range rs {
		id := r.RangeID
		resp, err = s.compactRange(ctx, func() (*rangeraft.Replica, error) {
			if r := s.n.store.Replica(id); r != nil {
				return r, nil
			}
			return nil, errStaleRange
		}, req)
		if err != nil && !errors.Is(err, rpctypes.ErrGRPCCompacted) {
			return nil, err
		}
	}
	if resp == nil {
		resp = &pb.CompactionResponse{}
	}
	resp.Header = s.n.userHeader()
	return resp, nil
}

func (s *kvServer) compactRange(ctx context.Context, route func() (*rangeraft.Replica, error), req *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	return onLeader(ctx, s, route, false, func(ctx context.Context, r *rangeraft.Replica) (*pb.CompactionResponse, error) {
		res, err := s.propose(ctx, r, nil, &txnproto.Command{Compact: &txnproto.CompactCommand{Revision: req.Revision}})
		if err != nil {
			return nil, err
		}
		if req.Physical {
			if err := r.WaitPhysicalCompaction(ctx, req.Revision); err != nil {
				return nil, err
			}
		}
		resp := res.Response.(*pb.CompactionResponse)
		resp.Header = s.n.header(res.Revision, res.Term)
		return resp, nil
	}, func(ctx context.Context, cc grpc.ClientConnInterface) (*pb.CompactionResponse, error) {
		return pb.NewKVClient(cc).Compact(ctx, req)
	})
}

func txnFirstKey(req *pb.TxnRequest) []byte {
	for _, c := range req.Compare {
		return c.Key
	}
	for _, ops := range [][]*pb.RequestOp{req.Success, req.Failure} {
		for _, op := range ops {
			switch v := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				return v.RequestRange.Key
			case *pb.RequestOp_RequestPut:
				return v.RequestPut.Key
			case *pb.RequestOp_RequestDeleteRange:
				return v.RequestDeleteRange.Key
			case *pb.RequestOp_RequestTxn:
				if k := txnFirstKey(v.RequestTxn); k != nil {
					return k
				}
			}
		}
	}
	return nil
}

// rangeStreamChunkKVs and rangeStreamChunkBytes bound one RangeStream
// message.
const (
	rangeStreamChunkKVs   = 1000
	rangeStreamChunkBytes = 1 << 20
)

// RangeStream implements etcd 3.7's KV.RangeStream: the result of Range in
// chunks of disjoint, ordered kvs; header, more and count ride on the last
// chunk, so merging every chunk yields Range's response.
func (s *kvServer) RangeStream(req *pb.RangeRequest, stream pb.KV_RangeStreamServer) error {
	if err := kvstore.ValidateRange(req); err != nil {
		return err
	}
	if err := kvstore.StreamableRange(req); err != nil {
		return err
	}
	resp, err := s.Range(stream.Context(), req)
	if err != nil {
		return err
	}
	kvs := resp.Kvs
	for {
		n, size := 0, 0
		for n < len(kvs) && n < rangeStreamChunkKVs && (n == 0 || size < rangeStreamChunkBytes) {
			size += proto.Size(kvs[n])
			n++
		}
		chunk := &pb.RangeResponse{Kvs: kvs[:n]}
		kvs = kvs[n:]
		if len(kvs) == 0 {
			chunk.Header, chunk.More, chunk.Count = resp.Header, resp.More, resp.Count
		}
		if err := stream.Send(&pb.RangeStreamResponse{RangeResponse: chunk}); err != nil {
			return err
		}
		if len(kvs) == 0 {
			return nil
		}
	}
}

// mdSplitRangeID carries the right-hand range ID of a forwarded split (the
// forwarding node allocates it).
const mdSplitRangeID = "rangekv-split-range-id"

func withForwardedSplitID(ctx context.Context, id uint64) context.Context {
	return metadata.AppendToOutgoingContext(ctx, mdSplitRangeID, strconv.FormatUint(id, 10))
}

func forwardedSplitID(ctx context.Context) uint64 {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(mdSplitRangeID)
	if len(v) != 1 {
		return 0
	}
	id, _ := strconv.ParseUint(v[0], 10, 64)
	return id
}
