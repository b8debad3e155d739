package rangeraft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/txnproto"
)

// NotLeaderError is returned by Propose and ReadIndex on a replica that is
// not its range's leader. LeaderNode is the node believed to lead, 0 when
// unknown. Callers route the request there and retry.
type NotLeaderError struct {
	RangeID    uint64
	LeaderNode uint64
}

// Error implements error.
func (e *NotLeaderError) Error() string {
	if e.LeaderNode == 0 {
		return fmt.Sprintf("range %d: no leader", e.RangeID)
	}
	return fmt.Sprintf("range %d: not leader; leader is node %x", e.RangeID, e.LeaderNode)
}

// ApplyResult is the outcome of one applied command, delivered to the
// proposer. Response is the etcd response (PutResponse, DeleteRangeResponse,
// TxnResponse or CompactionResponse) without its header.
type ApplyResult struct {
	Revision int64
	Term     uint64
	Response proto.Message
	Err      error
}

type proposal struct {
	ch chan ApplyResult
}

// proposalKey names a proposal in the leader's inflight table: command
// IDs are unique per proposer node only.
type proposalKey struct{ node, id uint64 }

type readWaiter struct {
	index uint64
	ch    chan error
}

type stagedSnapshot struct {
	index   uint64
	applied *txnproto.AppliedState
	desc    *txnproto.RangeDescriptor
	stats   []byte
	kvs     []*txnproto.KeyValue
}

// Replica is one node's copy of a range, driven by one raft.RawNode.
// Every field below mu is guarded by it; raw and st are only touched with
// mu held. The scheduler goroutine is the only writer of persistent state.
type Replica struct {
	store   *Store
	RangeID uint64
	// startKey is the range's start span key; it never changes (a split
	// keeps the left-hand start), so it is read without mu.
	startKey []byte
	feed     *Feed
	log      *zap.Logger

	mu            sync.Mutex
	raw           *raft.RawNode
	st            *raftStorage
	replicaID     uint64
	desc          *txnproto.RangeDescriptor
	keyspace      kvstore.Keyspace
	stats         kvstore.Stats
	leaderReplica uint64
	term          uint64
	// peerNodes maps peer replica IDs to nodes as learned from incoming
	// messages (an uninitialized replica has no descriptor to ask).
	peerNodes     map[uint64]uint64
	proposals     map[uint64]*proposal
	pendingReads  []*readWaiter
	inflightReads map[string][]*readWaiter
	indexWaiters  []*readWaiter
	readSeq       uint64
	staged        *stagedSnapshot
	physicalDone  int64         // newest revision physically compacted
	compactCond   chan struct{} // closed and replaced when physicalDone moves
	compactTarget chan int64
	// appliedc, when not nil, is closed at the next apply batch or
	// readable-revision change (appliedWaitLocked).
	appliedc chan struct{}
	// quiesced replicas are not ticked (quiesce.go); idleTicks counts a
	// leader's idle ticks towards quiescing.
	quiesced  bool
	idleTicks int
	// campaignTicks counts down the ticks during which a right-hand
	// replica that campaigned at its split campaigns again on every tick
	// until it leads (see splitCampaignTicks).
	campaignTicks int
	// txns is the range's transaction state (txn.go), replaced whole by
	// apply; intentSeen and recordSeen give when this node first saw each
	// intent and record applied. held are applied events not yet
	// published because an unresolved prepare is below them (scheduler
	// goroutine only, not under mu).
	txns       *txnTable
	intentSeen map[string]time.Time
	recordSeen map[string]time.Time
	held       []FeedEntry
	// destroyed marks a replica object the store replaced (an
	// uninitialized replica a split initialized); the scheduler skips it.
	destroyed bool

	// Side-channel closed timestamps (closedts.go). As leader of
	// leaderTerm (0 when not leading), entries before leaderSince are of
	// earlier terms; inflight holds this leader's proposals not yet
	// applied, by command ID; evidence the newest clock evidence of each
	// voter in leaderTerm. sideClosed is the side-channel closed revision
	// in force (every entry up to the applied index is applied, and none
	// after applies at or below it); pendingCloses await their index.
	leaderTerm    uint64
	leaderSince   uint64
	inflight      map[proposalKey]inflightProposal
	evidence      map[uint64]clockEvidence
	sideClosed    int64
	pendingCloses []pendingClose
	evidenceWake  int64 // HLC time of the last wake to renew evidence
	// leading mirrors leaderTerm != 0, and idle "quiesced leader", without
	// mu: side-channel rounds skip followers, and quiesced leaders most
	// rounds, without touching their lock.
	leading atomic.Bool
	idle    atomic.Bool

	// Idle groups (idlegroups.go). idleGroup is the group of this node
	// the range belongs to as a quiesced range it leads (grouped mirrors
	// it without mu); grp is the group clock the replica reads, from its
	// own node's group or its leader's, once it has applied through
	// grpIndex. readersWaiting mirrors appliedc != nil.
	idleGroup      *idleGroup
	grouped        atomic.Bool
	grp            *groupClock
	grpIndex       uint64
	readersWaiting atomic.Bool

	// requests counts requests served by this replica; qps is their rate
	// over the last qpsWindow, refreshed by the store (float64 bits).
	requests atomic.Int64
	qps      atomic.Uint64

	sampleMu   sync.Mutex
	samples    [512][]byte
	sampleNext int
}

// Descriptor returns a copy of the replica's range descriptor.
func (r *Replica) Descriptor() *txnproto.RangeDescriptor {
	r.mu.Lock()
	defer r.mu.Unlock()
	return proto.Clone(r.desc).(*txnproto.RangeDescriptor)
}

// SpanGeneration returns the range's span (span keys) and descriptor
// generation from one read of its descriptor, without copying it: what
// watchers compare around each pull to notice a split.
func (r *Replica) SpanGeneration() (start, end []byte, generation uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.desc.StartKey, r.desc.EndKey, r.desc.Generation
}

// Feed returns the range's applied-event feed.
func (r *Replica) Feed() *Feed { return r.feed }

// Keyspace says which namespace the range's data lives in.
func (r *Replica) Keyspace() kvstore.Keyspace { return r.keyspace }

// Status is a replica's raft and apply state, for Maintenance.Status,
// metrics and routing.
type Status struct {
	RangeID         uint64
	ReplicaID       uint64
	LeaderNode      uint64 // 0 when unknown
	IsLeader        bool
	Term            uint64
	CommitIndex     uint64
	AppliedIndex    uint64
	Revision        int64
	CompactRevision int64
	// ClosedRevision is the highest revision the range has promised never
	// to write at or below, through its log or the side channel.
	ClosedRevision int64
	Quiesced       bool
	// IdleGrouped: the replica reads an idle group's closed timestamp
	// (idlegroups.go).
	IdleGrouped bool
	Stats       kvstore.Stats
}

// Status returns the replica's current status.
func (r *Replica) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	bs := r.raw.BasicStatus()
	return Status{
		RangeID:         r.RangeID,
		ReplicaID:       r.replicaID,
		LeaderNode:      r.nodeOfReplicaLocked(bs.Lead),
		IsLeader:        bs.RaftState == raft.StateLeader,
		Term:            bs.GetTerm(),
		CommitIndex:     bs.GetCommit(),
		AppliedIndex:    r.st.applied.Index,
		Revision:        r.st.applied.Revision,
		CompactRevision: r.st.applied.CompactRevision,
		ClosedRevision:  r.cappedLocked(max(r.st.applied.ClosedRevision, r.sideClosed, r.groupClosedLocked())),
		Quiesced:        r.quiesced,
		IdleGrouped:     r.grp != nil && r.st.applied.Index >= r.grpIndex,
		Stats:           r.stats,
	}
}

func (r *Replica) nodeOfReplicaLocked(replicaID uint64) uint64 {
	if replicaID == 0 {
		return 0
	}
	for _, rd := range r.desc.Replicas {
		if rd.ReplicaId == replicaID {
			return rd.NodeId
		}
	}
	// An uninitialized replica knows its peers only from their messages.
	return r.peerNodes[replicaID]
}

func (r *Replica) replicaOfNodeLocked(nodeID uint64) uint64 {
	for _, rd := range r.desc.Replicas {
		if rd.NodeId == nodeID {
			return rd.ReplicaId
		}
	}
	return 0
}

func (r *Replica) notLeaderLocked() error {
	if r.raw.BasicStatus().RaftState == raft.StateLeader {
		return nil
	}
	return &NotLeaderError{RangeID: r.RangeID, LeaderNode: r.nodeOfReplicaLocked(r.raw.BasicStatus().Lead)}
}

// CheckLeader returns *NotLeaderError unless this replica leads its
// range now (it may stop leading at any time after).
func (r *Replica) CheckLeader() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.notLeaderLocked()
}

// Propose replicates cmd through the range's raft log and waits until it
// has applied on this replica. It returns *NotLeaderError without
// proposing when this replica does not lead. A context error after the
// proposal was made is ambiguous: the command may still apply.
func (r *Replica) Propose(ctx context.Context, cmd *txnproto.Command) (ApplyResult, error) {
	return r.propose(ctx, cmd, false, false, nil)
}

// ProposeRequest is Propose for a client write, counted under key (its
// first key) in the leader's load statistics. With forward set, a follower
// that knows its leader hands cmd to the leader's node inside the raft
// stream (a ForwardedProposal, as etcd followers forward proposals in
// MsgProp); the leader stamps and proposes it, and the call waits until
// the command has applied on this replica and answers with this replica's
// apply result, which every replica computes alike. Errors:
// *NotLeaderError when this replica does not lead and does not forward,
// no leader is known, the transport cannot queue the command, or the
// leader refused it (in every case it did not enter the log); a context
// error after the command left is ambiguous, as for Propose.
func (r *Replica) ProposeRequest(ctx context.Context, cmd *txnproto.Command, key []byte, forward bool) (ApplyResult, error) {
	return r.propose(ctx, cmd, true, forward, key)
}

// propose is Propose; a request (ProposeRequest) is counted under key on
// the leader, and forwarded from a follower when forward is set.
func (r *Replica) propose(ctx context.Context, cmd *txnproto.Command, request, forward bool, key []byte) (ApplyResult, error) {
	cmd.ProposerNode = r.store.cfg.NodeID
	cmd.Id = r.store.proposalSeq.Add(1)
	p := &proposal{ch: make(chan ApplyResult, 1)}
	r.mu.Lock()
	if err := r.notLeaderLocked(); err != nil {
		var nl *NotLeaderError
		if !forward || !errors.As(err, &nl) || nl.LeaderNode == 0 || nl.LeaderNode == r.store.cfg.NodeID {
			r.mu.Unlock()
			return ApplyResult{}, err
		}
		data, err := proto.Marshal(cmd) // no timestamp: the leader stamps it
		if err != nil {
			r.mu.Unlock()
			return ApplyResult{}, err
		}
		r.proposals[cmd.Id] = p
		r.mu.Unlock()
		fp := &txnproto.ForwardedProposal{RangeId: r.RangeID, Command: data, Key: key}
		if !r.store.transport.enqueue(nl.LeaderNode, outgoing{proposals: []*txnproto.ForwardedProposal{fp}}) {
			r.mu.Lock()
			delete(r.proposals, cmd.Id)
			r.mu.Unlock()
			return ApplyResult{}, nl
		}
		r.store.metrics.proposalsForwarded.Inc()
		return r.waitProposal(ctx, cmd.Id, p)
	}
	if request {
		r.RecordRequest(key)
	}
	if err := r.stampAndProposeLocked(cmd); err != nil {
		r.mu.Unlock()
		r.store.metrics.proposalsFailed.Inc()
		if errors.Is(err, raft.ErrProposalDropped) {
			return ApplyResult{}, &NotLeaderError{RangeID: r.RangeID}
		}
		return ApplyResult{}, err
	}
	r.proposals[cmd.Id] = p
	r.mu.Unlock()
	r.store.enqueue(r.RangeID)
	return r.waitProposal(ctx, cmd.Id, p)
}

// stampAndProposeLocked stamps cmd from the clock and hands it to raft as
// leader, tracked in inflight until it applies. It runs under mu, so that
// a side-channel close (which also holds mu) either sees the proposal in
// inflight or closes below its timestamp (closedts.go).
func (r *Replica) stampAndProposeLocked(cmd *txnproto.Command) error {
	// Out of its idle group before it is stamped (idlegroups.go).
	r.unquiesceLocked()
	cmd.Timestamp = r.store.cfg.Clock.Now()
	data, err := proto.Marshal(cmd)
	if err != nil {
		return err
	}
	pk := proposalKey{node: cmd.ProposerNode, id: cmd.Id}
	r.inflight[pk] = inflightProposal{ts: cmd.Timestamp, term: r.raw.BasicStatus().GetTerm()}
	if err := r.raw.Propose(data); err != nil {
		delete(r.inflight, pk)
		return err
	}
	return nil
}

// waitProposal waits for this node's proposal id to apply here.
func (r *Replica) waitProposal(ctx context.Context, id uint64, p *proposal) (ApplyResult, error) {
	r.store.metrics.proposalsPending.Inc()
	defer r.store.metrics.proposalsPending.Dec()
	select {
	case res := <-p.ch:
		return res, res.Err
	case <-ctx.Done():
		r.mu.Lock()
		delete(r.proposals, id)
		r.mu.Unlock()
		r.store.metrics.proposalsFailed.Inc()
		return ApplyResult{}, ctx.Err()
	}
}

// proposeForwarded stamps and proposes, as leader, a command another
// node's replica forwarded (ProposeRequest), exactly as propose does this
// node's own, except that nobody here waits for it. It returns a refusal
// for the sender when it did not propose the command. The batch that
// carried it has already raised this node's clock to the sender's, which
// ran its clock round before sending (docs/revisions.md), so the stamp is
// above every revision acknowledged before the request arrived there.
func (r *Replica) proposeForwarded(fp *txnproto.ForwardedProposal, from uint64) *txnproto.ProposalRefusal {
	cmd := &txnproto.Command{}
	if err := proto.Unmarshal(fp.Command, cmd); err != nil || cmd.ProposerNode != from || cmd.Timestamp != 0 ||
		(cmd.Put == nil && cmd.DeleteRange == nil && cmd.Txn == nil && cmd.Compact == nil) {
		r.log.Warn("refusing a malformed forwarded proposal", zap.Uint64("from-node", from), zap.Error(err))
		return &txnproto.ProposalRefusal{RangeId: r.RangeID, Id: cmd.Id}
	}
	refuse := func(leader uint64) *txnproto.ProposalRefusal {
		r.store.metrics.proposalsFailed.Inc()
		return &txnproto.ProposalRefusal{RangeId: r.RangeID, Id: cmd.Id, LeaderNode: leader}
	}
	r.mu.Lock()
	if err := r.notLeaderLocked(); err != nil {
		r.mu.Unlock()
		var nl *NotLeaderError
		errors.As(err, &nl)
		return refuse(nl.LeaderNode)
	}
	r.RecordRequest(fp.Key)
	if err := r.stampAndProposeLocked(cmd); err != nil {
		r.mu.Unlock()
		return refuse(0)
	}
	r.mu.Unlock()
	r.store.enqueue(r.RangeID)
	return nil
}

// refuseProposal fails this node's forwarded proposal id: its leader did
// not propose it.
func (r *Replica) refuseProposal(id, leader uint64) {
	r.mu.Lock()
	p, ok := r.proposals[id]
	delete(r.proposals, id)
	r.mu.Unlock()
	if ok {
		p.ch <- ApplyResult{Err: &NotLeaderError{RangeID: r.RangeID, LeaderNode: leader}}
	}
}

// ReadIndex waits until this replica, as leader, may serve a linearizable
// read: raft confirmed leadership at a commit index (raft thesis §6.4) and
// the replica has applied up to it. It returns *NotLeaderError on
// followers.
func (r *Replica) ReadIndex(ctx context.Context) error {
	w := &readWaiter{ch: make(chan error, 1)}
	r.mu.Lock()
	if err := r.notLeaderLocked(); err != nil {
		r.mu.Unlock()
		return err
	}
	r.pendingReads = append(r.pendingReads, w)
	r.unquiesceLocked()
	r.mu.Unlock()
	r.store.enqueue(r.RangeID)
	select {
	case err := <-w.ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ReadView is a consistent engine view of a replica for serving reads: a
// Pebble snapshot and the revisions it reflects. Revision is the range's
// readable revision (see ReadableRevision). Close releases it.
type ReadView struct {
	Reader          pebble.Reader
	Revision        int64
	CompactRevision int64
	Term            uint64
	Span            kvstore.Span
	snap            *pebble.Snapshot
}

// Close releases the view's engine snapshot.
func (v *ReadView) Close() { v.snap.Close() }

// NewReadView captures the replica's applied state and an engine snapshot
// that contains at least it.
func (r *Replica) NewReadView() *ReadView {
	r.mu.Lock()
	defer r.mu.Unlock()
	snap := r.store.db.NewSnapshot()
	return &ReadView{
		snap:   snap,
		Reader: snap,
		// The newest revision the range can serve: its last write, or a
		// later revision it closed (a multi-range read or a compaction).
		Revision:        r.readableLocked(),
		CompactRevision: r.st.applied.CompactRevision,
		Term:            r.raw.BasicStatus().GetTerm(),
		Span:            kvstore.Span{Start: r.desc.StartKey, End: r.desc.EndKey},
	}
}

// WaitPhysicalCompaction blocks until the range's versions below rev have
// been physically removed on this replica (etcd's Compact physical=true).
func (r *Replica) WaitPhysicalCompaction(ctx context.Context, rev int64) error {
	for {
		r.mu.Lock()
		done, ch := r.physicalDone, r.compactCond
		r.mu.Unlock()
		if done >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// flushReadsLocked hands queued linearizable reads to raft in one
// ReadIndex request.
func (r *Replica) flushReadsLocked() {
	if len(r.pendingReads) == 0 {
		return
	}
	if err := r.notLeaderLocked(); err != nil {
		for _, w := range r.pendingReads {
			w.ch <- err
		}
		r.pendingReads = nil
		return
	}
	r.readSeq++
	ctx := binary.BigEndian.AppendUint64(nil, r.readSeq)
	r.inflightReads[string(ctx)] = r.pendingReads
	r.pendingReads = nil
	r.raw.ReadIndex(ctx)
}

// handleReadStatesLocked turns raft's read states into waiters on the
// applied index.
func (r *Replica) handleReadStatesLocked(states []raft.ReadState) {
	for _, rs := range states {
		ws := r.inflightReads[string(rs.RequestCtx)]
		delete(r.inflightReads, string(rs.RequestCtx))
		for _, w := range ws {
			w.index = rs.Index
			r.indexWaiters = append(r.indexWaiters, w)
		}
	}
}

// releaseReadersLocked completes read waiters the applied index has reached.
func (r *Replica) releaseReadersLocked() {
	applied := r.st.applied.Index
	kept := r.indexWaiters[:0]
	for _, w := range r.indexWaiters {
		if w.index <= applied {
			w.ch <- nil
		} else {
			kept = append(kept, w)
		}
	}
	r.indexWaiters = kept
}

// failReadsLocked fails every in-flight read: leadership was lost, so the
// reads' confirmation may never come. Reads are safe to retry.
func (r *Replica) failReadsLocked() {
	err := &NotLeaderError{RangeID: r.RangeID, LeaderNode: r.nodeOfReplicaLocked(r.raw.BasicStatus().Lead)}
	for _, ws := range r.inflightReads {
		for _, w := range ws {
			w.ch <- err
		}
	}
	clear(r.inflightReads)
	for _, w := range r.pendingReads {
		w.ch <- err
	}
	r.pendingReads = nil
}

// stagedApply is a replica's share of a scheduler pass's apply batch.
type stagedApply struct {
	// finish publishes the results; it runs once the batch committed.
	finish func()
	// split is set when the entries split the range: index and
	// generation are the applied index and the left side's generation.
	split                      bool
	rangeID, index, generation uint64
}

// stageApply stages the effects of committed entries, with the replica's
// new applied state and statistics, in b, an indexed batch that the
// scheduler commits (without fsync: the raft log already holds the
// entries) for every replica of the pass at once. It returns what to do
// after the commit: nothing of the apply is visible before. It runs on the
// scheduler goroutine only.
func (r *Replica) stageApply(b *pebble.Batch, ents []*raftpb.Entry) (stagedApply, error) {
	r.mu.Lock()
	applied := proto.Clone(r.st.applied).(*txnproto.AppliedState)
	desc := proto.Clone(r.desc).(*txnproto.RangeDescriptor)
	span := kvstore.Span{Start: r.desc.StartKey, End: r.desc.EndKey}
	closedFloor := max(r.sideClosed, r.groupClosedLocked())
	txns := r.txns
	if txns != nil && txns.minPrepare > 0 {
		// Resolutions may write below a raw close (txn.go).
		closedFloor = min(closedFloor, txns.minPrepare-1)
	}
	r.mu.Unlock()
	txnsCopied := false
	writable := func() *txnTable {
		if !txnsCopied {
			txns, txnsCopied = txns.clone(), true
		}
		return txns
	}
	var appliedIDs []proposalKey
	var splits []*txnproto.RangeDescriptor

	type delivery struct {
		id  uint64
		res ApplyResult
	}
	var deliveries []delivery
	var pubs []FeedEntry
	var delta kvstore.Stats
	compactTo := int64(0)
	for _, e := range ents {
		if e.GetIndex() <= applied.Index {
			continue
		}
		applied.Index, applied.Term = e.GetIndex(), e.GetTerm()
		switch e.GetType() {
		case raftpb.EntryConfChange, raftpb.EntryConfChangeV2:
			// Membership changes come with replica placement; no command
			// proposes one yet.
			r.log.Warn("ignoring conf change entry", zap.Uint64("index", e.GetIndex()))
			continue
		}
		if len(e.Data) == 0 {
			continue // empty entry a new leader appends
		}
		cmd := &txnproto.Command{}
		if err := proto.Unmarshal(e.Data, cmd); err != nil {
			return stagedApply{}, fmt.Errorf("range %d: corrupt command at index %d: %w", r.RangeID, e.GetIndex(), err)
		}
		rev := max(cmd.Timestamp, applied.Revision+1, applied.ClosedRevision+1)
		res := ApplyResult{Term: e.GetTerm()}
		wb := &kvstore.WriteBatch{Batch: b, Rev: rev, Keyspace: r.keyspace, Span: span, CompactRev: applied.CompactRevision, Newest: r.store.newest, Presence: r.store.presence}
		before := b.Count()
		switch {
		case cmd.Put != nil:
			req := &pb.PutRequest{}
			if res.Err = proto.Unmarshal(cmd.Put, req); res.Err == nil {
				if res.Err = r.writeConflict(txns, req); res.Err == nil {
					res.Response, res.Err = kvstore.ApplyPut(wb, req)
				}
			}
		case cmd.DeleteRange != nil:
			req := &pb.DeleteRangeRequest{}
			if res.Err = proto.Unmarshal(cmd.DeleteRange, req); res.Err == nil {
				if res.Err = r.writeConflict(txns, req); res.Err == nil {
					res.Response, res.Err = kvstore.ApplyDeleteRange(wb, req)
				}
			}
		case cmd.Txn != nil:
			req := &pb.TxnRequest{}
			if res.Err = proto.Unmarshal(cmd.Txn, req); res.Err == nil {
				if res.Err = r.writeConflict(txns, req); res.Err == nil {
					res.Response, res.Err = kvstore.ApplyTxn(wb, req)
				}
			}
		case cmd.Compact != nil:
			c := cmd.Compact.Revision
			switch {
			case c <= applied.CompactRevision:
				res.Err = rpctypes.ErrGRPCCompacted
			default:
				// The node checked c against the revisions the leaders
				// can serve (a side-channel close may put that above
				// this range's last write); closing the range at c keeps
				// "compacted at c" meaning "final at c" here.
				applied.ClosedRevision = max(applied.ClosedRevision, c)
				applied.CompactRevision = c
				compactTo = c
				res.Response = &pb.CompactionResponse{}
			}
		case cmd.Close != nil:
			applied.ClosedRevision = max(applied.ClosedRevision, cmd.Close.Revision)
		case IsTxnCommand(cmd):
			// Its own revision bookkeeping; a failed one writes nothing.
			t := writable()
			ta, err := r.applyTxnCommand(b, t, cmd, rev, span, applied.CompactRevision)
			res.Err = err
			switch {
			case err != nil:
				res.Revision = max(applied.Revision, applied.ClosedRevision)
			case len(ta.events) > 0:
				applied.Revision = max(applied.Revision, ta.evRev)
				pubs = append(pubs, FeedEntry{Revision: ta.evRev, Events: ta.events})
				delta.Add(ta.delta)
				res.Revision = ta.evRev
			case ta.closeAt > 0:
				// A prepare consumes its revision: later writes of the
				// range are above it (a resolution below is the one
				// exception, held back from readers by the intent).
				applied.ClosedRevision = max(applied.ClosedRevision, ta.closeAt)
				res.Revision = ta.closeAt
			default:
				res.Revision = max(applied.Revision, applied.ClosedRevision)
			}
			res.Response = ta.resp
			if cmd.ProposerNode == r.store.cfg.NodeID {
				deliveries = append(deliveries, delivery{id: cmd.Id, res: res})
			}
			appliedIDs = append(appliedIDs, proposalKey{node: cmd.ProposerNode, id: cmd.Id})
			continue
		case cmd.Split != nil:
			var rhsStats kvstore.Stats
			rhsStats, res.Err = r.stageSplit(b, desc, applied, cmd.Split, txns)
			if res.Err == nil && !txns.empty() {
				res.Err = r.splitTxnState(b, writable(), cmd.Split.Right, !r.rightInitialized(cmd.Split.Right.RangeId))
			}
			if res.Err == nil {
				desc = cmd.Split.Left
				span = kvstore.Span{Start: desc.StartKey, End: desc.EndKey}
				splits = append(splits, cmd.Split.Right)
				delta.Sub(rhsStats)
			}
		default:
			res.Err = fmt.Errorf("range %d: empty command at index %d", r.RangeID, e.GetIndex())
		}
		if res.Err != nil && b.Count() != before {
			// Appliers must fail before writing; a partial write would be
			// applied identically on every replica, but it is a bug.
			r.log.Error("command failed after writing", zap.Uint64("index", e.GetIndex()), zap.Error(res.Err))
		}
		if res.Err == nil && (len(wb.Events) > 0 || cmd.DeleteRange != nil || cmd.Txn != nil) {
			r.checkClosed(closedFloor, rev, e.GetIndex())
		}
		if res.Err == nil && len(wb.Events) > 0 {
			applied.Revision = rev
			res.Revision = rev
			pubs = append(pubs, FeedEntry{Revision: rev, Events: wb.Events})
			delta.Add(wb.Delta)
		} else if res.Err == nil && (cmd.DeleteRange != nil || cmd.Txn != nil) {
			// A write that changed nothing (a delete of nothing, a txn
			// whose branch only reads) makes no event, and as in etcd the
			// range's last change stays its newest revision. But it
			// answers with rev, the revision a change would have had, and
			// closes the range there: etcd answers with the store's
			// current revision, and the range's last change may be far
			// older than revisions the client already saw elsewhere.
			applied.ClosedRevision = max(applied.ClosedRevision, rev)
			res.Revision = rev
		} else {
			// A Compact, or a failed command, reports the latest revision.
			res.Revision = max(applied.Revision, applied.ClosedRevision)
		}
		if cmd.ProposerNode == r.store.cfg.NodeID {
			deliveries = append(deliveries, delivery{id: cmd.Id, res: res})
		}
		appliedIDs = append(appliedIDs, proposalKey{node: cmd.ProposerNode, id: cmd.Id})
	}
	r.mu.Lock()
	stats := r.stats
	stats.Add(delta)
	r.mu.Unlock()
	if err := setProto(b, kvstore.RangeAppliedStateKey(r.RangeID), applied); err != nil {
		return stagedApply{}, err
	}
	if err := b.Set(kvstore.RangeStatsKey(r.RangeID), kvstore.EncodeStats(nil, stats), nil); err != nil {
		return stagedApply{}, err
	}
	trunc := r.maybeTruncateLog(b, applied)
	if len(splits) > 0 {
		r.log.Info("applying split", zap.Uint64("index", applied.Index), zap.Uint64("generation", desc.Generation))
	}
	finish := func() {
		r.store.metrics.proposalsApplied.Add(float64(len(ents)))
		_ = r.store.cfg.Clock.Update(max(applied.Revision, applied.ClosedRevision))
		minPrepare := int64(0)
		if txns != nil {
			minPrepare = txns.minPrepare
		}
		r.publishApplied(pubs, minPrepare)
		// Install right-hand replicas before the left one narrows, so
		// that routing always finds a range for every key.
		if len(splits) > 0 {
			isLeader := r.Status().IsLeader
			for _, rhs := range splits {
				r.store.addReplica(rhs, isLeader)
				r.log.Info("split range", zap.Uint64("right-range-id", rhs.RangeId),
					zap.Binary("split-key", rhs.StartKey), zap.Uint64("generation", rhs.Generation))
			}
		}
		r.mu.Lock()
		readableBefore := r.readableLocked()
		r.stats.Add(delta)
		r.st.applied = applied
		if txnsCopied {
			r.installTxnsLocked(txns)
		}
		r.st.cacheTrim(applied.Index)
		descChanged := desc.Generation != r.desc.Generation
		r.desc = desc
		if descChanged {
			r.store.spanVersion.Add(1)
		}
		for _, id := range appliedIDs {
			delete(r.inflight, id)
		}
		r.promoteClosesLocked()
		r.signalAppliedLocked()
		if trunc != nil {
			r.st.truncated = trunc
		}
		for _, d := range deliveries {
			if p, ok := r.proposals[d.id]; ok {
				delete(r.proposals, d.id)
				p.ch <- d.res
			}
		}
		r.releaseReadersLocked()
		readableMoved := r.readableLocked() > readableBefore
		r.mu.Unlock()
		// The events were published before the readable revision moved
		// (a watcher must never find a revision readable whose events are
		// not in the feed yet), so a watcher woken by them may have
		// looked too early: wake it again now.
		switch {
		case len(splits) > 0:
			r.feed.Poke()
		case readableMoved:
			r.feed.PokeClosed()
		}
		if compactTo > 0 {
			r.queueCompaction(compactTo)
		}
	}
	return stagedApply{finish: finish, split: len(splits) > 0, rangeID: r.RangeID, index: applied.Index, generation: desc.Generation}, nil
}

// queueCompaction hands the compactor a target. The channel holds one;
// a queued older target is replaced, so the compactor always finds the
// newest when it is next free.
func (r *Replica) queueCompaction(to int64) {
	for {
		select {
		case r.compactTarget <- to:
			return
		default:
			select {
			case old := <-r.compactTarget:
				to = max(to, old)
			default:
			}
		}
	}
}

// ErrDescriptorChanged is the result of a split proposed against a
// descriptor the range no longer has (another split or a replica change
// applied first). Retrying re-reads the descriptor.
var ErrDescriptorChanged = errors.New("rangekv: range descriptor changed; retry the split")

// stageSplit validates a split against the range's current descriptor and
// stages, in b, the new descriptors and the right-hand range's initial
// raft state. The right-hand range starts like a bootstrapped one: an
// empty log truncated at initialIndex in initialTerm, applied there, at
// the left range's revision. Its MVCC data needs no copy: data is keyed by
// span key, so it already sits in the right-hand span. It returns the
// right-hand range's stats.
// rightInitialized reports whether the right-hand replica of a split
// exists here initialized already (by a snapshot).
func (r *Replica) rightInitialized(rangeID uint64) bool {
	existing := r.store.Replica(rangeID)
	if existing == nil {
		return false
	}
	existing.mu.Lock()
	defer existing.mu.Unlock()
	return existing.initializedLocked()
}

func (r *Replica) stageSplit(b *pebble.Batch, cur *txnproto.RangeDescriptor, applied *txnproto.AppliedState,
	sc *txnproto.SplitCommand, txns *txnTable) (kvstore.Stats, error) {
	// Every check before any write: the pass's batch commits whatever a
	// failed command staged, and a restart would load a split that never
	// happened (descriptors, the right-hand range) while the other
	// replicas kept the range whole.
	l, rt := sc.Left, sc.Right
	if l == nil || rt == nil || l.RangeId != cur.RangeId || l.Generation != cur.Generation+1 ||
		string(l.StartKey) != string(cur.StartKey) || string(rt.EndKey) != string(cur.EndKey) ||
		string(l.EndKey) != string(rt.StartKey) ||
		string(rt.StartKey) <= string(cur.StartKey) || string(rt.StartKey) >= string(cur.EndKey) {
		return kvstore.Stats{}, ErrDescriptorChanged
	}
	if splitsIntent(txns, rt.StartKey) {
		return kvstore.Stats{}, ErrSplitThroughIntent
	}
	if err := setProto(b, kvstore.RangeDescriptorKey(l.RangeId), l); err != nil {
		return kvstore.Stats{}, err
	}
	if r.rightInitialized(rt.RangeId) {
		// A snapshot initialized the right-hand replica already (this
		// replica's span could not have covered it then); it is newer
		// than anything the split would write.
		return kvstore.Stats{}, nil
	}
	// An uninitialized right-hand replica may have voted: keep its term and
	// vote so it never votes twice in a term.
	prevHS := &raftpb.HardState{}
	if err := getProto(b, kvstore.RaftHardStateKey(rt.RangeId), prevHS); err != nil {
		return kvstore.Stats{}, err
	}
	if err := writeInitialRangeState(b, rt, &txnproto.AppliedState{
		Index: initialIndex, Term: initialTerm,
		Revision: applied.Revision, CompactRevision: applied.CompactRevision, ClosedRevision: applied.ClosedRevision,
	}); err != nil {
		return kvstore.Stats{}, err
	}
	if prevHS.GetTerm() > initialTerm {
		prevHS.Commit = proto.Uint64(max(prevHS.GetCommit(), initialIndex))
		if err := setProto(b, kvstore.RaftHardStateKey(rt.RangeId), prevHS); err != nil {
			return kvstore.Stats{}, err
		}
	}
	st, err := kvstore.ComputeStats(b, kvstore.Span{Start: rt.StartKey, End: rt.EndKey})
	if err != nil {
		return kvstore.Stats{}, err
	}
	return st, b.Set(kvstore.RangeStatsKey(rt.RangeId), kvstore.EncodeStats(nil, st), nil)
}

// maybeTruncateLog stages removal of the log head once more than
// SnapshotCount entries have applied since the last truncation, keeping
// catchUpEntries for slow followers (etcd's snapshot-count behaviour).
func (r *Replica) maybeTruncateLog(b *pebble.Batch, applied *txnproto.AppliedState) *txnproto.TruncatedState {
	count := r.store.cfg.SnapshotCount
	if count == 0 {
		return nil
	}
	r.mu.Lock()
	first := r.st.truncated.Index + 1
	r.mu.Unlock()
	keep := min(count/2, catchUpEntries)
	if applied.Index < first+count+keep {
		return nil
	}
	upTo := applied.Index - keep
	term, err := r.termForTruncation(upTo)
	if err != nil {
		r.log.Warn("log truncation skipped", zap.Error(err))
		return nil
	}
	t := &txnproto.TruncatedState{Index: upTo, Term: term}
	if err := b.DeleteRange(kvstore.RaftLogKey(r.RangeID, 0), kvstore.RaftLogKey(r.RangeID, upTo+1), nil); err != nil {
		return nil
	}
	if err := setProto(b, kvstore.RaftTruncatedStateKey(r.RangeID), t); err != nil {
		return nil
	}
	r.log.Info("truncating raft log", zap.Uint64("first-index", first), zap.Uint64("truncated-index", upTo))
	return t
}

func (r *Replica) termForTruncation(i uint64) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.Term(i)
}

// catchUpEntries is how many applied entries a truncation keeps so a
// briefly lagging follower catches up from the log (etcd keeps 5000).
const catchUpEntries = 5000

// runCompactor physically compacts the range in the background, newest
// target first, so writers are never blocked by compaction.
func (r *Replica) runCompactor(stop <-chan struct{}) {
	for {
		var target int64
		select {
		case <-stop:
			return
		case target = <-r.compactTarget:
		}
		// Collapse queued targets to the newest.
	drain:
		for {
			select {
			case t := <-r.compactTarget:
				target = max(target, t)
			default:
				break drain
			}
		}
		r.mu.Lock()
		span := kvstore.Span{Start: r.desc.StartKey, End: r.desc.EndKey}
		done := r.physicalDone
		r.mu.Unlock()
		if target <= done {
			continue
		}
		err := kvstore.Compact(r.store.db, span, target, func(d kvstore.Stats) {
			r.mu.Lock()
			r.stats.Add(d)
			r.mu.Unlock()
		})
		if err != nil {
			r.log.Error("physical compaction failed", zap.Int64("revision", target), zap.Error(err))
			continue
		}
		r.mu.Lock()
		r.physicalDone = target
		close(r.compactCond)
		r.compactCond = make(chan struct{})
		r.mu.Unlock()
		r.log.Info("finished scheduled compaction", zap.Int64("compact-revision", target))
	}
}

// ProposeSplit splits the range at splitKey (a span key strictly inside the
// range) into itself and a new range rightID on the same replicas, through
// the range's raft log, and waits until it has applied here. It returns the
// new descriptors, *NotLeaderError on a follower, ErrDescriptorChanged if
// the descriptor moved under it, and an error naming the problem when
// splitKey is not strictly inside the span.
func (r *Replica) ProposeSplit(ctx context.Context, splitKey []byte, rightID uint64) (left, right *txnproto.RangeDescriptor, err error) {
	cur := r.Descriptor()
	if string(splitKey) <= string(cur.StartKey) || string(splitKey) >= string(cur.EndKey) {
		return nil, nil, fmt.Errorf("%w: %q is a boundary of or outside range %d", ErrBadSplitKey, splitKey, r.RangeID)
	}
	left = proto.Clone(cur).(*txnproto.RangeDescriptor)
	left.EndKey = append([]byte(nil), splitKey...)
	left.Generation++
	right = proto.Clone(cur).(*txnproto.RangeDescriptor)
	right.RangeId = rightID
	right.StartKey = append([]byte(nil), splitKey...)
	right.Generation = left.Generation
	res, err := r.Propose(ctx, &txnproto.Command{Split: &txnproto.SplitCommand{Left: left, Right: right}})
	if err != nil {
		return nil, nil, err
	}
	if res.Err != nil {
		return nil, nil, res.Err
	}
	return left, right, nil
}

// ErrBadSplitKey is wrapped by ProposeSplit for a key that cannot split the
// range (at its start, at or past its end).
var ErrBadSplitKey = errors.New("rangekv: invalid split key")

// ReadableRevision is the highest revision this replica can serve a read
// at: every write at or below it has applied here, and the range will
// never write at or below it again.
func (r *Replica) ReadableRevision() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.readableLocked()
}

// Close promises, through the raft log, that the range never again writes
// at or below rev, and waits until that has applied here. A multi-range
// read at rev calls it on every range whose ReadableRevision is below rev.
func (r *Replica) Close(ctx context.Context, rev int64) error {
	res, err := r.Propose(ctx, &txnproto.Command{Close: &txnproto.CloseCommand{Revision: rev}})
	if err != nil {
		return err
	}
	return res.Err
}

// signalAppliedLocked wakes WaitReadable callers. The channel is made
// only when one waits (appliedWaitLocked), so an apply or close nobody
// waits for allocates nothing.
func (r *Replica) signalAppliedLocked() {
	if r.appliedc != nil {
		close(r.appliedc)
		r.appliedc = nil
		r.readersWaiting.Store(false)
	}
}

// appliedWaitLocked returns a channel closed at the next apply or
// readable-revision change.
func (r *Replica) appliedWaitLocked() <-chan struct{} {
	if r.appliedc == nil {
		r.appliedc = make(chan struct{})
		r.readersWaiting.Store(true)
	}
	return r.appliedc
}

// WaitReadable blocks until ReadableRevision reaches rev or ctx ends.
func (r *Replica) WaitReadable(ctx context.Context, rev int64) error {
	for {
		r.mu.Lock()
		// The wait first: an idle group's clock moves without mu, and
		// wakes only readers it sees waiting (wakeReaders).
		ch := r.appliedWaitLocked()
		readable := r.readableLocked()
		r.mu.Unlock()
		if readable >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Span returns the range's current span keys [start, end). The slices
// are shared and must not be modified (descriptors are replaced, never
// mutated).
func (r *Replica) Span() (start, end []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.desc.StartKey, r.desc.EndKey
}

// Covers reports whether the range's span contains [start, end) (span
// keys).
func (r *Replica) Covers(start, end []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return string(start) >= string(r.desc.StartKey) && string(end) <= string(r.desc.EndKey)
}

// RecordRequest counts one request on key (a key of the range's keyspace,
// without the namespace byte) served by this replica, for load-based
// splits and `rangekvctl range list`; one request in loadSampleEvery has
// its key sampled, stored as a span key.
func (r *Replica) RecordRequest(key []byte) {
	if n := r.requests.Add(1); n%loadSampleEvery == 0 {
		r.sampleMu.Lock()
		slot := &r.samples[r.sampleNext%len(r.samples)]
		*slot = append(append((*slot)[:0], byte(r.keyspace)), key...)
		r.sampleNext++
		r.sampleMu.Unlock()
	}
}

// loadSampleEvery is the sampling period of request keys.
const loadSampleEvery = 4

// LoadSplitKey returns the span key that divides the sampled request load
// in two (the median sampled key), or nil when the samples cannot divide
// it: too few, or a single hot key.
func (r *Replica) LoadSplitKey() []byte {
	r.sampleMu.Lock()
	n := min(r.sampleNext, len(r.samples))
	keys := make([]string, 0, n)
	for _, k := range r.samples[:n] {
		keys = append(keys, string(k))
	}
	r.sampleMu.Unlock()
	if len(keys) < 32 {
		return nil
	}
	slices.Sort(keys)
	mid := keys[len(keys)/2]
	if mid == keys[0] {
		// Half the load or more is on the smallest key: split just after it.
		i, _ := slices.BinarySearch(keys, mid+"\x00")
		if i >= len(keys) {
			return nil
		}
		mid = keys[i]
	}
	if start, _ := r.Span(); string(mid) <= string(start) {
		return nil
	}
	return []byte(mid)
}

// ResetLoad forgets sampled keys (after a split, the samples describe the
// old span).
func (r *Replica) ResetLoad() {
	r.sampleMu.Lock()
	r.sampleNext = 0
	r.sampleMu.Unlock()
}

// QPS returns the replica's request rate, requests per second, averaged
// over the last qpsWindow.
func (r *Replica) QPS() float64 { return math.Float64frombits(r.qps.Load()) }

// Initialized reports whether the replica holds the range's data (it was
// bootstrapped, created by a split, or received a snapshot); an
// uninitialized one only takes part in raft until a snapshot arrives.
func (r *Replica) Initialized() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.initializedLocked()
}
