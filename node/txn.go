package node

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	gofail "go.etcd.io/gofail/runtime"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/rangeraft"
	"github.com/rangekv/rangekv/txnproto"
)

// Cross-range transactions (docs/transactions.md). The node that receives
// a Txn or DeleteRange whose keys lie in several ranges coordinates it:
//
//  1. prepare: every participant range locks the spans the txn reads or
//     writes there (an intent) and returns their live keys and its
//     prepare revision P; the anchor range (holding the first key) also
//     stages the transaction record with the request and the list of
//     participants. All in parallel. Once every prepare has applied, the
//     transaction is committed (parallel commit).
//  2. evaluate: the coordinator runs the txn, exactly as a one-range txn
//     runs, over the union of those keys at R = max(P) (nothing changes
//     them while the intents hold), and answers the client.
//  3. commit: in the background, the anchor flips the record to
//     committed at R with every write and applies its own share, then
//     the other participants apply theirs and drop their intents, and
//     the record is forgotten.
//
// A coordinator that dies leaves intents that the participants' leaders
// resolve themselves (intentResolver): they push the record, resolving
// their share if it is decided; a pending record past its expiry, when
// no prepare can apply any more, is recovered: committed if every
// participant holds its intent (the coordinator may have answered), else
// aborted.

// txnExpiry bounds how long a pending transaction holds its locks: after
// it anyone may abort the record, and no prepare of it applies.
const txnExpiry = 2 * time.Second

// Failpoint nodeTxnAfterPrepare: a coordinator has every intent and the
// pending record but has not committed (tests SIGKILL it there).
var fpTxnAfterPrepare = gofail.NewFailpoint("nodeTxnAfterPrepare")

// txnMetrics count cross-range transactions by outcome on this node as
// coordinator (committed, aborted attempts, errors returned) and the
// transactions its intent resolver decided by recovery.
type txnMetrics struct {
	outcomes  *prometheus.CounterVec
	recovered *prometheus.CounterVec
}

func newTxnMetrics(reg prometheus.Registerer) *txnMetrics {
	m := &txnMetrics{
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rangekv_txn_cross_range_total",
			Help: "Cross-range transaction attempts coordinated by this node, by outcome: committed, read_only (nothing written), retried (a conflict or a moved key), failed (an error returned)."},
			[]string{"outcome"}),
		recovered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rangekv_txn_recovered_total",
			Help: "Transactions past their expiry this node decided by recovery, by status."}, []string{"status"}),
	}
	reg.MustRegister(m.outcomes, m.recovered)
	return m
}

// errTxnRetry reports a transaction attempt that must start over: a
// participant's keys are locked by another transaction, its record was
// aborted by a pusher, or a split moved its keys.
var errTxnRetry = errors.New("rangekv: transaction attempt must retry")

// participant is one range of a cross-range transaction.
type participant struct {
	key    []byte // a span key in the range, to route by
	spans  []*txnproto.TxnSpan
	prep   *txnproto.TxnCommandResult
	err    error
	anchor bool
}

// evalEngine returns the node's empty in-memory engine, over which
// coordinators evaluate transactions in throwaway batches.
func (n *Node) evalEngine() (*pebble.DB, error) {
	n.evalOnce.Do(func() {
		n.evalDB, n.evalErr = pebble.Open("", &pebble.Options{FS: vfs.NewMem()})
	})
	return n.evalDB, n.evalErr
}

// crossRangeTxn runs req, whose keys lie in several ranges, atomically at
// one revision.
func (s *kvServer) crossRangeTxn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, s.n.reqTimeout)
	defer cancel()
	hist, err := s.readHistory(ctx, req)
	if err != nil {
		return nil, err
	}
	backoff := time.Millisecond
	for {
		resp, err := s.txnAttempt(ctx, req, hist)
		if !errors.Is(err, errTxnRetry) && !errors.Is(err, errStaleRange) {
			if err != nil {
				s.n.txnMetrics.outcomes.WithLabelValues("failed").Inc()
			}
			return resp, err
		}
		s.n.txnMetrics.outcomes.WithLabelValues("retried").Inc()
		select {
		case <-ctx.Done():
			return nil, rpctypes.ErrGRPCTimeout
		case <-time.After(backoff/2 + rand.N(backoff)):
			backoff = min(2*backoff, 50*time.Millisecond)
		}
	}
}

// historicalRanges returns the Range operations of req (both branches,
// nested txns included) that read at an explicit revision.
func historicalRanges(req *pb.TxnRequest) []*pb.RangeRequest {
	var out []*pb.RangeRequest
	for _, ops := range [][]*pb.RequestOp{req.Success, req.Failure} {
		for _, op := range ops {
			switch v := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				if v.RequestRange.Revision != 0 {
					out = append(out, v.RequestRange)
				}
			case *pb.RequestOp_RequestTxn:
				out = append(out, historicalRanges(v.RequestTxn)...)
			}
		}
	}
	return out
}

// historicalRead is the live keys of a txn's Range operations at an
// explicit revision, read before the prepares (history at a revision the
// ranges have closed never changes), for evaluateTxn.
type historicalRead struct {
	rev int64
	kvs []*mvccpb.KeyValue
}

// readHistory reads, at one snapshot per operation, the spans of req's
// Range operations at an explicit revision, with etcd's errors for a
// compacted or future revision. Ranges at different revisions in one
// multi-range txn are refused (Unimplemented): the batch the txn is
// evaluated on holds one revision of history.
func (s *kvServer) readHistory(ctx context.Context, req *pb.TxnRequest) (*historicalRead, error) {
	ranges := historicalRanges(req)
	if len(ranges) == 0 {
		return nil, nil
	}
	h := &historicalRead{rev: ranges[0].Revision}
	for _, rr := range ranges {
		if rr.Revision != h.rev {
			return nil, status.Error(codes.Unimplemented,
				"rangekv: Range operations at different revisions inside one transaction over several ranges are not supported")
		}
		resp, err := s.multiRange(ctx, &pb.RangeRequest{Key: rr.Key, RangeEnd: rr.RangeEnd, Revision: rr.Revision})
		if err != nil {
			return nil, err
		}
		h.kvs = append(h.kvs, resp.Kvs...)
	}
	return h, nil
}

// participants splits the txn's spans by the local view of the ranges.
func (n *Node) participants(req *pb.TxnRequest) ([]*participant, error) {
	var out []*participant
	byRange := map[uint64]*participant{}
	var err error
	txnSpans(req, func(start, end []byte) {
		if err != nil || bytes.Compare(start, end) >= 0 {
			return
		}
		var rs []*rangeraft.Replica
		if rs, err = n.spanRanges(start, end); err != nil {
			return
		}
		for _, r := range rs {
			rstart, rend := r.Span()
			s, e := start, end
			if bytes.Compare(s, rstart) < 0 {
				s = rstart
			}
			if bytes.Compare(e, rend) > 0 {
				e = rend
			}
			p := byRange[r.RangeID]
			if p == nil {
				p = &participant{key: s, anchor: len(out) == 0}
				byRange[r.RangeID] = p
				out = append(out, p)
			}
			p.spans = append(p.spans, &txnproto.TxnSpan{Start: bytes.Clone(s), End: bytes.Clone(e)})
		}
	})
	return out, err
}

func (s *kvServer) txnAttempt(ctx context.Context, req *pb.TxnRequest, hist *historicalRead) (*pb.TxnResponse, error) {
	n := s.n
	parts, err := n.participants(req)
	if err != nil {
		return nil, err
	}
	reqData, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	id := make([]byte, 16)
	_, _ = crand.Read(id)
	meta := &txnproto.TxnMeta{Id: id, AnchorKey: parts[0].key, Coordinator: n.id,
		ExpiryMs: time.Now().Add(txnExpiry).UnixMilli()}
	keys := make([][]byte, len(parts))
	for i, p := range parts {
		keys[i] = p.key
	}

	// 1. Prepare everywhere at once; the anchor's prepare stages the
	// record with the request. Once all have applied, the transaction is
	// committed (parallel commit): recovery would find every intent.
	var wg sync.WaitGroup
	for _, p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prep := &txnproto.TxnPrepareCommand{Intent: &txnproto.TxnIntent{Txn: meta, Spans: p.spans}, Anchor: p.anchor}
			if p.anchor {
				prep.Request, prep.Participants = reqData, keys
			}
			p.prep, _, p.err = n.txnCommand(ctx, p.key, &txnproto.Command{TxnPrepare: prep})
		}()
	}
	wg.Wait()
	for _, p := range parts {
		if p.err != nil {
			return nil, n.giveUp(meta, keys, p.err)
		}
	}
	_, _ = fpTxnAfterPrepare.Acquire()

	// 2. Evaluate at R over the locked keys.
	commitRev := int64(0)
	for _, p := range parts {
		commitRev = max(commitRev, p.prep.PrepareRevision)
	}
	resp, writes, err := n.evaluateTxn(req, parts, commitRev, hist)
	switch {
	case err != nil:
		// Recovery would evaluate the same way and abort too.
		n.goBackground(func() { n.abortTxn(meta, keys) })
		return nil, err
	case len(writes) == 0:
		// Nothing to write: the compares and reads held at every revision
		// from the last prepare until the locks go.
		n.txnMetrics.outcomes.WithLabelValues("read_only").Inc()
		n.goBackground(func() { n.abortTxn(meta, keys) })
	default:
		n.txnMetrics.outcomes.WithLabelValues("committed").Inc()
		// 3. Make the commit explicit and resolve the intents, in the
		// background: readers of the keys wait for it.
		n.goBackground(func() { n.commitTxn(meta, commitRev, writes, keys) })
	}
	if err := n.store.WaitClockQuorum(ctx, commitRev); err != nil {
		return nil, err
	}
	resp.Header = n.header(commitRev, 0)
	fillTxnHeaders(resp, resp.Header)
	return resp, nil
}

// giveUp ends an attempt whose prepare failed with cause: the record is
// aborted (or written aborted), then the intents are released. If
// recovery found every intent first and committed, the outcome is the
// client's to learn: etcd's ambiguous timeout.
func (n *Node) giveUp(meta *txnproto.TxnMeta, keys [][]byte, cause error) error {
	actx, cancel := n.stopContext(n.reqTimeout)
	defer cancel()
	res, _, err := n.txnCommand(actx, meta.AnchorKey, &txnproto.Command{TxnAbort: &txnproto.TxnAbortCommand{
		Txn: meta, Coordinator: true}})
	switch {
	case err != nil:
		n.log.Warn("transaction abort failed; its intents resolve after expiry",
			zap.String("txn", kvstore.TxnIDString(meta.Id)), zap.Error(err))
		return rpctypes.ErrGRPCTimeout
	case res.GetRecord().GetStatus() == txnproto.TxnStatus_TXN_COMMITTED:
		n.goBackground(func() { n.finishRecord(res.Record) })
		return rpctypes.ErrGRPCTimeout
	}
	n.goBackground(func() { n.resolveParticipants(meta, false, 0, nil, keys[1:]) })
	return cause
}

// abortTxn aborts a transaction that wrote nothing, or failed evaluation,
// and releases its intents.
func (n *Node) abortTxn(meta *txnproto.TxnMeta, keys [][]byte) {
	ctx, cancel := n.stopContext(n.reqTimeout)
	defer cancel()
	if _, _, err := n.txnCommand(ctx, meta.AnchorKey, &txnproto.Command{TxnAbort: &txnproto.TxnAbortCommand{
		Txn: meta, Coordinator: true}}); err != nil {
		n.log.Debug("transaction abort failed; intents resolve on expiry",
			zap.String("txn", kvstore.TxnIDString(meta.Id)), zap.Error(err))
		return
	}
	n.resolveParticipants(meta, false, 0, nil, keys[1:])
}

// commitTxn records a committed transaction's writes on its anchor (which
// applies its own share) and resolves the other participants.
func (n *Node) commitTxn(meta *txnproto.TxnMeta, commitRev int64, writes []*txnproto.TxnWrite, keys [][]byte) {
	ctx, cancel := n.stopContext(n.reqTimeout)
	defer cancel()
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		// errTxnRetry here is a record a split just moved: route again.
		if _, _, err = n.txnCommand(ctx, meta.AnchorKey, &txnproto.Command{TxnCommit: &txnproto.TxnCommitCommand{
			TxnId: meta.Id, CommitRevision: commitRev, Writes: writes, Participants: keys}}); !errors.Is(err, errTxnRetry) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		n.log.Warn("recording a transaction's commit failed; recovery finishes it",
			zap.String("txn", kvstore.TxnIDString(meta.Id)), zap.Error(err))
		return
	}
	n.resolveParticipants(meta, true, commitRev, writes, keys[1:])
}

// evaluateTxn runs req at rev over the participants' locked keys (and,
// for its Range operations at an explicit revision, hist) and returns
// etcd's response and the writes, in operation order.
func (n *Node) evaluateTxn(req *pb.TxnRequest, parts []*participant, rev int64, hist *historicalRead) (*pb.TxnResponse, []*txnproto.TxnWrite, error) {
	db, err := n.evalEngine()
	if err != nil {
		return nil, nil, err
	}
	b := db.NewIndexedBatch()
	defer b.Close()
	var locked []*mvccpb.KeyValue
	for _, p := range parts {
		for _, data := range p.prep.Kvs {
			kv := &mvccpb.KeyValue{}
			if err := proto.Unmarshal(data, kv); err != nil {
				return nil, nil, err
			}
			locked = append(locked, kv)
		}
	}
	if err := kvstore.LoadSnapshotKVs(b, kvstore.UserKeys, locked); err != nil {
		return nil, nil, err
	}
	if hist != nil && hist.rev < rev {
		// The versions live at hist.rev, and a tombstone just above it for
		// every one of those keys not live now: reads at hist.rev see the
		// history, reads at rev the locked keys.
		live := make(map[string]bool, len(locked))
		for _, kv := range locked {
			live[string(kv.Key)] = true
		}
		if err := kvstore.LoadSnapshotKVs(b, kvstore.UserKeys, hist.kvs); err != nil {
			return nil, nil, err
		}
		var gone [][]byte
		for _, kv := range hist.kvs {
			if !live[string(kv.Key)] {
				gone = append(gone, kv.Key)
			}
		}
		if err := kvstore.LoadSnapshotTombstones(b, kvstore.UserKeys, gone, hist.rev+1); err != nil {
			return nil, nil, err
		}
	}
	wb := &kvstore.WriteBatch{Batch: b, Rev: rev, Keyspace: kvstore.UserKeys,
		Span: kvstore.Span{Start: kvstore.UserSpanStart, End: kvstore.UserSpanEnd}}
	resp, err := kvstore.ApplyTxn(wb, req)
	if err != nil {
		return nil, nil, err
	}
	writes := make([]*txnproto.TxnWrite, 0, len(wb.Events))
	for _, ev := range wb.Events {
		w := &txnproto.TxnWrite{Key: kvstore.UserSpanKey(ev.Kv.Key)}
		if ev.Type == mvccpb.Event_DELETE {
			w.Delete = true
		} else {
			w.Value, w.Lease = ev.Kv.Value, ev.Kv.Lease
		}
		writes = append(writes, w)
	}
	return resp, writes, nil
}

// resolveParticipants resolves the intents of a finalized transaction on
// the ranges holding keys, then forgets its record once all succeeded.
func (n *Node) resolveParticipants(meta *txnproto.TxnMeta, commit bool, commitRev int64, writes []*txnproto.TxnWrite, keys [][]byte) {
	ctx, cancel := n.stopContext(n.reqTimeout)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(keys))
	for i, key := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []*txnproto.TxnWrite
			if commit {
				mine = writes // the participant applies those inside its span
			}
			_, _, errs[i] = n.txnCommand(ctx, key, &txnproto.Command{TxnResolve: &txnproto.TxnResolveCommand{
				TxnId: meta.Id, Commit: commit, CommitRevision: commitRev, Writes: mine}})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		n.log.Debug("transaction resolution incomplete; the resolvers finish it",
			zap.String("txn", kvstore.TxnIDString(meta.Id)), zap.Error(err))
		return
	}
	// A record left behind is removed by its anchor's resolver later
	// (finishRecord).
	_, _, _ = n.txnCommand(ctx, meta.AnchorKey, &txnproto.Command{TxnForget: &txnproto.TxnForgetCommand{TxnId: meta.Id}})
}

// stopContext returns a context with timeout d that also ends when the
// node stops.
func (n *Node) stopContext(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(n.lifetime, d)
}

// txnCommand proposes a transaction command on the leader of the range
// holding the span key key (forwarding to it over the peer TxnService)
// and returns its result and revision. Conflicts, aborts and moved keys
// come back as errTxnRetry.
func (n *Node) txnCommand(ctx context.Context, key []byte, cmd *txnproto.Command) (*txnproto.TxnCommandResult, int64, error) {
	s := &kvServer{n: n}
	route := func() (*rangeraft.Replica, error) {
		if r := n.store.ReplicaForKey(key); r != nil {
			return r, nil
		}
		return nil, errStaleRange
	}
	resp, err := onLeader(ctx, s, route, true, func(ctx context.Context, r *rangeraft.Replica) (*txnproto.TxnCommandResponse, error) {
		return n.txnCommandLocal(ctx, r, key, cmd)
	}, func(ctx context.Context, cc grpc.ClientConnInterface) (*txnproto.TxnCommandResponse, error) {
		return txnproto.NewTxnServiceClient(cc).TxnCommand(ctx, &txnproto.TxnCommandRequest{Key: key, Command: cmd})
	})
	if err != nil {
		if st, ok := status.FromError(err); ok && st.Code() == codes.Aborted && strings.HasPrefix(st.Message(), txnRetryPrefix) {
			return nil, 0, errTxnRetry
		}
		return nil, 0, err
	}
	return resp.Result, resp.Revision, nil
}

// txnRetryPrefix starts the message of the Aborted status that carries
// errTxnRetry across nodes.
const txnRetryPrefix = "rangekv: transaction conflict"

// txnCommandLocal proposes cmd on r, the range's leader here, which must
// hold key (else errStaleRange, and the sender routes again). A prepare
// runs a clock round first, so that it is stamped above every revision
// acknowledged before.
func (n *Node) txnCommandLocal(ctx context.Context, r *rangeraft.Replica, key []byte, cmd *txnproto.Command) (*txnproto.TxnCommandResponse, error) {
	if err := r.CheckLeader(); err != nil {
		return nil, err
	}
	if start, end := r.Span(); bytes.Compare(key, start) < 0 || bytes.Compare(key, end) >= 0 {
		// The sender's view of the ranges is stale (a split moved key):
		// a command on the wrong range would find no intent or record.
		return nil, errStaleRange
	}
	if cmd.TxnPrepare != nil {
		// Only a prepare's revision orders the transaction (the commit
		// revision is the highest of them); the other commands write
		// nothing at their own revision and need no clock round.
		if _, err := n.store.ClockRound(ctx); err != nil {
			return nil, err
		}
	}
	cmd = proto.Clone(cmd).(*txnproto.Command)
	cmd.TxnKey = key
	res, err := r.Propose(ctx, cmd)
	if err != nil && res.Err == nil {
		return nil, err // not applied (or not known to be)
	}
	var conflict *rangeraft.IntentConflictError
	switch {
	case res.Err == nil:
	case errors.Is(res.Err, kvstore.ErrKeyOutsideSpan) && cmd.TxnPrepare == nil:
		return nil, errStaleRange // a split moved key: route again
	case errors.As(res.Err, &conflict), errors.Is(res.Err, rangeraft.ErrTxnAborted),
		errors.Is(res.Err, rangeraft.ErrTxnNotFound), errors.Is(res.Err, kvstore.ErrKeyOutsideSpan):
		return nil, status.Errorf(codes.Aborted, "%s: %v", txnRetryPrefix, res.Err)
	default:
		return nil, res.Err
	}
	out := &txnproto.TxnCommandResponse{Revision: res.Revision}
	if tr, ok := res.Response.(*txnproto.TxnCommandResult); ok {
		out.Result = tr
	}
	return out, nil
}

// txnServer is the peer-port TxnService: it runs commands forwarded by
// coordinators on the named range.
type txnServer struct {
	txnproto.UnimplementedTxnServiceServer
	n *Node
}

// TxnCommand implements txnproto.TxnServiceServer.
func (t *txnServer) TxnCommand(ctx context.Context, req *txnproto.TxnCommandRequest) (*txnproto.TxnCommandResponse, error) {
	if !rangeraft.IsTxnCommand(req.Command) {
		return nil, status.Error(codes.InvalidArgument, "rangekv: TxnCommand needs one transaction command")
	}
	s := &kvServer{n: t.n, peer: true}
	return onLeader(ctx, s, s.route(ctx, nil), true, func(ctx context.Context, r *rangeraft.Replica) (*txnproto.TxnCommandResponse, error) {
		return t.n.txnCommandLocal(ctx, r, req.Key, req.Command)
	}, func(context.Context, grpc.ClientConnInterface) (*txnproto.TxnCommandResponse, error) {
		return nil, status.Error(codes.Internal, "rangekv: peer requests are not forwarded")
	})
}

// intentResolver resolves intents whose coordinator has gone quiet, on
// the ranges this node leads, and forgets old finalized records whose
// participants it resolved (docs/transactions.md, "Recovery").
func (n *Node) intentResolver() (time.Duration, func()) {
	var mu sync.Mutex
	pushed := map[string]time.Time{}
	return 200 * time.Millisecond, func() {
		now := time.Now()
		for _, r := range n.store.Replicas() {
			leader := r.Status().IsLeader
			for _, in := range r.Intents() {
				if age := now.Sub(in.Since); age > 5*time.Second && age%(5*time.Second) < 200*time.Millisecond {
					n.log.Warn("intent unresolved", zap.Uint64("range-id", r.RangeID), zap.Bool("leader", leader),
						zap.String("txn", kvstore.TxnIDString(in.Intent.Txn.Id)), zap.Duration("age", age),
						zap.Int64("prepare-revision", in.Intent.PrepareRevision))
				}
			}
			if !leader {
				continue
			}
			for _, in := range r.Intents() {
				id := string(in.Intent.Txn.GetId())
				mu.Lock()
				last, seen := pushed[id]
				due := now.Sub(in.Since) > 500*time.Millisecond && (!seen || now.Sub(last) > 500*time.Millisecond)
				if due {
					pushed[id] = now
				}
				mu.Unlock()
				if due {
					// Concurrently, each bounded: a push that waits on a
					// dead anchor leader must not hold up the others.
					n.goBackground(func() { n.pushIntent(r, in.Intent) })
				}
			}
			for _, rec := range r.Records() {
				if rec.Record.Status != txnproto.TxnStatus_TXN_PENDING && now.Sub(rec.Since) > 5*time.Second {
					id := string(rec.Record.Txn.GetId())
					mu.Lock()
					last, seen := pushed[id]
					due := !seen || now.Sub(last) > 5*time.Second
					if due {
						pushed[id] = now
					}
					mu.Unlock()
					if due {
						n.goBackground(func() { n.finishRecord(rec.Record) })
					}
				}
			}
		}
		mu.Lock()
		for id, t := range pushed {
			if now.Sub(t) > time.Minute {
				delete(pushed, id)
			}
		}
		mu.Unlock()
	}
}

// pushIntent learns the fate of in's transaction from its record and
// resolves the intent on r's range accordingly. A pending record past its
// expiry is recovered (recoverTxn).
func (n *Node) pushIntent(r *rangeraft.Replica, in *txnproto.TxnIntent) {
	ctx, cancel := n.stopContext(2 * time.Second)
	defer cancel()
	res, _, err := n.txnCommand(ctx, in.Txn.AnchorKey, &txnproto.Command{TxnAbort: &txnproto.TxnAbortCommand{Txn: in.Txn}})
	if err != nil || res == nil || res.Record == nil {
		n.log.Warn("pushing a transaction failed", zap.Uint64("range-id", r.RangeID),
			zap.String("txn", kvstore.TxnIDString(in.Txn.Id)), zap.Error(err))
		return
	}
	rec := res.Record
	if rec.Status == txnproto.TxnStatus_TXN_PENDING {
		if time.Now().UnixMilli() <= rec.Txn.GetExpiryMs()+n.cfg.MaxClockOffset.Milliseconds() {
			return // its coordinator is at work
		}
		n.log.Info("recovering a transaction past its expiry", zap.String("txn", kvstore.TxnIDString(in.Txn.Id)),
			zap.Int("participants", len(rec.Participants)))
		if rec = n.recoverTxn(ctx, rec); rec == nil {
			return
		}
	}
	var resolve *txnproto.TxnResolveCommand
	switch rec.Status {
	case txnproto.TxnStatus_TXN_COMMITTED:
		resolve = &txnproto.TxnResolveCommand{TxnId: in.Txn.Id, Commit: true, CommitRevision: rec.CommitRevision, Writes: rec.Writes}
	case txnproto.TxnStatus_TXN_ABORTED:
		resolve = &txnproto.TxnResolveCommand{TxnId: in.Txn.Id}
	default:
		return
	}
	start, _ := r.Span()
	if _, _, err := n.txnCommand(ctx, start, &txnproto.Command{TxnResolve: resolve}); err != nil {
		n.log.Warn("resolving an intent failed", zap.Uint64("range-id", r.RangeID),
			zap.String("txn", kvstore.TxnIDString(in.Txn.Id)), zap.Error(err))
	} else {
		n.log.Info("resolved an intent left by its coordinator", zap.Uint64("range-id", r.RangeID),
			zap.String("txn", kvstore.TxnIDString(in.Txn.Id)), zap.Stringer("status", rec.Status))
	}
}

// recoverTxn decides a pending transaction past its expiry, when no
// prepare of it can apply any more: if every participant holds its
// intent, the transaction committed (its coordinator may have answered),
// and its writes are evaluated from the record's request as the
// coordinator evaluated them; otherwise it aborts. It returns the
// record as decided, nil when a participant could not be asked.
func (n *Node) recoverTxn(ctx context.Context, rec *txnproto.TxnRecord) *txnproto.TxnRecord {
	meta := rec.Txn
	parts := make([]*participant, len(rec.Participants))
	var wg sync.WaitGroup
	for i, key := range rec.Participants {
		parts[i] = &participant{key: key}
		wg.Add(1)
		go func() {
			defer wg.Done()
			parts[i].prep, _, parts[i].err = n.txnCommand(ctx, key, &txnproto.Command{TxnRecover: &txnproto.TxnRecoverCommand{
				TxnId: meta.Id, ExpiryMs: meta.ExpiryMs}})
		}()
	}
	wg.Wait()
	all := len(parts) > 0
	commitRev := int64(0)
	for _, p := range parts {
		if p.err != nil {
			n.log.Warn("recovering a transaction: a participant did not answer", zap.String("txn", kvstore.TxnIDString(meta.Id)),
				zap.Binary("key", p.key), zap.Error(p.err))
			return nil
		}
		all = all && p.prep.Prepared
		commitRev = max(commitRev, p.prep.PrepareRevision)
	}
	var writes []*txnproto.TxnWrite
	if all {
		req := &pb.TxnRequest{}
		err := proto.Unmarshal(rec.Request, req)
		if err == nil {
			// Writes depend on the compares alone (at the commit
			// revision): history is not needed to decide them.
			_, writes, err = n.evaluateTxn(req, parts, commitRev, nil)
		}
		all = err == nil && len(writes) > 0
	}
	var cmd *txnproto.Command
	if all {
		cmd = &txnproto.Command{TxnCommit: &txnproto.TxnCommitCommand{TxnId: meta.Id, CommitRevision: commitRev,
			Writes: writes, Participants: rec.Participants}}
	} else {
		cmd = &txnproto.Command{TxnAbort: &txnproto.TxnAbortCommand{Txn: meta, Recovered: true}}
	}
	res, _, err := n.txnCommand(ctx, meta.AnchorKey, cmd)
	if err != nil || res.GetRecord() == nil {
		n.log.Warn("recovering a transaction: deciding it failed", zap.String("txn", kvstore.TxnIDString(meta.Id)), zap.Error(err))
		return nil
	}
	n.log.Info("recovered a transaction past its expiry", zap.String("txn", kvstore.TxnIDString(meta.Id)),
		zap.Stringer("status", res.Record.Status))
	n.txnMetrics.recovered.WithLabelValues(strings.ToLower(strings.TrimPrefix(res.Record.Status.String(), "TXN_"))).Inc()
	return res.Record
}

// finishRecord resolves every participant of a finalized record and then
// forgets it (a resolve is idempotent).
func (n *Node) finishRecord(rec *txnproto.TxnRecord) {
	commit := rec.Status == txnproto.TxnStatus_TXN_COMMITTED
	if !commit && time.Now().UnixMilli() < rec.Txn.GetExpiryMs()+n.cfg.MaxClockOffset.Milliseconds() {
		// A prepare could still apply; the record must stay aborted.
		return
	}
	n.resolveParticipants(rec.Txn, commit, rec.CommitRevision, rec.Writes, rec.Participants)
}
