package rangeraft

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/hlc"
	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/txnproto"
)

// A range's share of cross-range transactions (docs/transactions.md): the
// intents it holds as a participant and the records it holds as an
// anchor. Both are replicated state, changed only by applying the Txn*
// commands, persisted under the range's local keys and carried by
// snapshots.
//
// Invariants maintained here:
//   - A write command (put, delete, one-range txn, prepare) whose keys
//     overlap another transaction's intent fails at apply with
//     *IntentConflictError and writes nothing.
//   - While an intent prepared at P exists, the range's readable revision
//     stays below P, and events at or above P are held back from the feed
//     (Replica.held) until every intent below them resolved: the commit
//     revision R >= P may be below revisions the range applied since, and
//     watchers and readers must never have passed it.
//   - A prepare applies only at or before its transaction's expiry; an
//     abort of a pending record applies only after it (or from the
//     coordinator); commit and abort are decided by the record's first
//     transition in the anchor's log, so exactly one wins.
//   - A split hands the right-hand range the records anchored in it and
//     the intents over its keys, and never cuts an intent (splitTxnState).

// txnTable is a replica's transaction state, keyed by transaction ID. An
// installed table (Replica.txns) is never modified: apply copies it first.
type txnTable struct {
	intents map[string]*txnproto.TxnIntent
	records map[string]*txnproto.TxnRecord
	// minPrepare is the lowest prepare revision among intents (0: none).
	minPrepare int64
}

func (t *txnTable) empty() bool {
	return t == nil || len(t.intents) == 0 && len(t.records) == 0
}

func (t *txnTable) clone() *txnTable {
	out := &txnTable{intents: map[string]*txnproto.TxnIntent{}, records: map[string]*txnproto.TxnRecord{}}
	if t != nil {
		for k, v := range t.intents {
			out.intents[k] = v
		}
		for k, v := range t.records {
			out.records[k] = v
		}
		out.minPrepare = t.minPrepare
	}
	return out
}

func (t *txnTable) recompute() {
	t.minPrepare = 0
	for _, in := range t.intents {
		if t.minPrepare == 0 || in.PrepareRevision < t.minPrepare {
			t.minPrepare = in.PrepareRevision
		}
	}
}

// conflict returns an intent of a transaction other than self overlapping
// [start, end), or nil.
func (t *txnTable) conflict(self string, start, end []byte) *txnproto.TxnIntent {
	if t == nil {
		return nil
	}
	for id, in := range t.intents {
		if id == self {
			continue
		}
		for _, s := range in.Spans {
			if bytes.Compare(start, s.End) < 0 && bytes.Compare(s.Start, end) < 0 {
				return in
			}
		}
	}
	return nil
}

// loadTxnTable reads a range's intents and records from rd.
func loadTxnTable(rd pebble.Reader, rangeID uint64) (*txnTable, error) {
	t := &txnTable{intents: map[string]*txnproto.TxnIntent{}, records: map[string]*txnproto.TxnRecord{}}
	for _, span := range [][2][]byte{spanOf(kvstore.IntentSpan(rangeID)), spanOf(kvstore.TxnRecordSpan(rangeID))} {
		it, err := rd.NewIter(&pebble.IterOptions{LowerBound: span[0], UpperBound: span[1]})
		if err != nil {
			return nil, err
		}
		for ok := it.First(); ok; ok = it.Next() {
			if err := t.add(rangeID, it.Key(), it.Value()); err != nil {
				it.Close()
				return nil, err
			}
		}
		if err := it.Close(); err != nil {
			return nil, err
		}
	}
	t.recompute()
	return t, nil
}

func spanOf(start, end []byte) [2][]byte { return [2][]byte{start, end} }

// add decodes one persisted intent or record (key under the range's
// local prefix) into t; other keys are ignored.
func (t *txnTable) add(rangeID uint64, key, value []byte) error {
	intent, txnID, ok := kvstore.ParseTxnStateKey(rangeID, key)
	if !ok {
		return nil
	}
	id := string(txnID)
	if intent {
		in := &txnproto.TxnIntent{}
		if err := proto.Unmarshal(value, in); err != nil {
			return fmt.Errorf("range %d: corrupt intent %x: %w", rangeID, id, err)
		}
		t.intents[id] = in
		return nil
	}
	rec := &txnproto.TxnRecord{}
	if err := proto.Unmarshal(value, rec); err != nil {
		return fmt.Errorf("range %d: corrupt transaction record %x: %w", rangeID, id, err)
	}
	t.records[id] = rec
	return nil
}

// IntentConflictError is the result of a write whose keys overlap an
// intent of a cross-range transaction on the range. Nothing was written;
// the proposer waits for the intent to resolve (Replica.WaitIntent) or
// pushes its transaction, then retries.
type IntentConflictError struct {
	RangeID uint64
	Txn     *txnproto.TxnMeta
}

func (e *IntentConflictError) Error() string {
	return fmt.Sprintf("rangekv: range %d: keys locked by transaction %s", e.RangeID, kvstore.TxnIDString(e.Txn.GetId()))
}

// Errors of transaction commands.
var (
	// ErrTxnAborted: the transaction's record is aborted (or the prepare
	// came after its expiry); the coordinator must not commit.
	ErrTxnAborted = errors.New("rangekv: transaction aborted")
	// ErrTxnNotFound: a commit found no pending record.
	ErrTxnNotFound = errors.New("rangekv: transaction record not found")
	// ErrMalformedTxnCommand: a prepare without spans or transaction ID.
	ErrMalformedTxnCommand = errors.New("rangekv: malformed transaction command")
	// ErrTxnNotExpired: a recover applied before the transaction's expiry
	// (a prepare could still come); the recoverer retries later.
	ErrTxnNotExpired = errors.New("rangekv: transaction not expired yet")
	// ErrSplitThroughIntent: a split key inside the spans of an intent;
	// the splitter retries once the intent resolves.
	ErrSplitThroughIntent = errors.New("rangekv: split key inside a transaction's locked keys; retry the split")
)

// txnApply is the outcome of one transaction command in stageApply.
type txnApply struct {
	resp proto.Message
	// events written at evRev (a commit or resolve).
	events []*mvccpb.Event
	evRev  int64
	delta  kvstore.Stats
	// closeAt is a revision the command closes the range at (a prepare).
	closeAt int64
}

// applyTxnCommand stages a Txn* command of the replica, applied at rev
// (the command's own revision), against table t (a private copy). The
// writes of a commit or resolve are at the transaction's commit revision.
func (r *Replica) applyTxnCommand(b *pebble.Batch, t *txnTable, cmd *txnproto.Command, rev int64,
	span kvstore.Span, compactRev int64) (txnApply, error) {
	var out txnApply
	if k := cmd.TxnKey; k != nil && (bytes.Compare(k, span.Start) < 0 || bytes.Compare(k, span.End) >= 0) {
		return out, kvstore.ErrKeyOutsideSpan
	}
	switch {
	case cmd.TxnPrepare != nil:
		in := cmd.TxnPrepare.Intent
		id := string(in.GetTxn().GetId())
		if len(in.GetSpans()) == 0 || len(in.GetTxn().GetId()) == 0 {
			return out, ErrMalformedTxnCommand
		}
		if hlc.Physical(rev) > in.GetTxn().GetExpiryMs() {
			// Revisions grow along the log: once one past the expiry
			// applied (a recovery's), no prepare of the txn ever does.
			return out, ErrTxnAborted
		}
		for _, s := range in.Spans {
			if bytes.Compare(s.Start, span.Start) < 0 || bytes.Compare(s.End, span.End) > 0 || bytes.Compare(s.Start, s.End) >= 0 {
				return out, kvstore.ErrKeyOutsideSpan
			}
			if c := t.conflict(id, s.Start, s.End); c != nil {
				return out, &IntentConflictError{RangeID: r.RangeID, Txn: c.Txn}
			}
		}
		if cmd.TxnPrepare.Anchor {
			if rec, ok := t.records[id]; ok && rec.Status != txnproto.TxnStatus_TXN_PENDING {
				return out, ErrTxnAborted
			}
		}
		res := &txnproto.TxnCommandResult{PrepareRevision: rev}
		if old, ok := t.intents[id]; ok {
			// A retried prepare: the lock is held already.
			res.PrepareRevision = old.PrepareRevision
		} else {
			in = proto.Clone(in).(*txnproto.TxnIntent)
			in.PrepareRevision = rev
			if err := setProto(b, kvstore.IntentKey(r.RangeID, in.Txn.Id), in); err != nil {
				return out, err
			}
			t.intents[id] = in
			out.closeAt = rev
			if cmd.TxnPrepare.Anchor {
				rec := &txnproto.TxnRecord{Txn: in.Txn, Status: txnproto.TxnStatus_TXN_PENDING,
					Request: cmd.TxnPrepare.Request, Participants: cmd.TxnPrepare.Participants}
				if err := setProto(b, kvstore.TxnRecordKey(r.RangeID, in.Txn.Id), rec); err != nil {
					return out, err
				}
				t.records[id] = rec
			}
		}
		kvs, err := lockedKVs(b, t.intents[id])
		if err != nil {
			return out, err
		}
		res.Kvs = kvs
		out.resp = res
		t.recompute()
	case cmd.TxnRecover != nil:
		if hlc.Physical(rev) <= cmd.TxnRecover.ExpiryMs {
			return out, ErrTxnNotExpired
		}
		res := &txnproto.TxnCommandResult{}
		if in, ok := t.intents[string(cmd.TxnRecover.TxnId)]; ok {
			kvs, err := lockedKVs(b, in)
			if err != nil {
				return out, err
			}
			res.Prepared, res.PrepareRevision, res.Kvs = true, in.PrepareRevision, kvs
		}
		out.resp = res
	case cmd.TxnCommit != nil:
		c := cmd.TxnCommit
		id := string(c.TxnId)
		rec, ok := t.records[id]
		switch {
		case !ok:
			return out, ErrTxnNotFound
		case rec.Status == txnproto.TxnStatus_TXN_COMMITTED && rec.CommitRevision == c.CommitRevision:
			out.resp = &txnproto.TxnCommandResult{Record: rec}
			return out, nil // a retried commit
		case rec.Status != txnproto.TxnStatus_TXN_PENDING:
			return out, ErrTxnAborted
		}
		rec = &txnproto.TxnRecord{Txn: rec.Txn, Status: txnproto.TxnStatus_TXN_COMMITTED,
			CommitRevision: c.CommitRevision, Writes: c.Writes, Participants: c.Participants}
		if err := r.resolveIntent(b, t, id, true, c.CommitRevision, c.Writes, span, compactRev, &out); err != nil {
			return out, err
		}
		if err := setProto(b, kvstore.TxnRecordKey(r.RangeID, rec.Txn.Id), rec); err != nil {
			return out, err
		}
		t.records[id] = rec
		out.resp = &txnproto.TxnCommandResult{Record: rec}
	case cmd.TxnResolve != nil:
		c := cmd.TxnResolve
		if err := r.resolveIntent(b, t, string(c.TxnId), c.Commit, c.CommitRevision, c.Writes, span, compactRev, &out); err != nil {
			return out, err
		}
		out.resp = &txnproto.TxnCommandResult{}
	case cmd.TxnAbort != nil:
		meta := cmd.TxnAbort.Txn
		id := string(meta.GetId())
		rec, ok := t.records[id]
		switch {
		case !ok:
			// Never prepared here (or long forgotten): an aborted record
			// makes a late prepare fail.
			rec = &txnproto.TxnRecord{Txn: meta, Status: txnproto.TxnStatus_TXN_ABORTED}
		case rec.Status == txnproto.TxnStatus_TXN_PENDING && (cmd.TxnAbort.Coordinator ||
			cmd.TxnAbort.Recovered && hlc.Physical(rev) > rec.Txn.GetExpiryMs()):
			rec = &txnproto.TxnRecord{Txn: rec.Txn, Status: txnproto.TxnStatus_TXN_ABORTED}
		default:
			out.resp = &txnproto.TxnCommandResult{Record: rec}
			return out, nil
		}
		r.log.Debug("transaction aborted", zap.String("txn", kvstore.TxnIDString(meta.Id)), zap.Bool("coordinator", cmd.TxnAbort.Coordinator),
			zap.Bool("recovered", cmd.TxnAbort.Recovered), zap.Bool("had-record", ok))
		if err := r.resolveIntent(b, t, id, false, 0, nil, span, compactRev, &out); err != nil {
			return out, err
		}
		if err := setProto(b, kvstore.TxnRecordKey(r.RangeID, meta.Id), rec); err != nil {
			return out, err
		}
		t.records[id] = rec
		out.resp = &txnproto.TxnCommandResult{Record: rec}
	case cmd.TxnForget != nil:
		id := string(cmd.TxnForget.TxnId)
		if rec, ok := t.records[id]; ok && rec.Status != txnproto.TxnStatus_TXN_PENDING {
			if err := b.Delete(kvstore.TxnRecordKey(r.RangeID, cmd.TxnForget.TxnId), nil); err != nil {
				return out, err
			}
			delete(t.records, id)
		}
		out.resp = &txnproto.TxnCommandResult{}
	}
	return out, nil
}

// resolveIntent releases the range's intent of transaction id, first
// applying, when commit is set, the range's share of writes at revision
// commitRev. Without an intent it does nothing (already resolved).
func (r *Replica) resolveIntent(b *pebble.Batch, t *txnTable, id string, commit bool, commitRev int64,
	writes []*txnproto.TxnWrite, span kvstore.Span, compactRev int64, out *txnApply) error {
	in, ok := t.intents[id]
	if !ok {
		if commit {
			r.log.Debug("commit resolution without an intent (resolved before)", zap.String("txn", kvstore.TxnIDString([]byte(id))),
				zap.Int64("commit-revision", commitRev))
		}
		return nil
	}
	if commit {
		if commitRev < in.PrepareRevision {
			return fmt.Errorf("rangekv: commit revision %d below the prepare revision %d of transaction %s",
				commitRev, in.PrepareRevision, kvstore.TxnIDString([]byte(id)))
		}
		wb := &kvstore.WriteBatch{Batch: b, Rev: commitRev, Keyspace: r.keyspace, Span: span, CompactRev: compactRev, Newest: r.store.newest, Presence: r.store.presence}
		ws := make([]kvstore.TxnWrite, 0, len(writes))
		for _, w := range writes {
			ws = append(ws, kvstore.TxnWrite{Key: w.Key, Value: w.Value, Lease: w.Lease, Delete: w.Delete})
		}
		if err := kvstore.ApplyTxnWrites(wb, ws); err != nil {
			r.log.Error("applying a committed transaction's writes failed", zap.String("txn", kvstore.TxnIDString([]byte(id))), zap.Error(err))
			return err
		}
		out.events, out.evRev, out.delta = wb.Events, commitRev, wb.Delta
	}
	if err := b.Delete(kvstore.IntentKey(r.RangeID, in.Txn.Id), nil); err != nil {
		return err
	}
	delete(t.intents, id)
	t.recompute()
	return nil
}

// writeConflict returns *IntentConflictError when the etcd write request
// req (already unmarshaled) touches keys under an intent in t.
func (r *Replica) writeConflict(t *txnTable, req any) error {
	if t == nil || len(t.intents) == 0 {
		return nil
	}
	var found *txnproto.TxnIntent
	kvstore.CommandIntervals(r.keyspace, req, func(start, end []byte) {
		if found == nil {
			found = t.conflict("", start, end)
		}
	})
	if found != nil {
		return &IntentConflictError{RangeID: r.RangeID, Txn: found.Txn}
	}
	return nil
}

// publishApplied hands a pass's events to the feed in revision order,
// holding back those at or above minPrepare (the lowest unresolved
// prepare): a commit below them may still come. Entries with equal
// revisions merge. It runs on the scheduler goroutine (the only user of
// r.held), before the pass's readable revision is installed.
func (r *Replica) publishApplied(pubs []FeedEntry, minPrepare int64) {
	if len(r.held) == 0 && minPrepare == 0 && increasing(pubs) {
		for _, p := range pubs {
			r.feed.Publish(p.Revision, p.Events)
		}
		return
	}
	// A pass can apply writes above an intent and then the intent's
	// resolution below them: order them before they reach the feed.
	for _, p := range pubs {
		i, found := slices.BinarySearchFunc(r.held, p.Revision, func(e FeedEntry, rev int64) int {
			return cmp.Compare(e.Revision, rev)
		})
		if found {
			r.held[i].Events = append(slices.Clip(r.held[i].Events), p.Events...)
			continue
		}
		r.held = slices.Insert(r.held, i, p)
	}
	last := r.feed.Last()
	n := 0
	for ; n < len(r.held) && (minPrepare == 0 || r.held[n].Revision < minPrepare); n++ {
		// At or below the feed's last revision only after a snapshot
		// reset the feed past it: the engine serves those events.
		if r.held[n].Revision > last {
			r.feed.Publish(r.held[n].Revision, r.held[n].Events)
			last = r.held[n].Revision
		}
	}
	r.held = slices.Delete(r.held, 0, n)
}

// Intents returns the transaction intents the replica holds, with the
// time each was first seen applied on this node (for the resolver).
func (r *Replica) Intents() []IntentInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.txns == nil {
		return nil
	}
	out := make([]IntentInfo, 0, len(r.txns.intents))
	for id, in := range r.txns.intents {
		out = append(out, IntentInfo{Intent: in, Since: r.intentSeen[id]})
	}
	return out
}

// TxnCounts returns how many intents and records the replica holds.
func (r *Replica) TxnCounts() (intents, records int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.txns == nil {
		return 0, 0
	}
	return len(r.txns.intents), len(r.txns.records)
}

// IntentInfo is an intent and the local time it was first seen applied.
type IntentInfo struct {
	Intent *txnproto.TxnIntent
	Since  time.Time
}

// Records returns the transaction records the replica holds as an anchor,
// with the local time each was first seen.
func (r *Replica) Records() []RecordInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.txns == nil {
		return nil
	}
	out := make([]RecordInfo, 0, len(r.txns.records))
	for id, rec := range r.txns.records {
		out = append(out, RecordInfo{Record: rec, Since: r.recordSeen[id]})
	}
	return out
}

// RecordInfo is a transaction record and the local time it was first seen.
type RecordInfo struct {
	Record *txnproto.TxnRecord
	Since  time.Time
}

// HasIntent reports whether the replica holds an intent of txnID.
func (r *Replica) HasIntent(txnID []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.txns == nil {
		return false
	}
	_, ok := r.txns.intents[string(txnID)]
	return ok
}

// WaitIntent blocks until the replica no longer holds an intent of txnID,
// or ctx ends.
func (r *Replica) WaitIntent(ctx context.Context, txnID []byte) error {
	for {
		r.mu.Lock()
		ch := r.appliedWaitLocked()
		held := false
		if r.txns != nil {
			_, held = r.txns.intents[string(txnID)]
		}
		r.mu.Unlock()
		if !held {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// installTxnsLocked installs the table a pass produced and tracks when
// intents and records were first seen.
func (r *Replica) installTxnsLocked(t *txnTable) {
	r.txns = t
	now := time.Now()
	r.intentSeen = trackSeen(r.intentSeen, t.intents, now)
	r.recordSeen = trackSeen(r.recordSeen, t.records, now)
}

// trackSeen keeps, for every ID in current, the time it was first seen
// (now for new ones), and forgets the others.
func trackSeen[V any](seen map[string]time.Time, current map[string]V, now time.Time) map[string]time.Time {
	if seen == nil {
		seen = map[string]time.Time{}
	}
	for id := range seen {
		if _, ok := current[id]; !ok {
			delete(seen, id)
		}
	}
	for id := range current {
		if _, ok := seen[id]; !ok {
			seen[id] = now
		}
	}
	return seen
}

// splitTxnState moves, within a split's batch, the transaction state of
// the keys the right-hand range right takes: records whose anchor key it
// holds and intents over its keys. The split key is outside every intent
// (stageSplit refused it otherwise: a participant stays one range, so
// recovery finds every intent where the record says). t is the left-hand
// table, updated in place. write is false when a snapshot initialized the
// right-hand replica already: it carries newer state of its own.
func (r *Replica) splitTxnState(b *pebble.Batch, t *txnTable, right *txnproto.RangeDescriptor, write bool) error {
	key := right.StartKey
	for id, rec := range t.records {
		if bytes.Compare(rec.Txn.GetAnchorKey(), key) < 0 {
			continue
		}
		if err := b.Delete(kvstore.TxnRecordKey(r.RangeID, []byte(id)), nil); err != nil {
			return err
		}
		if write {
			if err := setProto(b, kvstore.TxnRecordKey(right.RangeId, []byte(id)), rec); err != nil {
				return err
			}
		}
		delete(t.records, id)
	}
	for id, in := range t.intents {
		if len(in.Spans) == 0 || bytes.Compare(in.Spans[0].Start, key) < 0 {
			continue
		}
		if err := b.Delete(kvstore.IntentKey(r.RangeID, []byte(id)), nil); err != nil {
			return err
		}
		if write {
			if err := setProto(b, kvstore.IntentKey(right.RangeId, []byte(id)), in); err != nil {
				return err
			}
		}
		delete(t.intents, id)
	}
	t.recompute()
	return nil
}

// splitsIntent reports whether key falls inside an intent of t: within
// one of its spans or between two of them (an intent is one piece). t may
// be nil.
func splitsIntent(t *txnTable, key []byte) bool {
	if t == nil {
		return false
	}
	for _, in := range t.intents {
		if len(in.Spans) == 0 {
			continue
		}
		lo, hi := in.Spans[0].Start, in.Spans[0].End
		for _, s := range in.Spans[1:] {
			lo, hi = minKey(lo, s.Start), maxKey(hi, s.End)
		}
		if bytes.Compare(lo, key) < 0 && bytes.Compare(key, hi) < 0 {
			return true
		}
	}
	return false
}

// lockedKVs reads the live keys of an intent's spans through b (earlier
// commands of the apply pass included), marshaled, in key order: nothing
// changes them until the intent resolves.
func lockedKVs(b pebble.Reader, in *txnproto.TxnIntent) ([][]byte, error) {
	var out [][]byte
	for _, s := range in.Spans {
		var ferr error
		if _, err := kvstore.MVCCScan(b, s.Start, s.End, 0, 0, func(kv *mvccpb.KeyValue) bool {
			data, err := proto.Marshal(kv)
			if err != nil {
				ferr = err
				return false
			}
			out = append(out, data)
			return true
		}); err != nil || ferr != nil {
			return nil, errors.Join(err, ferr)
		}
	}
	return out, nil
}

// IsTxnCommand reports whether cmd carries exactly one transaction command
// and nothing else.
func IsTxnCommand(cmd *txnproto.Command) bool {
	if cmd == nil || cmd.Put != nil || cmd.DeleteRange != nil || cmd.Txn != nil || cmd.Compact != nil ||
		cmd.Split != nil || cmd.Close != nil {
		return false
	}
	n := 0
	for _, set := range []bool{cmd.TxnPrepare != nil, cmd.TxnCommit != nil, cmd.TxnResolve != nil,
		cmd.TxnAbort != nil, cmd.TxnForget != nil, cmd.TxnRecover != nil} {
		if set {
			n++
		}
	}
	return n == 1
}

func minKey(a, b []byte) []byte {
	if bytes.Compare(a, b) < 0 {
		return a
	}
	return b
}

func maxKey(a, b []byte) []byte {
	if bytes.Compare(a, b) > 0 {
		return a
	}
	return b
}

// increasing reports whether entries have strictly increasing revisions.
func increasing(entries []FeedEntry) bool {
	for i := 1; i < len(entries); i++ {
		if entries[i].Revision <= entries[i-1].Revision {
			return false
		}
	}
	return true
}
