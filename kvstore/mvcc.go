package kvstore

import (
	"errors"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Keyspace selects the namespace an etcd-shaped request addresses: user keys
// (the etcd keyspace) or meta keys (range descriptors).
type Keyspace byte

const (
	// UserKeys is the etcd keyspace.
	UserKeys Keyspace = Keyspace(nsUser)
	// MetaKeys is the meta range's keyspace.
	MetaKeys Keyspace = Keyspace(nsMeta)
)

// Span is a half-open interval [Start, End) of span keys (namespace byte
// followed by the key; see keys.go).
type Span struct {
	Start, End []byte
}

// Stats are a range's MVCC statistics, maintained on apply. Bytes count
// encoded engine keys plus encoded values.
type Stats struct {
	LiveKeys   int64 // keys whose newest version is not a tombstone
	LiveBytes  int64 // bytes of those newest versions
	TotalBytes int64 // bytes of every stored version, tombstones included
	Versions   int64 // number of stored versions, tombstones included
}

// WriteBatch applies the etcd write requests of one raft command. Every
// change it makes is at revision Rev; Events receives one event per change
// in operation order with PrevKv filled when a previous live version exists.
type WriteBatch struct {
	Batch    *pebble.Batch // must be an indexed batch (reads see earlier writes)
	Rev      int64         // revision of this command; > every stored revision
	Keyspace Keyspace
	Span     Span // the range's span; a write outside it fails with ErrKeyOutsideSpan
	Events   []*mvccpb.Event
	Delta    Stats // change to the range's Stats made by this batch
	// CompactRev is the range's compacted revision: a Range inside a Txn
	// with 0 != revision < CompactRev fails with ErrGRPCCompacted, as etcd.
	// Zero means never compacted.
	CompactRev int64
	// Newest, when set, caches the newest versions the batch replaces
	// (the apply path's NewestCache); nil reads them from Batch. Set only
	// on the apply path, where Rev is above every stored revision, so a
	// one-key compare reads the key's newest version through it too.
	Newest *NewestCache
	// Presence, when set, is the node's KeyPresence: a key it does not
	// hold is absent without a seek, and every version written is added.
	Presence *KeyPresence
	sub      int64 // next sub-revision (operation order within Rev)
}

// ErrKeyOutsideSpan is returned by ApplyPut, ApplyDeleteRange and ApplyTxn
// when a key or key range the request reads or writes is not contained in
// WriteBatch.Span (the range's span changed, e.g. by a split; the caller
// should re-route). Nothing is written in that case.
var ErrKeyOutsideSpan = errors.New("kvstore: key outside the range's span")

// ApplyPut executes an etcd Put at w.Rev, following etcd's apply: the
// version increments (1 and create_revision = w.Rev when the key is absent
// or deleted), lease is req.Lease, ignore_value/ignore_lease take the value
// and lease of the existing key and fail with rpctypes.ErrGRPCKeyNotFound
// when it does not exist (both flags may be combined), prev_kv returns the
// previous live version. Header.Revision is w.Rev. The lease's existence is
// not checked here. Errors: ErrGRPCKeyNotFound, ErrKeyOutsideSpan, engine
// errors; nothing is written when an error is returned.
func ApplyPut(w *WriteBatch, req *pb.PutRequest) (*pb.PutResponse, error) {
	start, end := etcdInterval(w.Keyspace, req.Key, nil)
	if !inSpan(w.Span, start, end) {
		return nil, ErrKeyOutsideSpan
	}
	return w.put(req)
}

// ApplyDeleteRange executes an etcd DeleteRange at w.Rev: key/range_end as
// in Range (empty = one key, "\x00" = every key >= key), a tombstone for
// every key live at w.Rev (none for absent keys), Deleted their number and,
// with prev_kv, PrevKvs their last versions in key order. Header.Revision
// is w.Rev. Errors: ErrKeyOutsideSpan when any part of the interval is
// outside w.Span (nothing written), engine errors.
func ApplyDeleteRange(w *WriteBatch, req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	start, end := etcdInterval(w.Keyspace, req.Key, req.RangeEnd)
	if !inSpan(w.Span, start, end) {
		return nil, ErrKeyOutsideSpan
	}
	return w.deleteRange(req)
}

// ApplyTxn executes an etcd Txn at w.Rev as etcd's apply does: every
// compare (nested ones on the chosen branches included) is evaluated first
// against the state before the txn; a compare with range_end holds only if
// it holds for every key in the range (no key: VALUE compares fail, others
// compare against the zero KeyValue). Then the chosen branch is checked
// (Range revisions, ignore_value/ignore_lease prerequisites) and executed
// in order; Range ops read at w.Rev (or their revision) and see earlier
// writes of the txn. All changes are at w.Rev with increasing sub-revisions.
// Response shapes follow etcd: top-level Header.Revision = w.Rev, nested
// ResponseTxn headers are empty, inner Put/DeleteRange/Range headers carry
// w.Rev. Errors: ErrKeyOutsideSpan (any compared, read or written key of
// the executed path outside w.Span), rpctypes.ErrGRPCFutureRev (range
// revision > w.Rev), ErrGRPCCompacted, ErrGRPCKeyNotFound; these are
// detected before anything is written. An error during execution (only
// possible for requests ValidateTxn rejects, or engine errors) may leave
// partial writes: discard the batch.
func ApplyTxn(w *WriteBatch, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	plan, err := w.planTxn(req)
	if err != nil {
		return nil, err
	}
	if err := w.checkTxn(req, plan); err != nil {
		return nil, err
	}
	resp, err := w.execTxn(req, plan)
	if err != nil {
		return nil, err
	}
	resp.Header.Revision = w.Rev
	return resp, nil
}

// ExecRange serves an etcd Range over the part of the request that falls
// inside span (ks selects the keyspace, so span keys are ks-byte||key).
// Revision <= 0 reads at currentRev; Revision > currentRev fails with
// rpctypes.ErrGRPCFutureRev and a read revision < compactRev with
// rpctypes.ErrGRPCCompacted (etcd: reading at exactly the compacted revision
// is allowed). limit, more, count, sort, keys_only, count_only and the
// min/max mod/create revision filters follow etcd's apply: count is the
// number of keys of the (clipped) range at the read revision, ignoring limit
// and filters. As in etcd, Header.Revision is currentRev (also for reads at
// an older revision), and keys_only without sort target VALUE omits Lease.
func ExecRange(r pebble.Reader, ks Keyspace, span Span, req *pb.RangeRequest, currentRev, compactRev int64) (*pb.RangeResponse, error) {
	if req.Revision > currentRev {
		return nil, rpctypes.ErrGRPCFutureRev
	}
	rev := req.Revision
	if rev <= 0 {
		rev = currentRev
	}
	if rev < compactRev {
		return nil, rpctypes.ErrGRPCCompacted
	}
	start, end := etcdInterval(ks, req.Key, req.RangeEnd)
	start, end = clip(span, start, end)
	return execRange(r, start, end, req, rev, currentRev)
}
