package node

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/placement"
	"github.com/rangekv/rangekv/rangeraft"
	"github.com/rangekv/rangekv/txnproto"
)

// userSpan maps an etcd key and range_end to the span keys [start, end)
// they address: range_end empty is the single key, "\x00" every key from
// key on.
func userSpan(key, rangeEnd []byte) (start, end []byte) {
	start = kvstore.UserSpanKey(key)
	switch {
	case len(rangeEnd) == 0:
		return start, append(bytes.Clone(start), 0)
	case len(rangeEnd) == 1 && rangeEnd[0] == 0:
		return start, kvstore.UserSpanEnd
	default:
		return start, kvstore.UserSpanKey(rangeEnd)
	}
}

// inSpan reports whether [start, end) lies within span (an empty request
// span counts as inside the span holding its start).
func inSpan(span kvstore.Span, start, end []byte) bool {
	if bytes.Compare(start, span.Start) < 0 || bytes.Compare(start, span.End) >= 0 {
		return false
	}
	return bytes.Compare(end, start) <= 0 || bytes.Compare(end, span.End) <= 0
}

// spanRanges returns the local replicas covering [start, end), in key
// order (at least the one holding start).
func (n *Node) spanRanges(start, end []byte) ([]*rangeraft.Replica, error) {
	// A miss is a split being installed (microseconds); wait it out.
	deadline := time.Now().Add(time.Second)
	for {
		rs, err := n.spanRangesOnce(start, end)
		if !errors.Is(err, errStaleRange) || time.Now().After(deadline) {
			return rs, err
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func (n *Node) spanRangesOnce(start, end []byte) ([]*rangeraft.Replica, error) {
	var out []*rangeraft.Replica
	k := start
	for {
		r := n.store.ReplicaForKey(k)
		if r == nil {
			return nil, errStaleRange // a split in progress; see userRange
		}
		out = append(out, r)
		_, rangeEnd := r.Span()
		if bytes.Compare(end, rangeEnd) <= 0 || bytes.Compare(rangeEnd, kvstore.UserSpanEnd) >= 0 {
			return out, nil
		}
		k = rangeEnd
	}
}

// errSpansRanges is returned by a routeSpans resolver when the request's
// keys lie in several ranges. Reads switch to multiRange or multiRangeTxn,
// writes to crossRangeTxn.
var errSpansRanges = errors.New("rangekv: the request spans several ranges")

// routeSpans returns the resolver of the single range holding every span
// a request addresses (reported through spans). It is evaluated afresh on
// every retry, so a request that a split has made span two ranges stops
// retrying the old one: the resolver then returns errSpansRanges, and the
// caller takes its multi-range path. On the peer server the forwarded
// range is used.
func (s *kvServer) routeSpans(ctx context.Context, key []byte, spans func(add func(start, end []byte))) func() (*rangeraft.Replica, error) {
	if s.peer {
		return s.route(ctx, key)
	}
	return func() (*rangeraft.Replica, error) {
		// The common case first: every span inside the range holding key.
		if r := s.n.store.ReplicaForKey(kvstore.UserSpanKey(key)); r != nil {
			rstart, rend := r.Span()
			inside := true
			spans(func(start, end []byte) {
				inside = inside && inSpan(kvstore.Span{Start: rstart, End: rend}, start, end)
			})
			if inside {
				return r, nil
			}
		}
		ids := map[uint64]bool{}
		var first *rangeraft.Replica
		var err error
		spans(func(start, end []byte) {
			if err != nil {
				return
			}
			var rs []*rangeraft.Replica
			if rs, err = s.n.spanRanges(start, end); err != nil {
				return
			}
			for _, r := range rs {
				ids[r.RangeID] = true
				if first == nil {
					first = r
				}
			}
		})
		if err != nil {
			return nil, err
		}
		if len(ids) <= 1 {
			if first == nil {
				return s.n.userRange(key)
			}
			return first, nil
		}
		return nil, multiRangeErr(ids)
	}
}

// multiRangeErr is errSpansRanges naming the ranges.
func multiRangeErr(ids map[uint64]bool) error {
	sorted := slices.Sorted(maps.Keys(ids))
	list := make([]string, 0, len(sorted))
	for _, id := range sorted {
		list = append(list, fmt.Sprint(id))
	}
	return fmt.Errorf("%w (%s)", errSpansRanges, strings.Join(list, ", "))
}

// txnSpans reports every span a txn's compares and operations (both
// branches, nested txns included) address, as span keys.
func txnSpans(req *pb.TxnRequest, add func(start, end []byte)) {
	placement.TxnKeys(req, func(key, rangeEnd []byte) { add(userSpan(key, rangeEnd)) })
}

// multiRange serves a Range over keys of several ranges at one revision T.
// A serializable read takes the lowest revision every local replica can
// serve; a linearizable one closes T on every range's leader (closeAcross),
// so each has applied every write at or below T and never writes there
// again, then reads the local replicas at T. Results merge as etcd
// computes them: kvs in key order (or the requested sort), count summed,
// limit and more over the whole result.
func (s *kvServer) multiRange(ctx context.Context, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	start, end := userSpan(req.Key, req.RangeEnd)
	return retryStale(ctx, s.n.reqTimeout, func(ctx context.Context) (*pb.RangeResponse, error) {
		return s.multiRangeOnce(ctx, req, start, end)
	})
}

// retryStale runs once until it returns anything but errStaleRange (a
// split changed the ranges under a multi-range read: route again), within
// timeout.
func retryStale[T any](ctx context.Context, timeout time.Duration, once func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	backoff := time.Millisecond
	for {
		resp, err := once(ctx)
		if !errors.Is(err, errStaleRange) {
			return resp, err
		}
		select {
		case <-ctx.Done():
			var zero T
			return zero, rpctypes.ErrGRPCTimeout
		case <-time.After(backoff):
			backoff = min(2*backoff, 50*time.Millisecond)
		}
	}
}

func (s *kvServer) multiRangeOnce(ctx context.Context, req *pb.RangeRequest, start, end []byte) (*pb.RangeResponse, error) {
	rs, err := s.n.spanRanges(start, end)
	if err != nil {
		return nil, err
	}
	t, err := s.n.readRevision(ctx, rs, req.Serializable)
	if err != nil {
		return nil, err
	}
	return s.n.readAt(rs, req, t, start, end)
}

// readRevision chooses the revision T a read over the ranges rs is served
// at: the lowest revision every local replica can serve when
// serializable, else a close across the ranges' leaders at the clock's
// now (closeAcrossNow).
func (n *Node) readRevision(ctx context.Context, rs []*rangeraft.Replica, serializable bool) (int64, error) {
	if serializable {
		t := rs[0].ReadableRevision()
		for _, r := range rs[1:] {
			t = min(t, r.ReadableRevision())
		}
		return t, nil
	}
	t, err := n.closeAcrossNow(ctx, rs)
	if err != nil && !errors.Is(err, errStaleRange) {
		return 0, translateErr(ctx, err)
	}
	return t, err
}

// closeAcrossNow is closeAcross at the revision a linearizable
// multi-range read starts from: the reading of a clock round, so at
// least every revision acknowledged before the read arrived (the
// ranges' own and any other range's). It returns once a majority of the
// cluster's clocks have reached the result, which the read can then
// answer with (rangeraft.Store.WaitClockQuorum). A requested revision
// above it is a future revision (readAt).
func (n *Node) closeAcrossNow(ctx context.Context, rs []*rangeraft.Replica) (int64, error) {
	t, err := n.store.ClockRound(ctx)
	if err != nil {
		return 0, err
	}
	if t, err = n.closeAcross(ctx, rs, t); err != nil {
		return 0, err
	}
	return t, n.store.WaitClockQuorum(ctx, t)
}

// readAt reads req on the ranges rs, which must still tile [start, end),
// at revision t (or req.Revision when set).
func (n *Node) readAt(rs []*rangeraft.Replica, req *pb.RangeRequest, t int64, start, end []byte) (*pb.RangeResponse, error) {
	rev := t
	if req.Revision > 0 {
		if req.Revision > t {
			return nil, rpctypes.ErrGRPCFutureRev
		}
		rev = req.Revision
	}
	sub := proto.Clone(req).(*pb.RangeRequest)
	sub.Revision = rev
	out := &pb.RangeResponse{}
	next := start
	for _, r := range rs {
		view := r.NewReadView()
		if !bytes.Equal(view.Span.Start, next) && bytes.Compare(next, view.Span.Start) < 0 ||
			bytes.Compare(next, view.Span.End) >= 0 {
			view.Close()
			return nil, errStaleRange
		}
		resp, err := kvstore.ExecRange(view.Reader, kvstore.UserKeys, view.Span, sub, t, view.CompactRevision)
		next = view.Span.End
		view.Close()
		if err != nil {
			return nil, err
		}
		out.Kvs = append(out.Kvs, resp.Kvs...)
		out.Count += resp.Count
		out.More = out.More || resp.More
	}
	if bytes.Compare(next, end) < 0 {
		return nil, errStaleRange
	}
	if req.SortOrder != pb.RangeRequest_NONE || req.SortTarget != pb.RangeRequest_KEY {
		sortKVs(out, req)
	}
	if req.Limit > 0 && int64(len(out.Kvs)) > req.Limit {
		out.Kvs = out.Kvs[:req.Limit]
		out.More = true
	}
	out.Header = n.header(t, 0)
	return out, nil
}

// sortKVs orders merged results as etcd's Range does (target and order;
// ties keep key order).
func sortKVs(resp *pb.RangeResponse, req *pb.RangeRequest) {
	order := req.SortOrder
	if order == pb.RangeRequest_NONE {
		order = pb.RangeRequest_ASCEND
	}
	less := func(i, j int) bool {
		a, b := resp.Kvs[i], resp.Kvs[j]
		var c int
		switch req.SortTarget {
		case pb.RangeRequest_VERSION:
			c = cmp.Compare(a.Version, b.Version)
		case pb.RangeRequest_CREATE:
			c = cmp.Compare(a.CreateRevision, b.CreateRevision)
		case pb.RangeRequest_MOD:
			c = cmp.Compare(a.ModRevision, b.ModRevision)
		case pb.RangeRequest_VALUE:
			c = bytes.Compare(a.Value, b.Value)
		default:
			c = bytes.Compare(a.Key, b.Key)
		}
		if order == pb.RangeRequest_DESCEND {
			return c > 0
		}
		return c < 0
	}
	sort.SliceStable(resp.Kvs, less)
}

// closeAcross makes every range in rs readable at one revision T >= t and
// returns T. Round one runs on each range's leader: it confirms leadership
// (ReadIndex, so every write acknowledged before this read has applied)
// and closes t, returning the range's readable revision. T is the largest
// of those, so it covers every write acknowledged before the read began.
// Round two closes T on the ranges still below it. Every range then has
// applied every write at or below T and never writes there again; the
// local replicas are awaited until they have applied as much.
func (n *Node) closeAcross(ctx context.Context, rs []*rangeraft.Replica, t int64) (int64, error) {
	readable := make([]int64, len(rs))
	for i, r := range rs {
		rev, err := n.closeOnLeader(ctx, r, t)
		if err != nil {
			return 0, err
		}
		readable[i] = rev
		t = max(t, rev)
	}
	for i, r := range rs {
		if readable[i] >= t {
			continue
		}
		if _, err := n.closeOnLeader(ctx, r, t); err != nil {
			return 0, err
		}
	}
	for _, r := range rs {
		if err := r.WaitReadable(ctx, t); err != nil {
			return 0, err
		}
	}
	return t, nil
}

// closeOnLeader runs CloseRange for r's range on its leader.
func (n *Node) closeOnLeader(ctx context.Context, r *rangeraft.Replica, t int64) (int64, error) {
	s := &kvServer{n: n}
	id := r.RangeID
	route := func() (*rangeraft.Replica, error) {
		if r := n.store.Replica(id); r != nil {
			return r, nil
		}
		return nil, errStaleRange
	}
	resp, err := onLeader(ctx, s, route, true, func(ctx context.Context, r *rangeraft.Replica) (*txnproto.CloseRangeResponse, error) {
		return closeLocal(ctx, r, t)
	}, func(ctx context.Context, cc grpc.ClientConnInterface) (*txnproto.CloseRangeResponse, error) {
		return txnproto.NewRangesClient(cc).CloseRange(ctx, &txnproto.CloseRangeRequest{RangeId: id, Revision: t})
	})
	if err != nil {
		return 0, err
	}
	if resp.AppliedIndex > 0 {
		n.installClose(r.RangeID, resp.ReadableRevision, resp.AppliedIndex)
	}
	return resp.ReadableRevision, nil
}

// closeLocal confirms leadership (ReadIndex) and makes the range readable
// at t, on the side channel if it can (rangeraft.Replica.CloseAt).
func closeLocal(ctx context.Context, r *rangeraft.Replica, t int64) (*txnproto.CloseRangeResponse, error) {
	if err := r.ReadIndex(ctx); err != nil {
		return nil, err
	}
	if err := r.CloseAt(ctx, t); err != nil {
		return nil, err
	}
	rev, index := r.ClosedPromise()
	return &txnproto.CloseRangeResponse{ReadableRevision: rev, AppliedIndex: index}, nil
}

// multiRangeTxn serves a read-only Txn whose keys lie in several ranges at
// one revision T, chosen as multiRange chooses it (the lowest revision
// every local replica can serve for a serializable txn, a close across
// the ranges' leaders otherwise). At T every range has applied all its
// writes at or below T and will never write there again, and all ranges
// share this node's engine, so the compares and reads run over the union
// of their spans in one pass, exactly as a one-range txn runs: etcd's
// answer, read at one revision.
func (s *kvServer) multiRangeTxn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	return retryStale(ctx, s.n.reqTimeout, func(ctx context.Context) (*pb.TxnResponse, error) {
		return s.multiRangeTxnOnce(ctx, req)
	})
}

func (s *kvServer) multiRangeTxnOnce(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	rs, span, err := s.n.txnRanges(req)
	if err != nil {
		return nil, err
	}
	// The ranges' descriptors before T is chosen and after: T promises
	// every write at or below it only for the keys each range covered
	// when its readable revision was read or its close applied. A split
	// in between moves keys (and a transaction's intent on them) to a
	// range T did not account for, and a commit could still land below T
	// there: read again. (Found by the robustness suite: a bank audit saw
	// a transfer torn across a split.)
	marks := markRanges(rs)
	if testHookTxnRangesListed != nil {
		testHookTxnRangesListed(s.n)
	}
	t, err := s.n.readRevision(ctx, rs, placement.TxnSerializable(req))
	if err != nil {
		return nil, err
	}
	after, _, err := s.n.txnRanges(req)
	if err != nil {
		return nil, err
	}
	if !slices.Equal(marks, markRanges(after)) {
		return nil, errStaleRange
	}
	var compacted int64
	for _, r := range rs {
		compacted = max(compacted, r.Status().CompactRevision)
	}
	return s.n.readTxn(req, kvstore.UserKeys, span, t, compacted, 0)
}

// testHookTxnRangesListed, when set (tests only), runs in a multi-range
// read-only txn after its ranges are listed and before T is chosen.
var testHookTxnRangesListed func(n *Node)

// txnRanges lists the local replicas of the ranges a txn's keys lie in,
// each once, in the order of the txn's spans, and the span from the
// first range's start to the last range's end.
func (n *Node) txnRanges(req *pb.TxnRequest) ([]*rangeraft.Replica, kvstore.Span, error) {
	seen := map[uint64]bool{}
	var rs []*rangeraft.Replica
	var span kvstore.Span
	var err error
	txnSpans(req, func(start, end []byte) {
		if err != nil {
			return
		}
		var got []*rangeraft.Replica
		if got, err = n.spanRanges(start, end); err != nil {
			return
		}
		for _, r := range got {
			if !seen[r.RangeID] {
				seen[r.RangeID] = true
				rs = append(rs, r)
			}
			rstart, rend := r.Span()
			if span.Start == nil || bytes.Compare(rstart, span.Start) < 0 {
				span.Start = rstart
			}
			if bytes.Compare(rend, span.End) > 0 {
				span.End = rend
			}
		}
	})
	return rs, span, err
}
