package rangeraft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/txnproto"
)

// Transport carries raft messages between nodes over gRPC on the peer
// URLs. Messages for one node travel as one RaftMessageBatch per
// scheduler pass on one long-lived stream; snapshots use their own stream.
type Transport struct {
	txnproto.UnimplementedRaftTransportServer
	s *Store

	mu    sync.RWMutex
	peers map[uint64]*peer
	stopc chan struct{}
}

type peer struct {
	nodeID uint64
	queue  chan outgoing
	conn   *grpc.ClientConn
	// Clock rounds (clockround.go): wantRound is the highest round to ask
	// the peer about, askQueued whether a batch that will carry it is
	// queued; echo is the highest round the peer asked this node about.
	wantRound atomic.Uint64
	askQueued atomic.Bool
	echo      atomic.Uint64
}

// outgoing is what one scheduler pass (or side-channel round) sends a
// node: raft messages with their production stamp, and closed timestamps.
type outgoing struct {
	msgs     []*txnproto.RaftMessage
	produced clockEvidence
	closed   []*txnproto.ClosedTimestamp
	// idle are idle-group updates, in order; idleLost reports a gap in
	// the receiver's (idlegroups.go).
	idle     []*txnproto.IdleGroupUpdate
	idleLost bool
	// proposals are client writes for ranges the receiver leads
	// (Replica.ProposeRequest); refusals answer the receiver's.
	proposals []*txnproto.ForwardedProposal
	refusals  []*txnproto.ProposalRefusal
}

// PeerConnectParams bound gRPC's reconnect backoff between nodes. The
// default grows to two minutes, which would keep a restarted peer cut off
// long after it is back; raft wants to reach it within a heartbeat or two
// (etcd's rafthttp redials every 100ms).
var PeerConnectParams = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
	MinConnectTimeout: time.Second,
}

// peerQueueLen bounds the batches queued for one node; beyond it messages
// are dropped and raft retransmits.
const peerQueueLen = 4096

// snapshotChunkBytes is the target size of one snapshot stream message.
const snapshotChunkBytes = 1 << 20

func newTransport(s *Store) *Transport {
	return &Transport{s: s, peers: map[uint64]*peer{}, stopc: make(chan struct{})}
}

// Register adds the RaftTransport service to a gRPC server.
func (t *Transport) Register(srv *grpc.Server) { txnproto.RegisterRaftTransportServer(srv, t) }

func (t *Transport) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-t.stopc:
	default:
		close(t.stopc)
	}
	for _, p := range t.peers {
		if p.conn != nil {
			p.conn.Close()
		}
	}
}

func (t *Transport) peer(nodeID uint64) (*peer, error) {
	t.mu.RLock()
	p, ok := t.peers[nodeID]
	t.mu.RUnlock()
	if ok {
		return p, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[nodeID]; ok {
		return p, nil
	}
	addr, err := t.s.cfg.Resolve(nodeID)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr, append(t.fromNodeInterceptors(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(PeerConnectParams),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.MaxCallSendMsgSize(math.MaxInt32)))...)
	if err != nil {
		return nil, err
	}
	p = &peer{nodeID: nodeID, queue: make(chan outgoing, peerQueueLen), conn: conn}
	t.peers[nodeID] = p
	go t.runPeer(p)
	return p, nil
}

// Conn returns the gRPC connection to a node's peer URL, dialing it on
// first use. Raft traffic, snapshots and requests forwarded to a range's
// leader all share it.
func (t *Transport) Conn(nodeID uint64) (*grpc.ClientConn, error) {
	p, err := t.peer(nodeID)
	if err != nil {
		return nil, err
	}
	return p.conn, nil
}

// send queues msgs, produced in a pass stamped produced, for nodeID
// without blocking.
func (t *Transport) send(nodeID uint64, msgs []*txnproto.RaftMessage, produced clockEvidence) {
	t.enqueue(nodeID, outgoing{msgs: msgs, produced: produced})
}

// askClock asks nodeID for its clock in round (clockround.go): the next
// batch to it carries the question, and one is queued unless a queued
// batch will already carry it.
func (t *Transport) askClock(nodeID, round uint64) {
	p, err := t.peer(nodeID)
	if err != nil {
		return
	}
	raiseTo(&p.wantRound, round)
	if p.askQueued.CompareAndSwap(false, true) {
		t.enqueue(nodeID, outgoing{})
	}
}

// answerClock notes that nodeID asked for this node's clock in round and
// queues a batch, which answers it.
func (t *Transport) answerClock(nodeID, round uint64) {
	p, err := t.peer(nodeID)
	if err != nil {
		return
	}
	if raiseTo(&p.echo, round) {
		t.enqueue(nodeID, outgoing{})
	}
}

// raiseTo raises v to x and reports whether it rose.
func raiseTo(v *atomic.Uint64, x uint64) bool {
	for {
		old := v.Load()
		if old >= x {
			return false
		}
		if v.CompareAndSwap(old, x) {
			return true
		}
	}
}

// enqueue queues out for nodeID without blocking and reports whether it
// did (false: the peer is unknown or its queue is full, and out is
// dropped).
func (t *Transport) enqueue(nodeID uint64, out outgoing) bool {
	p, err := t.peer(nodeID)
	if err != nil {
		t.s.log.Warn("cannot resolve peer", zap.Uint64("node-id", nodeID), zap.Error(err))
		return false
	}
	select {
	case p.queue <- out:
		return true
	default:
		t.s.metrics.droppedMessages.Add(float64(len(out.msgs)))
		return false
	}
}

func (t *Transport) runPeer(p *peer) {
	client := txnproto.NewRaftTransportClient(p.conn)
	backoff := 50 * time.Millisecond
	// One context for the peer's lifetime; a broken stream is replaced.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-t.stopc
		cancel()
	}()
	var stream txnproto.RaftTransport_RaftBatchesClient
	for {
		var out outgoing
		select {
		case <-t.stopc:
			return
		case out = <-p.queue:
		}
		msgs, produced, closed, idle, idleLost := out.msgs, out.produced, out.closed, out.idle, out.idleLost
		proposals, refusals := out.proposals, out.refusals
	drain:
		for len(msgs)+len(proposals) < 4096 {
			select {
			case more := <-p.queue:
				msgs = append(msgs, more.msgs...)
				closed = append(closed, more.closed...)
				idle = append(idle, more.idle...)
				idleLost = idleLost || more.idleLost
				proposals = append(proposals, more.proposals...)
				refusals = append(refusals, more.refusals...)
				// The oldest pass's stamp vouches for all the messages.
				// (A pass without a stamp sent nothing that needs one.)
				if len(more.msgs) > 0 && more.produced.stamp > 0 && (produced.stamp == 0 || more.produced.stamp < produced.stamp) {
					produced = more.produced
				}
			default:
				break drain
			}
		}
		if len(msgs) == 0 {
			produced = clockEvidence{}
		}
		if stream == nil {
			var err error
			stream, err = client.RaftBatches(ctx)
			if err != nil {
				stream = nil
				// The batch is dropped: a clock question it was to
				// carry must queue another.
				p.askQueued.Store(false)
				t.unreachable(p.nodeID, msgs)
				t.s.refuseUnsent(proposals)
				t.sleep(backoff)
				backoff = min(backoff*2, time.Second)
				continue
			}
		}
		// The epoch is read before the clock: a vote raising the epoch
		// after the read leaves in a batch stamped above this one's. So
		// are the clock round fields: the stamp is read after the
		// question this batch answers arrived, and a round started after
		// askQueued is cleared finds it clear and queues another batch.
		p.askQueued.Store(false)
		round, echo := p.wantRound.Load(), p.echo.Load()
		if !t.s.clockSettled() {
			echo = 0 // no answers until the clock can vouch (clockround.go)
		}
		epoch := t.s.voteEpoch.Load()
		batch := &txnproto.RaftMessageBatch{
			ClusterId:         t.s.cfg.ClusterID,
			FromNode:          t.s.cfg.NodeID,
			ToNode:            p.nodeID,
			VoteEpoch:         epoch,
			Timestamp:         t.s.cfg.Clock.Now(),
			WallTimeMs:        t.s.cfg.Clock.WallMS(),
			Messages:          msgs,
			ProducedTimestamp: produced.stamp,
			ProducedVoteEpoch: produced.epoch,
			Closed:            closed,
			ClockRound:        round,
			ClockEcho:         echo,
			IdleGroups:        idle,
			IdleGroupsLost:    idleLost,
			Proposals:         proposals,
			ProposalRefusals:  refusals,
		}
		if err := stream.Send(batch); err != nil {
			// Find out why (a rejected cluster ID comes back as the
			// stream's status).
			_, rerr := stream.CloseAndRecv()
			if rerr != nil && status.Code(rerr) == codes.FailedPrecondition {
				t.s.log.Error("peer rejected raft messages", zap.Uint64("node-id", p.nodeID), zap.Error(rerr))
			}
			stream = nil
			t.unreachable(p.nodeID, msgs)
			t.sleep(backoff)
			backoff = min(backoff*2, time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
	}
}

func (t *Transport) sleep(d time.Duration) {
	select {
	case <-t.stopc:
	case <-time.After(d):
	}
}

// unreachable tells raft that messages to a node failed, so it stops
// pipelining to it until it answers again.
func (t *Transport) unreachable(nodeID uint64, msgs []*txnproto.RaftMessage) {
	seen := map[uint64]bool{}
	for _, m := range msgs {
		if seen[m.RangeId] {
			continue
		}
		seen[m.RangeId] = true
		if r := t.s.Replica(m.RangeId); r != nil {
			r.mu.Lock()
			if id := r.replicaOfNodeLocked(nodeID); id != 0 {
				r.raw.ReportUnreachable(id)
			}
			r.mu.Unlock()
		}
	}
}

// pingPeers queues an empty batch for every node that shares a range
// with this one: the per-node-pair liveness signal quiesced followers rely
// on (see quiesce.go).
func (t *Transport) pingPeers() {
	t.s.mu.RLock()
	peers := t.s.peers
	t.s.mu.RUnlock()
	for _, node := range peers {
		t.enqueue(node, outgoing{})
	}
}

// errClusterMismatch is returned to peers of another cluster.
func (t *Transport) checkCluster(clusterID, toNode uint64) error {
	if clusterID != t.s.cfg.ClusterID {
		return status.Errorf(codes.FailedPrecondition,
			"request cluster ID mismatch: got %x, want %x (is this node's data directory from another cluster?)",
			clusterID, t.s.cfg.ClusterID)
	}
	if toNode != t.s.cfg.NodeID {
		return status.Errorf(codes.FailedPrecondition, "message for node %x reached node %x", toNode, t.s.cfg.NodeID)
	}
	return nil
}

// RaftBatches implements the RaftTransport service.
func (t *Transport) RaftBatches(stream txnproto.RaftTransport_RaftBatchesServer) error {
	var delayed chan delayedBatch
	defer func() {
		if delayed != nil {
			close(delayed)
		}
	}()
	for {
		batch, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&txnproto.BatchAck{})
		}
		if err != nil {
			return err
		}
		if err := t.checkCluster(batch.ClusterId, batch.ToNode); err != nil {
			t.s.log.Warn("rejecting raft messages", zap.Uint64("from-node", batch.FromNode), zap.Error(err))
			return err
		}
		if droppedFrom(batch.FromNode) {
			continue // a partition injected by a failpoint
		}
		if d := t.receiveDelay(batch.FromNode); d > 0 {
			if delayed == nil {
				delayed = make(chan delayedBatch, peerQueueLen)
				go t.handleDelayed(delayed)
			}
			delayed <- delayedBatch{batch: batch, at: time.Now().Add(d)}
			continue
		}
		t.handleBatch(batch)
	}
}

// delayedBatch is a batch held back by StoreConfig.ReceiveDelay until at.
type delayedBatch struct {
	batch *txnproto.RaftMessageBatch
	at    time.Time
}

func (t *Transport) receiveDelay(from uint64) time.Duration {
	if t.s.cfg.ReceiveDelay == nil {
		return 0
	}
	return t.s.cfg.ReceiveDelay(from)
}

// handleDelayed handles held-back batches in arrival order, each at its
// time.
func (t *Transport) handleDelayed(ch <-chan delayedBatch) {
	for d := range ch {
		time.Sleep(time.Until(d.at))
		t.handleBatch(d.batch)
	}
}

// handleBatch folds a peer's batch into this node: its clock readings,
// its raft messages and its closed timestamps.
func (t *Transport) handleBatch(batch *txnproto.RaftMessageBatch) {
	t.s.live.record(batch.FromNode, t.s.cfg.Clock.Offset(batch.WallTimeMs), batch.WallTimeMs > 0,
		clockEvidence{stamp: batch.Timestamp, epoch: batch.VoteEpoch})
	if err := t.s.cfg.Clock.Update(batch.Timestamp); err != nil {
		// The node's clock monitor reports lasting skew (node/clock.go).
		t.s.log.Debug("clock offset from peer", zap.Uint64("from-node", batch.FromNode), zap.Error(err))
	}
	if batch.ClockRound > 0 {
		t.answerClock(batch.FromNode, batch.ClockRound)
	}
	t.s.rounds.observe(batch.FromNode, batch.ClockEcho, batch.Timestamp, t.s.roundNeed())
	for _, rm := range batch.Messages {
		m := &raftpb.Message{}
		if err := proto.Unmarshal(rm.Message, m); err != nil {
			t.s.log.Warn("malformed raft message", zap.Uint64("from-node", batch.FromNode), zap.Error(err))
			continue
		}
		t.s.HandleRaftMessage(rm.RangeId, batch.FromNode, m, rm.Quiesce,
			clockEvidence{stamp: batch.ProducedTimestamp, epoch: batch.ProducedVoteEpoch})
	}
	if batch.IdleGroupsLost {
		t.s.idle.markLost(batch.FromNode)
	}
	if len(batch.IdleGroups) > 0 {
		t.s.idle.apply(t.s, batch.FromNode, batch.IdleGroups)
	}
	// Forwarded proposals after the clock update above: the sender's
	// clock round is in the batch's timestamp (Replica.proposeForwarded).
	var refusals []*txnproto.ProposalRefusal
	for _, fp := range batch.Proposals {
		r := t.s.Replica(fp.RangeId)
		if r == nil {
			refusals = append(refusals, &txnproto.ProposalRefusal{RangeId: fp.RangeId, Id: forwardedID(fp)})
			continue
		}
		if ref := r.proposeForwarded(fp, batch.FromNode); ref != nil {
			refusals = append(refusals, ref)
		}
	}
	if len(refusals) > 0 {
		t.enqueue(batch.FromNode, outgoing{refusals: refusals})
	}
	for _, ref := range batch.ProposalRefusals {
		if r := t.s.Replica(ref.RangeId); r != nil {
			r.refuseProposal(ref.Id, ref.LeaderNode)
		}
	}
	// Every close first, then the pokes (see publishClosed).
	var moved []*Replica
	for _, ct := range batch.Closed {
		if r := t.s.Replica(ct.RangeId); r != nil && r.installClosed(ct.Revision, ct.AppliedIndex) {
			moved = append(moved, r)
		}
	}
	pokeAll(moved)
}

// sendSnapshot streams the range's current state to the recipient of m (a
// MsgSnap) and reports the outcome to raft. The snapshot's metadata is
// rewritten to the applied state of the engine snapshot actually sent.
func (t *Transport) sendSnapshot(r *Replica, m *raftpb.Message) {
	status := raft.SnapshotFinish
	defer func() {
		r.mu.Lock()
		r.raw.ReportSnapshot(m.GetTo(), status)
		r.mu.Unlock()
		t.s.enqueue(r.RangeID)
	}()
	r.mu.Lock()
	node := r.nodeOfReplicaLocked(m.GetTo())
	confState := proto.Clone(r.st.confState).(*raftpb.ConfState)
	r.mu.Unlock()
	if err := t.streamSnapshot(r, node, m, confState); err != nil {
		status = raft.SnapshotFailure
		r.log.Warn("sending snapshot failed", zap.Uint64("to-node", node), zap.Error(err))
	}
}

func (t *Transport) streamSnapshot(r *Replica, node uint64, m *raftpb.Message, cs *raftpb.ConfState) error {
	p, err := t.peer(node)
	if err != nil {
		return err
	}
	snap := t.s.db.NewSnapshot()
	defer snap.Close()
	applied := &txnproto.AppliedState{}
	if err := getProto(snap, kvstore.RangeAppliedStateKey(r.RangeID), applied); err != nil {
		return err
	}
	desc := &txnproto.RangeDescriptor{}
	if err := getProto(snap, kvstore.RangeDescriptorKey(r.RangeID), desc); err != nil {
		return err
	}
	var stats []byte
	if v, closer, err := snap.Get(kvstore.RangeStatsKey(r.RangeID)); err == nil {
		stats = append([]byte(nil), v...)
		closer.Close()
	}
	msg := proto.Clone(m).(*raftpb.Message)
	msg.Snapshot = &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
		Index: proto.Uint64(applied.Index), Term: proto.Uint64(applied.Term), ConfState: cs,
	}}
	msgData, err := proto.Marshal(msg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	go func() {
		select {
		case <-t.stopc:
			cancel()
		case <-ctx.Done():
		}
	}()
	stream, err := txnproto.NewRaftTransportClient(p.conn).Snapshot(ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	chunk := &txnproto.SnapshotChunk{
		ClusterId: t.s.cfg.ClusterID, FromNode: t.s.cfg.NodeID, ToNode: node, RangeId: r.RangeID,
		Message: msgData, AppliedState: applied, Descriptor_: desc, Stats: stats,
	}
	it, err := snap.NewIter(&pebble.IterOptions{
		LowerBound: kvstore.MVCCSpanBound(desc.StartKey),
		UpperBound: kvstore.MVCCSpanBound(desc.EndKey),
	})
	if err != nil {
		return err
	}
	defer it.Close()
	size, total, keys := 0, 0, 0
	for valid := it.First(); valid; valid = it.Next() {
		kv := &txnproto.KeyValue{Key: append([]byte(nil), it.Key()...), Value: append([]byte(nil), it.Value()...)}
		chunk.Kvs = append(chunk.Kvs, kv)
		size += len(kv.Key) + len(kv.Value)
		keys++
		if size >= snapshotChunkBytes {
			if err := stream.Send(chunk); err != nil {
				return err
			}
			total += size
			chunk, size = &txnproto.SnapshotChunk{}, 0
		}
	}
	if err := it.Error(); err != nil {
		return err
	}
	// The range's transaction state (txn.go) travels with its data.
	for _, bounds := range [][2][]byte{spanOf(kvstore.IntentSpan(r.RangeID)), spanOf(kvstore.TxnRecordSpan(r.RangeID))} {
		tit, err := snap.NewIter(&pebble.IterOptions{LowerBound: bounds[0], UpperBound: bounds[1]})
		if err != nil {
			return err
		}
		for valid := tit.First(); valid; valid = tit.Next() {
			kv := &txnproto.KeyValue{Key: append([]byte(nil), tit.Key()...), Value: append([]byte(nil), tit.Value()...)}
			chunk.Kvs = append(chunk.Kvs, kv)
			size += len(kv.Key) + len(kv.Value)
		}
		if err := tit.Close(); err != nil {
			return err
		}
	}
	chunk.Final = true
	total += size
	if err := stream.Send(chunk); err != nil {
		return err
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	if !resp.Applied {
		return fmt.Errorf("recipient refused snapshot: %s", resp.Error)
	}
	r.log.Info("sent snapshot", zap.Uint64("to-node", node), zap.Uint64("index", applied.Index),
		zap.Int("versions", keys), zap.Int("bytes", total), zap.Duration("took", time.Since(start)))
	return nil
}

// Snapshot implements the RaftTransport service: it assembles a snapshot
// stream and steps its MsgSnap into the replica, staging the data to be
// written when raft accepts it.
func (t *Transport) Snapshot(stream txnproto.RaftTransport_SnapshotServer) error {
	var header *txnproto.SnapshotChunk
	var kvs []*txnproto.KeyValue
	for {
		c, err := stream.Recv()
		if err != nil {
			return err
		}
		if header == nil {
			if err := t.checkCluster(c.ClusterId, c.ToNode); err != nil {
				return err
			}
			if c.AppliedState == nil || c.Descriptor_ == nil || len(c.Message) == 0 {
				return status.Error(codes.InvalidArgument, "snapshot stream without header")
			}
			header = c
		}
		kvs = append(kvs, c.Kvs...)
		if c.Final {
			break
		}
	}
	m := &raftpb.Message{}
	if err := proto.Unmarshal(header.Message, m); err != nil || m.GetType() != raftpb.MsgSnap || m.Snapshot == nil {
		return stream.SendAndClose(&txnproto.SnapshotResponse{Error: "malformed snapshot message"})
	}
	if m.GetSnapshot().GetMetadata().GetIndex() != header.AppliedState.Index {
		return stream.SendAndClose(&txnproto.SnapshotResponse{Error: "snapshot metadata does not match its applied state"})
	}
	if droppedFrom(header.FromNode) {
		return stream.SendAndClose(&txnproto.SnapshotResponse{Error: "partitioned by a failpoint"})
	}
	if err := checkSnapshotKeys(header.RangeId, header.Descriptor_, kvs); err != nil {
		return stream.SendAndClose(&txnproto.SnapshotResponse{Error: err.Error()})
	}
	r := t.s.Replica(header.RangeId)
	if r == nil {
		r = t.s.newUninitialized(header.RangeId, m.GetTo())
	}
	if r == nil {
		return stream.SendAndClose(&txnproto.SnapshotResponse{Error: fmt.Sprintf("no replica of range %d", header.RangeId)})
	}
	// A snapshot may not cover keys another local replica holds: that
	// replica has not applied the split (or merge) that separated them yet,
	// and will hand the keys over through its own log.
	if o := t.s.overlapsInitialized(header.Descriptor_.StartKey, header.Descriptor_.EndKey, header.RangeId); o != nil {
		return stream.SendAndClose(&txnproto.SnapshotResponse{Error: fmt.Sprintf(
			"snapshot of range %d overlaps local range %d; retry after it splits", header.RangeId, o.RangeID)})
	}
	r.mu.Lock()
	if m.GetFrom() != 0 {
		r.peerNodes[m.GetFrom()] = header.FromNode
	}
	r.staged = &stagedSnapshot{
		index: header.AppliedState.Index, applied: header.AppliedState,
		desc: header.Descriptor_, stats: header.Stats, kvs: kvs,
	}
	err := r.raw.Step(m)
	r.mu.Unlock()
	t.s.enqueue(r.RangeID)
	if err != nil {
		return stream.SendAndClose(&txnproto.SnapshotResponse{Error: err.Error()})
	}
	return stream.SendAndClose(&txnproto.SnapshotResponse{Applied: true})
}

// checkSnapshotKeys refuses a snapshot carrying a key outside what a
// snapshot of the range may write: the MVCC data of its span and its
// transaction state (intents and records).
func checkSnapshotKeys(rangeID uint64, desc *txnproto.RangeDescriptor, kvs []*txnproto.KeyValue) error {
	lo, hi := kvstore.MVCCSpanBound(desc.StartKey), kvstore.MVCCSpanBound(desc.EndKey)
	is, ie := kvstore.IntentSpan(rangeID)
	ts, te := kvstore.TxnRecordSpan(rangeID)
	for _, kv := range kvs {
		k := kv.Key
		if bytes.Compare(k, lo) >= 0 && bytes.Compare(k, hi) < 0 ||
			bytes.Compare(k, is) >= 0 && bytes.Compare(k, ie) < 0 ||
			bytes.Compare(k, ts) >= 0 && bytes.Compare(k, te) < 0 {
			continue
		}
		return fmt.Errorf("snapshot of range %d carries key %q outside the range", rangeID, k)
	}
	return nil
}

// forwardedID returns the command ID of a forwarded proposal (0 if it
// does not decode).
func forwardedID(fp *txnproto.ForwardedProposal) uint64 {
	cmd := &txnproto.Command{}
	if proto.Unmarshal(fp.Command, cmd) != nil {
		return 0
	}
	return cmd.Id
}

// refuseUnsent fails this node's forwarded proposals that never left it
// (the stream to their leader could not be opened).
func (s *Store) refuseUnsent(proposals []*txnproto.ForwardedProposal) {
	for _, fp := range proposals {
		if r := s.Replica(fp.RangeId); r != nil {
			r.refuseProposal(forwardedID(fp), 0)
		}
	}
}
