package kvstore

import (
	"bytes"
	"cmp"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// newest returns the newest stored version of spanKey as seen by the batch
// (tombstones included, nil if none) and its stored size. A version above
// w.Rev violates the WriteBatch contract and is an error.
func (w *WriteBatch) newest(spanKey []byte) (*Version, int64, error) {
	v, size, ok := (*Version)(nil), int64(0), false
	if w.Newest != nil {
		v, size, ok = w.Newest.get(spanKey)
	}
	if !ok && w.Presence != nil && !w.Presence.MayContain(spanKey) {
		return nil, 0, nil // never stored
	}
	if !ok {
		var err error
		if v, size, err = getNewest(w.Batch, spanKey, 0); err != nil {
			return nil, 0, err
		}
		if v != nil && w.Newest != nil {
			w.Newest.set(spanKey, v, size)
		}
	}
	if v != nil && v.ModRevision > w.Rev {
		return nil, 0, fmt.Errorf("kvstore: write of %q at revision %d below its stored revision %d",
			spanKey, w.Rev, v.ModRevision)
	}
	return v, size, nil
}

// writeVersion stores v as the version of spanKey at w.Rev with the next
// sub-revision, and updates w.Delta given the key's previous newest version
// prev (nil: none) of stored size prevSize. A previous version at w.Rev
// (the key written twice by one command) is overwritten.
func (w *WriteBatch) writeVersion(spanKey []byte, prev *Version, prevSize int64, v *Version) error {
	v.ModRevision = w.Rev
	v.Sub = w.sub
	ek := EncodeMVCCKey(nil, spanKey, w.Rev)
	val := EncodeVersion(nil, v)
	if w.Presence != nil {
		w.Presence.Add(spanKey)
	}
	if err := w.Batch.Set(ek, val, nil); err != nil {
		return err
	}
	w.sub++
	size := int64(len(ek) + len(val))
	if w.Newest != nil {
		w.Newest.set(spanKey, v, size)
	}
	if prev != nil {
		if prev.ModRevision == w.Rev {
			w.Delta.Versions--
			w.Delta.TotalBytes -= prevSize
		}
		if !prev.Tombstone {
			w.Delta.LiveKeys--
			w.Delta.LiveBytes -= prevSize
		}
	}
	w.Delta.Versions++
	w.Delta.TotalBytes += size
	if !v.Tombstone {
		w.Delta.LiveKeys++
		w.Delta.LiveBytes += size
	}
	return nil
}

func (w *WriteBatch) spanKey(key []byte) []byte {
	out := make([]byte, 1+len(key))
	out[0] = byte(w.Keyspace)
	copy(out[1:], key)
	return out
}

func (w *WriteBatch) put(req *pb.PutRequest) (*pb.PutResponse, error) {
	spanKey := w.spanKey(req.GetKey())
	prev, prevSize, err := w.newest(spanKey)
	if err != nil {
		return nil, err
	}
	live := prev != nil && !prev.Tombstone
	if (req.GetIgnoreValue() || req.GetIgnoreLease()) && !live {
		return nil, rpctypes.ErrGRPCKeyNotFound
	}
	v := &Version{CreateRevision: w.Rev, Version: 1, Lease: req.GetLease(), Value: req.GetValue()}
	if live {
		v.CreateRevision, v.Version = prev.CreateRevision, prev.Version+1
	}
	if req.GetIgnoreValue() {
		v.Value = prev.Value
	}
	if req.GetIgnoreLease() {
		v.Lease = prev.Lease
	}
	if err := w.writeVersion(spanKey, prev, prevSize, v); err != nil {
		return nil, err
	}
	key := stripNS(spanKey)
	ev := &mvccpb.Event{Type: mvccpb.Event_PUT, Kv: v.keyValue(key)}
	resp := &pb.PutResponse{Header: &pb.ResponseHeader{Revision: w.Rev}}
	if live {
		ev.PrevKv = prev.keyValue(key)
		if req.GetPrevKv() {
			resp.PrevKv = prev.keyValue(key)
		}
	}
	w.Events = append(w.Events, ev)
	return resp, nil
}

func (w *WriteBatch) deleteRange(req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	start, end := etcdInterval(w.Keyspace, req.GetKey(), req.GetRangeEnd())
	resp := &pb.DeleteRangeResponse{Header: &pb.ResponseHeader{Revision: w.Rev}}
	if bytes.Compare(start, end) >= 0 {
		return resp, nil
	}
	type victim struct {
		spanKey []byte
		prev    *Version
		size    int64
	}
	var victims []victim
	li, err := newLatestIter(w.Batch, start, end, 0)
	if err != nil {
		return nil, err
	}
	for ok := li.first(); ok; ok = li.next() {
		if li.krev > w.Rev {
			li.close()
			return nil, fmt.Errorf("kvstore: delete of %q at revision %d below its stored revision %d",
				li.key, w.Rev, li.krev)
		}
		tomb, err := li.tombstone()
		if err == nil && !tomb {
			var v *Version
			if v, err = li.version(true); err == nil {
				victims = append(victims, victim{li.key, v, li.size})
			}
		}
		if err != nil {
			li.close()
			return nil, err
		}
	}
	if err := li.close(); err != nil {
		return nil, err
	}
	for _, vi := range victims {
		if err := w.writeVersion(vi.spanKey, vi.prev, vi.size, &Version{Tombstone: true}); err != nil {
			return nil, err
		}
		key := stripNS(vi.spanKey)
		w.Events = append(w.Events, &mvccpb.Event{
			Type:   mvccpb.Event_DELETE,
			Kv:     &mvccpb.KeyValue{Key: key, ModRevision: w.Rev},
			PrevKv: vi.prev.keyValue(key),
		})
		if req.GetPrevKv() {
			resp.PrevKvs = append(resp.PrevKvs, vi.prev.keyValue(key))
		}
	}
	resp.Deleted = int64(len(victims))
	return resp, nil
}

// txnPlan records the outcome of a txn's compares and, for each nested txn
// of the chosen branch (in order), its own plan.
type txnPlan struct {
	ok     bool
	nested []*txnPlan
}

func (p *txnPlan) ops(rt *pb.TxnRequest) []*pb.RequestOp {
	if p.ok {
		return rt.GetSuccess()
	}
	return rt.GetFailure()
}

// planTxn evaluates the compares of rt and of the nested txns on its chosen
// branches, all against the current state (etcd's compareToPath).
func (w *WriteBatch) planTxn(rt *pb.TxnRequest) (*txnPlan, error) {
	for _, c := range rt.GetCompare() {
		start, end := etcdInterval(w.Keyspace, c.GetKey(), c.GetRangeEnd())
		if !inSpan(w.Span, start, end) {
			return nil, ErrKeyOutsideSpan
		}
	}
	p := &txnPlan{ok: true}
	for _, c := range rt.GetCompare() {
		ok, err := w.compare(c)
		if err != nil {
			return nil, err
		}
		if !ok {
			p.ok = false
			break
		}
	}
	for _, op := range p.ops(rt) {
		if tv, ok := op.GetRequest().(*pb.RequestOp_RequestTxn); ok {
			n, err := w.planTxn(tv.RequestTxn)
			if err != nil {
				return nil, err
			}
			p.nested = append(p.nested, n)
		}
	}
	return p, nil
}

// compare evaluates one etcd Compare over its key or key range at w.Rev.
func (w *WriteBatch) compare(c *pb.Compare) (bool, error) {
	if len(c.GetRangeEnd()) == 0 && w.Newest != nil {
		// One key, on the apply path (w.Rev is above every stored
		// revision): its newest version, from the cache when it can.
		spanKey := w.spanKey(c.GetKey())
		v, _, err := w.newest(spanKey)
		switch {
		case err != nil:
			return false, err
		case v == nil || v.Tombstone:
			// etcd: comparing the value of a missing key always fails.
			return c.GetTarget() != pb.Compare_VALUE && compareKV(c, &mvccpb.KeyValue{}), nil
		}
		return compareKV(c, v.keyValue(stripNS(spanKey))), nil
	}
	start, end := etcdInterval(w.Keyspace, c.GetKey(), c.GetRangeEnd())
	mode := scanNoValue
	if c.GetTarget() == pb.Compare_VALUE {
		mode = scanFull
	}
	seen, result := false, true
	_, err := scanLive(w.Batch, start, end, w.Rev, mode, func() bool { return true },
		func(kv *mvccpb.KeyValue) bool {
			seen = true
			result = compareKV(c, kv)
			return result
		})
	if err != nil {
		return false, err
	}
	if !seen {
		if c.GetTarget() == pb.Compare_VALUE {
			// etcd: comparing the value of a missing key always fails.
			return false, nil
		}
		return compareKV(c, &mvccpb.KeyValue{}), nil
	}
	return result, nil
}

func compareKV(c *pb.Compare, kv *mvccpb.KeyValue) bool {
	var res int
	switch c.GetTarget() {
	case pb.Compare_VALUE:
		res = bytes.Compare(kv.Value, c.GetValue())
	case pb.Compare_CREATE:
		res = cmp.Compare(kv.CreateRevision, c.GetCreateRevision())
	case pb.Compare_MOD:
		res = cmp.Compare(kv.ModRevision, c.GetModRevision())
	case pb.Compare_VERSION:
		res = cmp.Compare(kv.Version, c.GetVersion())
	case pb.Compare_LEASE:
		res = cmp.Compare(kv.Lease, c.GetLease())
	}
	switch c.GetResult() {
	case pb.Compare_EQUAL:
		return res == 0
	case pb.Compare_NOT_EQUAL:
		return res != 0
	case pb.Compare_GREATER:
		return res > 0
	case pb.Compare_LESS:
		return res < 0
	}
	return true
}

// checkTxn validates the chosen branch against the state before the txn
// (etcd's checkTxn) and the span, so errors surface before any write.
func (w *WriteBatch) checkTxn(rt *pb.TxnRequest, p *txnPlan) error {
	ni := 0
	for _, op := range p.ops(rt) {
		switch tv := op.GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			r := tv.RequestRange
			start, end := etcdInterval(w.Keyspace, r.GetKey(), r.GetRangeEnd())
			if !inSpan(w.Span, start, end) {
				return ErrKeyOutsideSpan
			}
			switch rev := r.GetRevision(); {
			case rev == 0:
			case rev > w.Rev:
				return rpctypes.ErrGRPCFutureRev
			case rev < w.CompactRev:
				return rpctypes.ErrGRPCCompacted
			}
			if _, ok := pb.RangeRequest_SortOrder_name[int32(r.GetSortOrder())]; !ok {
				return rpctypes.ErrGRPCInvalidSortOption
			}
			if _, ok := pb.RangeRequest_SortTarget_name[int32(r.GetSortTarget())]; !ok {
				return rpctypes.ErrGRPCInvalidSortOption
			}
		case *pb.RequestOp_RequestPut:
			r := tv.RequestPut
			start, end := etcdInterval(w.Keyspace, r.GetKey(), nil)
			if !inSpan(w.Span, start, end) {
				return ErrKeyOutsideSpan
			}
			if r.GetIgnoreValue() || r.GetIgnoreLease() {
				prev, _, err := w.newest(start)
				if err != nil {
					return err
				}
				if prev == nil || prev.Tombstone {
					return rpctypes.ErrGRPCKeyNotFound
				}
			}
		case *pb.RequestOp_RequestDeleteRange:
			r := tv.RequestDeleteRange
			start, end := etcdInterval(w.Keyspace, r.GetKey(), r.GetRangeEnd())
			if !inSpan(w.Span, start, end) {
				return ErrKeyOutsideSpan
			}
		case *pb.RequestOp_RequestTxn:
			if err := w.checkTxn(tv.RequestTxn, p.nested[ni]); err != nil {
				return err
			}
			ni++
		}
	}
	return nil
}

// execTxn executes the chosen branch of rt in order (etcd's executeTxn).
// The returned response's header is empty (etcd fills only the top one).
func (w *WriteBatch) execTxn(rt *pb.TxnRequest, p *txnPlan) (*pb.TxnResponse, error) {
	ops := p.ops(rt)
	resp := &pb.TxnResponse{
		Header:    &pb.ResponseHeader{},
		Succeeded: p.ok,
		Responses: make([]*pb.ResponseOp, len(ops)),
	}
	ni := 0
	for i, op := range ops {
		out := &pb.ResponseOp{}
		switch tv := op.GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			r := tv.RequestRange
			if r == nil {
				r = &pb.RangeRequest{}
			}
			rev := r.Revision
			if rev <= 0 {
				rev = w.Rev
			}
			start, end := etcdInterval(w.Keyspace, r.Key, r.RangeEnd)
			rr, err := execRange(w.Batch, start, end, r, rev, w.Rev)
			if err != nil {
				return nil, err
			}
			out.Response = &pb.ResponseOp_ResponseRange{ResponseRange: rr}
		case *pb.RequestOp_RequestPut:
			pr, err := w.put(tv.RequestPut)
			if err != nil {
				return nil, err
			}
			out.Response = &pb.ResponseOp_ResponsePut{ResponsePut: pr}
		case *pb.RequestOp_RequestDeleteRange:
			dr, err := w.deleteRange(tv.RequestDeleteRange)
			if err != nil {
				return nil, err
			}
			out.Response = &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: dr}
		case *pb.RequestOp_RequestTxn:
			tr, err := w.execTxn(tv.RequestTxn, p.nested[ni])
			if err != nil {
				return nil, err
			}
			ni++
			out.Response = &pb.ResponseOp_ResponseTxn{ResponseTxn: tr}
		}
		resp.Responses[i] = out
	}
	return resp, nil
}
