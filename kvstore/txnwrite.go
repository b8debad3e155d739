package kvstore

import (
	"bytes"
	"encoding/hex"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Local keys of a range's cross-range transaction state
// (docs/transactions.md): 0x00 'r' rangeID 'i' txnID holds an intent
// (txnproto.TxnIntent) and 0x00 'r' rangeID 'x' txnID a transaction
// record (txnproto.TxnRecord). Both are written by applying replicated
// commands, so every replica holds the same set, and snapshots carry them.
const (
	suffixIntent    = 'i'
	suffixTxnRecord = 'x'
)

// IntentKey is the key of the range's intent for txnID.
func IntentKey(rangeID uint64, txnID []byte) []byte {
	return append(rangeLocalKey(rangeID, suffixIntent), txnID...)
}

// TxnRecordKey is the key of the transaction record of txnID on its anchor
// range.
func TxnRecordKey(rangeID uint64, txnID []byte) []byte {
	return append(rangeLocalKey(rangeID, suffixTxnRecord), txnID...)
}

// IntentSpan bounds every IntentKey of the range.
func IntentSpan(rangeID uint64) (start, end []byte) {
	return rangeLocalKey(rangeID, suffixIntent), rangeLocalKey(rangeID, suffixIntent+1)
}

// TxnRecordSpan bounds every TxnRecordKey of the range.
func TxnRecordSpan(rangeID uint64) (start, end []byte) {
	return rangeLocalKey(rangeID, suffixTxnRecord), rangeLocalKey(rangeID, suffixTxnRecord+1)
}

// ParseTxnStateKey splits a key of the range's transaction state into its
// kind (intent is false for a record) and transaction ID; ok is false for
// any other key.
func ParseTxnStateKey(rangeID uint64, key []byte) (intent bool, txnID []byte, ok bool) {
	prefix := RangeLocalPrefix(rangeID)
	if !bytes.HasPrefix(key, prefix) || len(key) <= len(prefix) {
		return false, nil, false
	}
	switch key[len(prefix)] {
	case suffixIntent:
		return true, key[len(prefix)+1:], true
	case suffixTxnRecord:
		return false, key[len(prefix)+1:], true
	}
	return false, nil, false
}

// TxnWrite is one key's final change by a committed cross-range
// transaction: a put of Value with Lease, or a delete. Key is a span key.
type TxnWrite struct {
	Key    []byte
	Value  []byte
	Lease  int64
	Delete bool
}

// ApplyTxnWrites applies a committed transaction's writes at w.Rev, in
// order, as a resolved intent does: a put keeps the key's create revision
// and increments its version (a new generation when absent or deleted), a
// delete of an absent key changes nothing. Keys outside w.Span are
// skipped (they belong to other participants). Events get the previous
// live version as PrevKv. The keys must have no version above w.Rev (the
// intent locked them since a revision at or below w.Rev); an error is
// returned otherwise, before anything is written for that key.
func ApplyTxnWrites(w *WriteBatch, writes []TxnWrite) error {
	for _, tw := range writes {
		if bytes.Compare(tw.Key, w.Span.Start) < 0 || bytes.Compare(tw.Key, w.Span.End) >= 0 {
			continue
		}
		prev, prevSize, err := w.newest(tw.Key)
		if err != nil {
			return err
		}
		live := prev != nil && !prev.Tombstone
		key := stripNS(tw.Key)
		if tw.Delete {
			if !live {
				continue
			}
			if err := w.writeVersion(tw.Key, prev, prevSize, &Version{Tombstone: true}); err != nil {
				return err
			}
			w.Events = append(w.Events, &mvccpb.Event{Type: mvccpb.Event_DELETE,
				Kv: &mvccpb.KeyValue{Key: key, ModRevision: w.Rev}, PrevKv: prev.keyValue(key)})
			continue
		}
		v := &Version{CreateRevision: w.Rev, Version: 1, Lease: tw.Lease, Value: tw.Value}
		if live {
			v.CreateRevision, v.Version = prev.CreateRevision, prev.Version+1
		}
		if err := w.writeVersion(tw.Key, prev, prevSize, v); err != nil {
			return err
		}
		ev := &mvccpb.Event{Type: mvccpb.Event_PUT, Kv: v.keyValue(key)}
		if live {
			ev.PrevKv = prev.keyValue(key)
		}
		w.Events = append(w.Events, ev)
	}
	return nil
}

// LoadSnapshotKVs stages, in b, the live keys kvs (as MVCCScan returns
// them, in keyspace ks) at their own revisions, so that a transaction
// evaluated on b sees exactly them: how a cross-range coordinator rebuilds
// the locked spans of its participants (their prepares' reads) in a
// batch over an empty engine.
func LoadSnapshotKVs(b *pebble.Batch, ks Keyspace, kvs []*mvccpb.KeyValue) error {
	var buf []byte
	for _, kv := range kvs {
		spanKey := append([]byte{byte(ks)}, kv.Key...)
		v := &Version{CreateRevision: kv.CreateRevision, Version: kv.Version, Lease: kv.Lease, Value: kv.Value}
		buf = EncodeVersion(buf[:0], v)
		if err := b.Set(EncodeMVCCKey(nil, spanKey, kv.ModRevision), buf, nil); err != nil {
			return err
		}
	}
	return nil
}

// LoadSnapshotTombstones stages, in b, a tombstone at rev for every key
// (etcd keys in keyspace ks): the keys LoadSnapshotKVs loaded from a
// past revision that are no longer live.
func LoadSnapshotTombstones(b *pebble.Batch, ks Keyspace, keys [][]byte, rev int64) error {
	val := EncodeVersion(nil, &Version{Tombstone: true})
	for _, k := range keys {
		spanKey := append([]byte{byte(ks)}, k...)
		if err := b.Set(EncodeMVCCKey(nil, spanKey, rev), val, nil); err != nil {
			return err
		}
	}
	return nil
}

// TxnIDString renders a transaction ID for logs and errors.
func TxnIDString(id []byte) string { return hex.EncodeToString(id) }

// TxnKeys calls add with the key and range_end (etcd's form: empty for one
// key, "\x00" for every key from key on) of every compare and operation of
// req, both branches and nested txns included: every span a router must
// place the txn by. A put reports an empty range_end.
func TxnKeys(req *pb.TxnRequest, add func(key, rangeEnd []byte)) {
	for _, c := range req.Compare {
		add(c.Key, c.RangeEnd)
	}
	for _, ops := range [][]*pb.RequestOp{req.Success, req.Failure} {
		for _, op := range ops {
			switch v := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				add(v.RequestRange.Key, v.RequestRange.RangeEnd)
			case *pb.RequestOp_RequestPut:
				add(v.RequestPut.Key, nil)
			case *pb.RequestOp_RequestDeleteRange:
				add(v.RequestDeleteRange.Key, v.RequestDeleteRange.RangeEnd)
			case *pb.RequestOp_RequestTxn:
				TxnKeys(v.RequestTxn, add)
			}
		}
	}
}

// CommandIntervals reports the span-key intervals an etcd write request
// (a *pb.PutRequest, *pb.DeleteRangeRequest or *pb.TxnRequest) reads or
// writes in keyspace ks.
func CommandIntervals(ks Keyspace, req any, add func(start, end []byte)) {
	switch v := req.(type) {
	case *pb.PutRequest:
		add(etcdInterval(ks, v.Key, nil))
	case *pb.DeleteRangeRequest:
		add(etcdInterval(ks, v.Key, v.RangeEnd))
	case *pb.TxnRequest:
		TxnKeys(v, func(key, rangeEnd []byte) { add(etcdInterval(ks, key, rangeEnd)) })
	}
}
