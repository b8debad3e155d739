// Package rangeraft runs a node's range replicas: one raft.RawNode per
// replica, raft state in the node's shared engine, one scheduler loop that
// persists every ready replica's entries in one batch with one fsync (the
// batched WAL), the gRPC raft transport, snapshots, log truncation and
// linearizable reads through ReadIndex.
package rangeraft

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/hlc"
	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/txnproto"
)

// StoreConfig configures a Store.
type StoreConfig struct {
	NodeID    uint64
	ClusterID uint64
	Engine    *kvstore.Engine
	Clock     *hlc.Clock
	Logger    *zap.Logger
	// TickInterval is raft's tick (etcd --heartbeat-interval); heartbeats
	// go out every tick.
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks.
	ElectionTicks int
	// SnapshotCount is the number of applied entries between log
	// truncations (etcd --snapshot-count); 0 disables truncation.
	SnapshotCount uint64
	// FeedEvents bounds each range's in-memory event window.
	FeedEvents int
	// Registerer receives the store's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Resolve returns the peer address (host:port) of a node.
	Resolve func(nodeID uint64) (string, error)
	// ClosedTimestampInterval is how often range leaders publish
	// side-channel closed timestamps (closedts.go); 0 disables them.
	ClosedTimestampInterval time.Duration
	// ClusterSize is the number of nodes in the cluster, whose majority
	// clock rounds wait for (clockround.go); 0 means this node and the
	// nodes sharing its ranges.
	ClusterSize int
	// ClockSettledAt is when a restarted node's clock is past every
	// reading it may have shown before the restart: its start plus the
	// maximum clock offset. Zero for a new node.
	ClockSettledAt time.Time
	// ReceiveDelay, when set, delays the handling of each raft batch
	// from a node by what it returns, keeping order (fault injection for
	// tests; nil in production).
	ReceiveDelay func(fromNode uint64) time.Duration
}

// Store holds every replica on one node and drives them from one
// scheduler goroutine.
type Store struct {
	cfg       StoreConfig
	db        *pebble.DB
	log       *zap.Logger
	metrics   *metrics
	transport *Transport
	// newest caches the versions the apply path replaces
	// (kvstore.NewestCache); only the scheduler's apply uses it.
	newest *kvstore.NewestCache
	// presence holds every key with a stored version (kvstore.KeyPresence),
	// so the apply path does not seek for keys written for the first time.
	presence *kvstore.KeyPresence

	mu       sync.RWMutex
	replicas map[uint64]*Replica
	// byStart holds the replicas ordered by start key, for routing. Start
	// keys never change (a split keeps the left start), so the order only
	// changes when a replica is added.
	byStart []*Replica
	// peers are the other nodes holding replicas of this node's ranges,
	// kept with byStart (the liveness pings go to them every tick).
	peers []uint64

	workMu sync.Mutex
	work   map[uint64]struct{}
	workCh chan struct{}

	proposalSeq atomic.Uint64
	// voteEpoch rises before any vote or campaign for a new term leaves
	// this node (closedts.go); seeded from the clock so that it never
	// repeats across restarts.
	voteEpoch atomic.Uint64
	// closing is publishClosed's replica list, reused every round, and
	// closeRound counts the rounds.
	closing    []*Replica
	poked      []*Replica
	closeRound uint64
	started    atomic.Bool
	live       liveness
	// spanVersion: see SpanVersion.
	spanVersion atomic.Uint64
	rounds      clockRounds
	idle        *idleGroups
	// bg counts goroutines that use the engine outside the scheduler
	// (compactors, snapshot senders); Stop waits for them.
	bg    sync.WaitGroup
	stopc chan struct{}
	donec chan struct{}
	fatal chan error
}

// newestCacheBytes bounds the apply path's NewestCache.
const newestCacheBytes = 64 << 20

// NewStore loads every replica found in the engine. Call Start to run it.
func NewStore(cfg StoreConfig) (*Store, error) {
	if cfg.FeedEvents == 0 {
		cfg.FeedEvents = 1 << 16
	}
	s := &Store{
		cfg:      cfg,
		db:       cfg.Engine.DB,
		log:      cfg.Logger,
		metrics:  newMetrics(cfg.Registerer),
		replicas: map[uint64]*Replica{},
		newest:   kvstore.NewNewestCache(newestCacheBytes),
		work:     map[uint64]struct{}{},
		workCh:   make(chan struct{}, 1),
		stopc:    make(chan struct{}),
		donec:    make(chan struct{}),
		fatal:    make(chan error, 1),
	}
	// Proposal IDs must not repeat across restarts while old entries may
	// still apply: seed from the clock.
	s.proposalSeq.Store(uint64(time.Now().UnixNano()))
	s.voteEpoch.Store(uint64(time.Now().UnixNano()))
	// Clock rounds likewise: a peer's echo of an earlier incarnation's
	// round must not answer a round of this one.
	s.rounds.issued = uint64(time.Now().UnixNano())
	s.idle = newIdleGroups()
	s.transport = newTransport(s)
	began := time.Now()
	presence, err := kvstore.LoadKeyPresence(s.db)
	if err != nil {
		return nil, fmt.Errorf("loading the stored keys: %w", err)
	}
	s.presence = presence
	s.log.Info("loaded the stored keys", zap.Int("keys", s.presence.Len()), zap.Duration("took", time.Since(began)))
	start, end := kvstore.RangeDescriptorKeySpan()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: start, UpperBound: end})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	for valid := it.First(); valid; valid = it.Next() {
		desc := &txnproto.RangeDescriptor{}
		if err := proto.Unmarshal(it.Value(), desc); err != nil {
			return nil, fmt.Errorf("corrupt range descriptor at %x: %w", it.Key(), err)
		}
		r, err := s.loadReplica(desc)
		if err != nil {
			return nil, err
		}
		s.replicas[desc.RangeId] = r
	}
	s.rebuildIndexLocked()
	s.metrics.ranges.Set(float64(len(s.replicas)))
	return s, nil
}

func (s *Store) loadReplica(desc *txnproto.RangeDescriptor) (*Replica, error) {
	snap := s.db.NewSnapshot()
	defer snap.Close()
	return s.loadReplicaAs(snap, desc, 0)
}

// loadReplicaAs loads a replica from from, a consistent view of the
// engine (see loadRaftStorage). An uninitialized replica (desc has no
// span; see newUninitialized) takes replicaID from the caller.
func (s *Store) loadReplicaAs(from pebble.Reader, desc *txnproto.RangeDescriptor, replicaID uint64) (*Replica, error) {
	cs := &raftpb.ConfState{}
	for _, rd := range desc.Replicas {
		if rd.NodeId == s.cfg.NodeID {
			replicaID = rd.ReplicaId
		}
		if rd.Type == txnproto.ReplicaType_LEARNER {
			cs.Learners = append(cs.Learners, rd.ReplicaId)
		} else {
			cs.Voters = append(cs.Voters, rd.ReplicaId)
		}
	}
	if replicaID == 0 {
		return nil, fmt.Errorf("range %d: descriptor has no replica on node %x", desc.RangeId, s.cfg.NodeID)
	}
	st, err := loadRaftStorage(s.db, from, desc.RangeId, cs)
	if err != nil {
		return nil, err
	}
	stats := kvstore.Stats{}
	if v, closer, err := from.Get(kvstore.RangeStatsKey(desc.RangeId)); err == nil {
		stats, err = kvstore.DecodeStats(v)
		closer.Close()
		if err != nil {
			return nil, fmt.Errorf("range %d: %w", desc.RangeId, err)
		}
	}
	txns, err := loadTxnTable(from, desc.RangeId)
	if err != nil {
		return nil, err
	}
	ks := kvstore.UserKeys
	if len(desc.StartKey) > 0 && desc.StartKey[0] == kvstore.MetaSpanStart[0] {
		ks = kvstore.MetaKeys
	}
	r := &Replica{
		store:         s,
		RangeID:       desc.RangeId,
		startKey:      desc.StartKey,
		log:           s.log.With(zap.Uint64("range-id", desc.RangeId)),
		st:            st,
		replicaID:     replicaID,
		desc:          desc,
		keyspace:      ks,
		stats:         stats,
		proposals:     map[uint64]*proposal{},
		inflight:      map[proposalKey]inflightProposal{},
		evidence:      map[uint64]clockEvidence{},
		peerNodes:     map[uint64]uint64{},
		inflightReads: map[string][]*readWaiter{},
		compactCond:   make(chan struct{}),
		compactTarget: make(chan int64, 1),
		feed:          NewFeed(st.applied.Revision, s.cfg.FeedEvents),
		physicalDone:  st.applied.CompactRevision,
	}
	r.installTxnsLocked(txns)
	raw, err := raft.NewRawNode(&raft.Config{
		ID:                        replicaID,
		ElectionTick:              s.cfg.ElectionTicks,
		HeartbeatTick:             1,
		Storage:                   st,
		Applied:                   st.applied.Index,
		MaxSizePerMsg:             1 << 20,
		MaxCommittedSizePerReady:  16 << 20,
		MaxUncommittedEntriesSize: 64 << 20,
		MaxInflightMsgs:           256,
		CheckQuorum:               true,
		PreVote:                   true,
		ReadOnlyOption:            raft.ReadOnlySafe,
		// Only the leader's own proposals enter its log, each tracked
		// until it applies (closedts.go).
		DisableProposalForwarding: true,
		Logger:                    newRaftLogger(r.log),
	})
	if err != nil {
		return nil, fmt.Errorf("range %d: %w", desc.RangeId, err)
	}
	r.raw = raw
	r.term = st.hardState.GetTerm()
	return r, nil
}

// Start runs the scheduler and the replicas' compactors.
func (s *Store) Start() {
	s.started.Store(true)
	s.mu.RLock()
	for _, r := range s.replicas {
		r.maybeCampaignOnStart()
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			r.runCompactor(s.stopc)
		}()
		if r.st.applied.CompactRevision > 0 {
			// Finish a physical compaction a crash interrupted.
			r.physicalDone = 0
			r.compactTarget <- r.st.applied.CompactRevision
		}
	}
	s.mu.RUnlock()
	go s.run()
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		s.measureLoad()
	}()
}

// qpsWindow is the span over which QPS averages requests.
const qpsWindow = 10 * time.Second

// measureLoad samples every replica's request counter once a second and
// keeps its rate over the last qpsWindow.
func (s *Store) measureLoad() {
	const slots = int(qpsWindow / time.Second)
	hist := map[uint64][]int64{}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.stopc:
			return
		case <-t.C:
		}
		for _, r := range s.Replicas() {
			h := append(hist[r.RangeID], r.requests.Load())
			if len(h) > slots+1 {
				h = h[len(h)-slots-1:]
			}
			hist[r.RangeID] = h
			if len(h) > 1 {
				rate := float64(h[len(h)-1]-h[0]) / float64(len(h)-1)
				r.qps.Store(math.Float64bits(rate))
			}
		}
	}
}

// Stop stops the scheduler and the transport. In-flight proposals fail
// with their context.
func (s *Store) Stop() {
	select {
	case <-s.stopc:
	default:
		close(s.stopc)
	}
	if !s.started.Load() {
		s.transport.stop()
		return
	}
	<-s.donec
	s.transport.stop()
	s.bg.Wait()
}

// Fatal is signalled when the scheduler hits an error it cannot recover
// from (an engine write failed); the node must stop.
func (s *Store) Fatal() <-chan error { return s.fatal }

// Replica returns the replica of rangeID, nil if this node has none.
func (s *Store) Replica(rangeID uint64) *Replica {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.replicas[rangeID]
}

// replicaList appends every replica, in no particular order, to dst.
func (s *Store) replicaList(dst []*Replica) []*Replica {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, r := range s.replicas {
		dst = append(dst, r)
	}
	return dst
}

// Replicas returns every replica, ordered by range ID.
func (s *Store) Replicas() []*Replica {
	s.mu.RLock()
	out := make([]*Replica, 0, len(s.replicas))
	for _, r := range s.replicas {
		out = append(out, r)
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *Replica) int { return cmp.Compare(a.RangeID, b.RangeID) })
	return out
}

// addReplica installs the replica of a range whose state was just written
// to the engine (the right-hand side of a split) and starts it. An
// uninitialized replica of the range is retired and replaced; an
// initialized one (a snapshot got there first) is kept. campaign starts an
// election at once (the left-hand leader's node does, so the new range
// gets a leader without waiting for a timeout).
func (s *Store) addReplica(desc *txnproto.RangeDescriptor, campaign bool) {
	s.mu.Lock()
	if old, ok := s.replicas[desc.RangeId]; ok {
		old.mu.Lock()
		init := old.initializedLocked()
		if !init {
			old.destroyed = true
		}
		old.mu.Unlock()
		if init {
			s.mu.Unlock()
			return
		}
		delete(s.replicas, desc.RangeId)
	}
	r, err := s.loadReplica(desc)
	if err != nil {
		s.mu.Unlock()
		s.log.Error("loading split range", zap.Uint64("range-id", desc.RangeId), zap.Error(err))
		return
	}
	s.replicas[desc.RangeId] = r
	s.rebuildIndexLocked()
	s.metrics.ranges.Set(float64(len(s.replicas)))
	s.metrics.splits.Inc()
	s.mu.Unlock()
	if campaign {
		r.mu.Lock()
		_ = r.raw.Campaign()
		r.campaignTicks = splitCampaignTicks
		r.mu.Unlock()
	}
	if s.started.Load() {
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			r.runCompactor(s.stopc)
		}()
	}
	s.enqueue(r.RangeID)
}

// SpanVersion returns a number that changes after any replica of the store
// changes its span or generation, or a replica is added or removed: a
// reader that saw the same version before and after reading replicas'
// spans read a consistent set.
func (s *Store) SpanVersion() uint64 { return s.spanVersion.Load() }

func (s *Store) rebuildIndexLocked() {
	defer s.spanVersion.Add(1)
	s.byStart = s.byStart[:0]
	peers := map[uint64]bool{}
	for _, r := range s.replicas {
		if len(r.startKey) > 0 {
			s.byStart = append(s.byStart, r)
		}
		r.mu.Lock()
		for _, rd := range r.desc.Replicas {
			if rd.NodeId != s.cfg.NodeID {
				peers[rd.NodeId] = true
			}
		}
		r.mu.Unlock()
	}
	s.peers = slices.Sorted(maps.Keys(peers))
	slices.SortFunc(s.byStart, func(a, b *Replica) int {
		return strings.Compare(string(a.startKey), string(b.startKey))
	})
}

// ReplicaForKey returns the local replica whose span holds spanKey, nil if
// none does.
func (s *Store) ReplicaForKey(spanKey []byte) *Replica {
	s.mu.RLock()
	defer s.mu.RUnlock()
	i, _ := slices.BinarySearchFunc(s.byStart, spanKey, func(r *Replica, k []byte) int {
		return strings.Compare(string(r.startKey), string(k))
	})
	// byStart[i] starts after spanKey, or at it.
	if i < len(s.byStart) && string(s.byStart[i].startKey) == string(spanKey) {
		return s.byStart[i]
	}
	if i == 0 {
		return nil
	}
	r := s.byStart[i-1]
	r.mu.Lock()
	defer r.mu.Unlock()
	if string(spanKey) < string(r.desc.EndKey) {
		return r
	}
	return nil
}

// Transport returns the store's raft transport, for registering its gRPC
// service.
func (s *Store) Transport() *Transport { return s.transport }

// electionTimeout is the raft election timeout as a duration.
func (s *Store) electionTimeout() time.Duration {
	return time.Duration(s.cfg.ElectionTicks) * s.cfg.TickInterval
}

// enqueue marks a replica as having work for the scheduler.
func (s *Store) enqueue(rangeID uint64) {
	s.workMu.Lock()
	s.work[rangeID] = struct{}{}
	s.workMu.Unlock()
	select {
	case s.workCh <- struct{}{}:
	default:
	}
}

func (s *Store) takeWork() []uint64 {
	s.workMu.Lock()
	defer s.workMu.Unlock()
	ids := make([]uint64, 0, len(s.work))
	for id := range s.work {
		ids = append(ids, id)
	}
	clear(s.work)
	return ids
}

func (s *Store) run() {
	defer close(s.donec)
	var ticking []*Replica // reused every tick
	ticker := time.NewTicker(s.cfg.TickInterval)
	defer ticker.Stop()
	var closedc <-chan time.Time
	if s.cfg.ClosedTimestampInterval > 0 {
		closer := time.NewTicker(s.cfg.ClosedTimestampInterval)
		defer closer.Stop()
		closedc = closer.C
	}
	for {
		select {
		case <-s.stopc:
			return
		case <-closedc:
			s.publishClosed()
			continue
		case <-ticker.C:
			ticking = s.replicaList(ticking[:0])
			for _, r := range ticking {
				r.mu.Lock()
				ticked := r.tickLocked()
				r.mu.Unlock()
				if ticked {
					s.enqueue(r.RangeID)
				}
			}
			s.transport.pingPeers()
		case <-s.workCh:
		}
		if err := s.processReady(); err != nil {
			s.log.Error("raft scheduler failed; stopping", zap.Error(err))
			s.fatal <- err
			return
		}
	}
}

type readyItem struct {
	r         *Replica
	rd        raft.Ready
	lastIndex uint64
	lastTerm  uint64
	snap      *stagedSnapshot
}

// processReady is one scheduler pass: collect the Ready of every replica
// with work, persist all of them in one batch with at most one fsync, send
// their messages (grouped per destination node), apply committed entries,
// and advance.
func (s *Store) processReady() error {
	ids := s.takeWork()
	items := make([]*readyItem, 0, len(ids))
	for _, id := range ids {
		r := s.Replica(id)
		if r == nil {
			continue
		}
		r.mu.Lock()
		if r.destroyed {
			r.mu.Unlock()
			continue
		}
		r.flushReadsLocked()
		if r.raw.HasReady() {
			items = append(items, &readyItem{r: r, rd: r.raw.Ready()})
		}
		r.mu.Unlock()
	}
	if len(items) == 0 {
		return nil
	}
	start := time.Now()
	if err := s.sendLeaderMessages(items); err != nil {
		return err
	}
	b := s.db.NewBatch()
	mustSync, snapshot := false, false
	for _, it := range items {
		if err := it.r.persistReady(b, it); err != nil {
			b.Close()
			return err
		}
		mustSync = mustSync || it.rd.MustSync
		snapshot = snapshot || it.snap != nil
	}
	if snapshot {
		failpointBeforeSnapshotCommit()
	}
	if !b.Empty() {
		opt := pebble.NoSync
		if mustSync {
			opt = pebble.Sync
		}
		if err := b.Commit(opt); err != nil {
			b.Close()
			return fmt.Errorf("raft batch commit: %w", err)
		}
		if mustSync {
			s.metrics.walFsync.Observe(time.Since(start).Seconds())
		}
	}
	b.Close()
	s.metrics.readyBatchSize.Observe(float64(len(items)))
	if snapshot {
		failpointAfterSnapshotCommit()
	}
	failpointAfterRaftSave()

	// Persisted: publish the new log bounds, then send. A vote or a
	// campaign in this pass raises the vote epoch before anything of the
	// pass leaves; the pass's clock reading and epoch, taken next, are
	// the production stamp of its messages (closedts.go).
	for _, it := range items {
		if castsVote(it.rd.Messages) {
			s.voteEpoch.Add(1)
			break
		}
	}
	produced := clockEvidence{stamp: s.cfg.Clock.Now(), epoch: s.voteEpoch.Load()}
	outgoing := map[uint64][]*txnproto.RaftMessage{}
	var initialized []*Replica
	for _, it := range items {
		r := it.r
		r.mu.Lock()
		if it.snap != nil {
			// The snapshot replaced the range's keys: versions cached
			// before it may be gone or stale.
			s.newest.Clear()
			r.st.truncated = &txnproto.TruncatedState{Index: it.snap.index, Term: it.rd.Snapshot.GetMetadata().GetTerm()}
			r.st.applied = it.snap.applied
			r.st.confState = proto.Clone(it.rd.Snapshot.GetMetadata().GetConfState()).(*raftpb.ConfState)
			r.desc = it.snap.desc
			s.spanVersion.Add(1)
			if len(r.startKey) == 0 {
				// An uninitialized replica becomes a routable one (its start
				// key is set under the store lock below).
				initialized = append(initialized, r)
			}
			if st, err := kvstore.DecodeStats(it.snap.stats); err == nil {
				r.stats = st
			}
			t := &txnTable{intents: map[string]*txnproto.TxnIntent{}, records: map[string]*txnproto.TxnRecord{}}
			for _, kv := range it.snap.kvs {
				if err := t.add(r.RangeID, kv.Key, kv.Value); err != nil {
					r.mu.Unlock()
					return err
				}
			}
			t.recompute()
			r.installTxnsLocked(t)
			r.held = nil
			r.staged = nil
			r.promoteClosesLocked()
		}
		r.st.lastIndex, r.st.lastTerm = it.lastIndex, it.lastTerm
		if it.snap != nil {
			r.st.cacheTrim(^uint64(0))
		}
		r.st.cacheAppend(it.rd.Entries)
		if !raft.IsEmptyHardState(it.rd.HardState) {
			r.st.hardState = it.rd.HardState
		}
		bs := r.raw.BasicStatus()
		r.resetLeadershipLocked(bs, it.lastIndex)
		term := bs.GetTerm()
		for _, m := range it.rd.Messages {
			if staleResponse(m, term) {
				// Produced in an earlier term than the replica has now:
				// it must not vouch for the replica's clock in that term.
				// Raft tolerates the loss.
				continue
			}
			if m.GetType() == raftpb.MsgSnap {
				s.bg.Add(1)
				go func() {
					defer s.bg.Done()
					s.transport.sendSnapshot(r, m)
				}()
				continue
			}
			node, rm, err := r.outgoingLocked(m)
			if err != nil {
				r.mu.Unlock()
				return err
			}
			if node != 0 {
				outgoing[node] = append(outgoing[node], rm)
			}
		}
		if it.rd.SoftState != nil {
			r.handleSoftStateLocked(it.rd.SoftState)
		}
		r.handleReadStatesLocked(it.rd.ReadStates)
		r.mu.Unlock()
		if it.snap != nil {
			r.feed.Reset(it.snap.applied.Revision)
			r.log.Info("applied snapshot", zap.Uint64("index", it.snap.index), zap.Int64("revision", it.snap.applied.Revision))
		}
	}
	if len(initialized) > 0 {
		s.mu.Lock()
		for _, r := range initialized {
			r.startKey = r.Descriptor().StartKey
		}
		s.rebuildIndexLocked()
		s.metrics.ranges.Set(float64(len(s.replicas)))
		s.mu.Unlock()
	}
	for node, msgs := range outgoing {
		s.transport.send(node, msgs, produced)
	}
	if err := s.applyPass(items); err != nil {
		return err
	}
	for _, it := range items {
		r := it.r
		r.mu.Lock()
		r.raw.Advance(it.rd)
		r.releaseReadersLocked()
		more := r.raw.HasReady() || len(r.pendingReads) > 0
		r.mu.Unlock()
		if more {
			s.enqueue(r.RangeID)
		}
	}
	s.metrics.readyLatency.Observe(time.Since(start).Seconds())
	return nil
}

// applyPass applies the committed entries of every replica of the pass in
// one indexed batch, committed once without fsync, then publishes each
// replica's results in order. Staging and publishing are split so that
// nothing of a replica's apply is visible before the batch holding it is.
func (s *Store) applyPass(items []*readyItem) error {
	b := s.db.NewIndexedBatch()
	defer b.Close()
	var staged []stagedApply
	split := false
	for _, it := range items {
		if len(it.rd.CommittedEntries) == 0 {
			continue
		}
		st, err := it.r.stageApply(b, it.rd.CommittedEntries)
		if err != nil {
			return err
		}
		staged = append(staged, st)
		split = split || st.split
	}
	if len(staged) == 0 {
		return nil
	}
	if split {
		failpointBeforeSplitCommit()
	}
	failpointBeforeApplyCommit()
	if err := b.Commit(pebble.NoSync); err != nil {
		return err
	}
	if split {
		for _, st := range staged {
			if st.split {
				s.log.Info("split committed", zap.Uint64("range-id", st.rangeID), zap.Uint64("index", st.index),
					zap.Uint64("generation", st.generation))
			}
		}
		failpointAfterSplitCommit()
	}
	for _, st := range staged {
		st.finish()
	}
	return nil
}

// persistReady stages a Ready's snapshot, entries and hard state in b.
func (r *Replica) persistReady(b *pebble.Batch, it *readyItem) error {
	rd := it.rd
	it.lastIndex, it.lastTerm = r.st.lastIndex, r.st.lastTerm
	if !raft.IsEmptySnap(rd.Snapshot) {
		snap, err := r.persistSnapshot(b, rd.Snapshot)
		if err != nil {
			return err
		}
		it.snap = snap
		it.lastIndex, it.lastTerm = snap.index, rd.Snapshot.GetMetadata().GetTerm()
	}
	if len(rd.Entries) > 0 {
		// After a snapshot in the same Ready the log ends at the
		// snapshot's index.
		li, lt, err := r.st.appendEntries(b, it.lastIndex, rd.Entries)
		if err != nil {
			return err
		}
		it.lastIndex, it.lastTerm = li, lt
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		if err := setProto(b, kvstore.RaftHardStateKey(r.RangeID), rd.HardState); err != nil {
			return err
		}
	}
	return nil
}

// persistSnapshot replaces the replica's data and log with a received
// snapshot's, in b.
func (r *Replica) persistSnapshot(b *pebble.Batch, snap *raftpb.Snapshot) (*stagedSnapshot, error) {
	r.mu.Lock()
	st := r.staged
	r.mu.Unlock()
	idx := snap.GetMetadata().GetIndex()
	if st == nil || st.index != idx {
		return nil, fmt.Errorf("range %d: raft accepted snapshot at index %d without its data", r.RangeID, idx)
	}
	span := kvstore.Span{Start: st.desc.StartKey, End: st.desc.EndKey}
	if err := b.DeleteRange(kvstore.MVCCSpanBound(span.Start), kvstore.MVCCSpanBound(span.End), nil); err != nil {
		return nil, err
	}
	if err := b.DeleteRange(kvstore.RaftLogKey(r.RangeID, 0), kvstore.RaftLogKey(r.RangeID, ^uint64(0)), nil); err != nil {
		return nil, err
	}
	for _, bounds := range [][2][]byte{spanOf(kvstore.IntentSpan(r.RangeID)), spanOf(kvstore.TxnRecordSpan(r.RangeID))} {
		if err := b.DeleteRange(bounds[0], bounds[1], nil); err != nil {
			return nil, err
		}
	}
	for _, kv := range st.kvs {
		if err := r.store.presence.AddEngineKey(kv.Key); err != nil {
			return nil, err
		}
		if err := b.Set(kv.Key, kv.Value, nil); err != nil {
			return nil, err
		}
	}
	if err := setProto(b, kvstore.RaftTruncatedStateKey(r.RangeID), &txnproto.TruncatedState{Index: idx, Term: snap.GetMetadata().GetTerm()}); err != nil {
		return nil, err
	}
	if err := setProto(b, kvstore.RangeAppliedStateKey(r.RangeID), st.applied); err != nil {
		return nil, err
	}
	if err := setProto(b, kvstore.RangeDescriptorKey(r.RangeID), st.desc); err != nil {
		return nil, err
	}
	if err := b.Set(kvstore.RangeStatsKey(r.RangeID), st.stats, nil); err != nil {
		return nil, err
	}
	return st, nil
}

// maybeCampaignOnStart starts an election at once, instead of after an
// election timeout, where that cannot disturb a working leader: a range
// with a single voter, and a freshly bootstrapped range on the replica
// with the lowest ID (CockroachDB campaigns bootstrapped ranges the same
// way). PreVote keeps a spurious campaign harmless.
func (r *Replica) maybeCampaignOnStart() {
	r.mu.Lock()
	defer r.mu.Unlock()
	voters := r.st.confState.GetVoters()
	lowest := slices.Min(append([]uint64{r.replicaID}, voters...))
	fresh := r.st.applied.Index == initialIndex && r.st.lastIndex == initialIndex
	if len(voters) == 1 && voters[0] == r.replicaID || fresh && lowest == r.replicaID {
		if err := r.raw.Campaign(); err != nil {
			r.log.Debug("campaign failed", zap.Error(err))
		}
		r.store.enqueue(r.RangeID)
	}
}

func (r *Replica) handleSoftStateLocked(ss *raft.SoftState) {
	if ss.Lead != r.leaderReplica {
		r.store.metrics.leaderChanges.Inc()
		r.log.Info("range leader changed",
			zap.Uint64("leader-node", r.nodeOfReplicaLocked(ss.Lead)),
			zap.Uint64("term", r.raw.BasicStatus().GetTerm()),
			zap.String("state", ss.RaftState.String()))
		r.leaderReplica = ss.Lead
	}
	if ss.RaftState != raft.StateLeader {
		r.failReadsLocked()
	}
}

// HandleRaftMessage steps a message received from node fromNode into its
// replica. A message for a range this node has no replica of creates an
// uninitialized replica when it comes from a leader or candidate (see
// newUninitialized); other messages for unknown ranges are dropped.
func (s *Store) HandleRaftMessage(rangeID, fromNode uint64, m *raftpb.Message, quiesce bool, produced clockEvidence) {
	r := s.Replica(rangeID)
	if r == nil {
		switch m.GetType() {
		case raftpb.MsgApp, raftpb.MsgHeartbeat, raftpb.MsgSnap, raftpb.MsgVote, raftpb.MsgPreVote, raftpb.MsgTimeoutNow:
			r = s.newUninitialized(rangeID, m.GetTo())
		}
		if r == nil {
			s.log.Debug("dropping raft message for unknown range", zap.Uint64("range-id", rangeID))
			return
		}
	}
	r.mu.Lock()
	if m.GetFrom() != 0 && fromNode != 0 {
		r.peerNodes[m.GetFrom()] = fromNode
	}
	if wakesQuiesced(m, quiesce) {
		r.unquiesceLocked()
	}
	r.recordEvidenceLocked(m, produced)
	err := r.raw.Step(m)
	if err == nil && m.GetType() == raftpb.MsgHeartbeat && quiesce {
		r.maybeQuiesceFollowerLocked(m)
	}
	r.mu.Unlock()
	if err != nil {
		s.log.Debug("raft step failed", zap.Uint64("range-id", rangeID), zap.Error(err))
	}
	s.enqueue(rangeID)
}

// newUninitialized creates a replica of a range this node has no data for
// yet: no span, no configuration, an empty log. It votes and answers but
// serves nothing and is not routed to; a snapshot from the range's leader
// initializes it, or, if this node's left-hand replica applies the split
// that created the range first, the split does (preserving the term and
// vote the replica may already have cast). CockroachDB creates replicas
// from raft messages the same way. Its persisted hard state survives a
// restart, so a re-created replica never votes twice in a term.
func (s *Store) newUninitialized(rangeID, replicaID uint64) *Replica {
	if replicaID == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.replicas[rangeID]; ok {
		return r
	}
	// One snapshot for the check and the load: a split applying on the
	// scheduler goroutine meanwhile is either wholly in it or not at all.
	snap := s.db.NewSnapshot()
	defer snap.Close()
	if _, closer, err := snap.Get(kvstore.RangeDescriptorKey(rangeID)); err == nil {
		// A split created the range here a moment ago and is about to
		// install it; drop the message rather than race it.
		closer.Close()
		return nil
	}
	r, err := s.loadReplicaAs(snap, &txnproto.RangeDescriptor{RangeId: rangeID}, replicaID)
	if err != nil {
		s.log.Warn("creating uninitialized replica", zap.Uint64("range-id", rangeID), zap.Error(err))
		return nil
	}
	s.replicas[rangeID] = r
	s.log.Info("created uninitialized replica", zap.Uint64("range-id", rangeID), zap.Uint64("replica-id", replicaID))
	if s.started.Load() {
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			r.runCompactor(s.stopc)
		}()
	}
	return r
}

// initialized reports whether the replica has a span (it has applied a
// snapshot or was created by bootstrap or a split).
func (r *Replica) initializedLocked() bool { return len(r.desc.EndKey) > 0 }

// overlapsInitialized returns an initialized replica other than except
// whose span overlaps [start, end), or nil.
func (s *Store) overlapsInitialized(start, end []byte, except uint64) *Replica {
	for _, r := range s.Replicas() {
		if r.RangeID == except {
			continue
		}
		r.mu.Lock()
		ok := r.initializedLocked() && string(start) < string(r.desc.EndKey) && string(r.desc.StartKey) < string(end)
		r.mu.Unlock()
		if ok {
			return r
		}
	}
	return nil
}

// HasLeader reports whether every replica on the node knows a leader.
func (s *Store) HasLeader() bool {
	for _, r := range s.Replicas() {
		r.mu.Lock()
		lead := r.raw.BasicStatus().Lead
		init := r.initializedLocked()
		r.mu.Unlock()
		if lead == raft.None && init {
			return false
		}
	}
	return true
}

// sendLeaderMessages sends the pass's appends and heartbeats (MsgApp,
// MsgHeartbeat: only a leader sends them) before the pass persists
// anything, and leaves the other messages for after. A leader may send
// entries while it writes them itself (raft thesis §10.2.1; etcd's leader
// sends before it saves): raft counts the leader's own copy only once it
// is durable, through the self-acknowledgement it steps at Advance, so an
// entry still commits only on a durable majority, and followers persist
// before they acknowledge. The leader's disk write thereby overlaps its
// followers' instead of preceding it. Replicas installing a snapshot send
// nothing early. These messages carry no production stamp: only
// responses serve as clock evidence (closedts.go).
func (s *Store) sendLeaderMessages(items []*readyItem) error {
	var early map[uint64][]*txnproto.RaftMessage
	for _, it := range items {
		if !raft.IsEmptySnap(it.rd.Snapshot) {
			continue
		}
		r := it.r
		var rest []*raftpb.Message
		r.mu.Lock()
		for _, m := range it.rd.Messages {
			if t := m.GetType(); t != raftpb.MsgApp && t != raftpb.MsgHeartbeat {
				rest = append(rest, m)
				continue
			}
			node, rm, err := r.outgoingLocked(m)
			if err != nil {
				r.mu.Unlock()
				return err
			}
			if node == 0 {
				continue
			}
			if early == nil {
				early = map[uint64][]*txnproto.RaftMessage{}
			}
			early[node] = append(early[node], rm)
		}
		r.mu.Unlock()
		it.rd.Messages = rest
	}
	for node, msgs := range early {
		s.transport.send(node, msgs, clockEvidence{})
	}
	return nil
}

// castsVote reports whether msgs include a vote for, or a campaign in, a
// new term (a granted MsgVoteResp, or a MsgVote).
func castsVote(msgs []*raftpb.Message) bool {
	for _, m := range msgs {
		switch m.GetType() {
		case raftpb.MsgVote:
			return true
		case raftpb.MsgVoteResp:
			if !m.GetReject() {
				return true
			}
		}
	}
	return false
}

// staleResponse reports whether m is a response produced in a term older
// than term, the replica's current one.
func staleResponse(m *raftpb.Message, term uint64) bool {
	switch m.GetType() {
	case raftpb.MsgAppResp, raftpb.MsgHeartbeatResp:
		return m.GetTerm() < term
	}
	return false
}

// outgoingLocked marshals m for the transport and names the node of its
// recipient; node is 0 (drop m) when the recipient's node is unknown.
func (r *Replica) outgoingLocked(m *raftpb.Message) (node uint64, rm *txnproto.RaftMessage, err error) {
	node = r.nodeOfReplicaLocked(m.GetTo())
	if node == 0 {
		return 0, nil, nil
	}
	data, err := proto.Marshal(m)
	if err != nil {
		return 0, nil, err
	}
	return node, &txnproto.RaftMessage{RangeId: r.RangeID, Message: data}, nil
}
