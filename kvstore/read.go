package kvstore

import (
	"bytes"
	"fmt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"math"
	"sort"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// latestIter walks, in key order, the newest version at or below rev of
// every key in a span (tombstones included).
type latestIter struct {
	it   *pebble.Iterator
	rev  int64
	key  []byte // span key of the current position (owned)
	krev int64  // revision of the current version
	raw  []byte // encoded current version; valid until the next move
	size int64  // engine key + value bytes of the current version
	err  error
	// prefix is scratch space for next: the current key's MVCC prefix.
	prefix []byte
}

func newLatestIter(r pebble.Reader, start, end []byte, rev int64) (*latestIter, error) {
	it, err := r.NewIter(spanIterOptions(start, end))
	if err != nil {
		return nil, err
	}
	if rev <= 0 {
		rev = math.MaxInt64
	}
	return &latestIter{it: it, rev: rev}, nil
}

func (li *latestIter) first() bool { return li.settle(li.it.First()) }

// nextsBeforeSeek is how many older versions next steps over before it
// seeks past the rest: a step is far cheaper than a seek, and most keys
// have few versions (CockroachDB's MVCC scanner does the same).
const nextsBeforeSeek = 4

func (li *latestIter) next() bool {
	prefix := li.it.Key()
	prefix = append(li.prefix[:0], prefix[:len(prefix)-mvccRevLen]...)
	li.prefix = prefix
	for range nextsBeforeSeek {
		if !li.it.Next() {
			return li.settle(false)
		}
		k := li.it.Key()
		if len(k) != len(prefix)+mvccRevLen || !bytes.Equal(k[:len(prefix)], prefix) {
			return li.settle(true) // the next key
		}
	}
	return li.settle(li.it.SeekGE(MVCCKeyAfterVersions(li.key)))
}

func (li *latestIter) settle(valid bool) bool {
	for valid {
		k := li.it.Key()
		spanKey, rev, err := DecodeMVCCKey(k)
		if err != nil {
			li.err = fmt.Errorf("kvstore: engine key %x: %w", k, err)
			return false
		}
		if rev > li.rev {
			valid = li.it.SeekGE(EncodeMVCCKey(nil, spanKey, li.rev))
			continue
		}
		raw, err := li.it.ValueAndErr()
		if err != nil {
			li.err = err
			return false
		}
		li.key, li.krev, li.raw, li.size = spanKey, rev, raw, int64(len(k)+len(raw))
		return true
	}
	li.err = li.it.Error()
	return false
}

func (li *latestIter) tombstone() (bool, error) {
	t, err := rawIsTombstone(li.raw)
	if err != nil {
		return false, fmt.Errorf("kvstore: key %q rev %d: %w", li.key, li.krev, err)
	}
	return t, nil
}

func (li *latestIter) version(withValue bool) (*Version, error) {
	return decodeVersion(li.key, li.krev, li.raw, withValue)
}

func (li *latestIter) close() error {
	err := li.it.Close()
	if li.err != nil {
		return li.err
	}
	return err
}

// stripNS returns the key of a span key (without its namespace byte).
func stripNS(spanKey []byte) []byte {
	if len(spanKey) == 0 {
		return spanKey
	}
	return spanKey[1:]
}

// getNewest returns the newest version of spanKey at or below rev (rev <= 0:
// the newest of all), tombstones included, with its stored size; nil when
// the key has no such version.
func getNewest(r pebble.Reader, spanKey []byte, rev int64) (*Version, int64, error) {
	li, err := newLatestIter(r, spanKey, pointEnd(spanKey), rev)
	if err != nil {
		return nil, 0, err
	}
	var v *Version
	if li.first() {
		v, err = li.version(true)
	}
	size := li.size
	if cerr := li.close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, 0, err
	}
	return v, size, nil
}

// MVCCGet returns the newest version of spanKey at or below rev (rev <= 0:
// the newest), or nil when the key is absent or deleted at rev. The
// KeyValue's Key is the key without its namespace byte; Value is a copy.
func MVCCGet(r pebble.Reader, spanKey []byte, rev int64) (*mvccpb.KeyValue, error) {
	v, _, err := getNewest(r, spanKey, rev)
	if err != nil || v == nil {
		return nil, err
	}
	return v.keyValue(stripNS(spanKey)), nil
}

// MVCCScan calls fn in key order with the newest live version at or below
// rev (rev <= 0: the newest) of each key in the span-key interval
// [start, end) (empty end: no upper bound), for at most limit keys
// (limit <= 0: all). count is the number of live keys in the interval at
// rev, including those beyond limit (counted without decoding values), as
// etcd's Range count; fn may be nil to only count. fn returning false stops
// the scan early and count then covers the keys seen so far.
func MVCCScan(r pebble.Reader, start, end []byte, rev int64, limit int64, fn func(kv *mvccpb.KeyValue) bool) (count int64, err error) {
	var n int64
	return scanLive(r, start, end, rev, scanFull,
		func() bool { return fn != nil && (limit <= 0 || n < limit) },
		func(kv *mvccpb.KeyValue) bool { n++; return fn(kv) })
}

type scanMode int

const (
	scanFull    scanMode = iota // values decoded
	scanNoValue                 // metadata only (create/mod/version/lease)
)

// scanLive walks the live keys of [start, end) at rev in key order and
// returns how many it saw. For each, want() decides whether to decode it and
// call fn (else it is only counted, without decoding). fn returning false
// stops the scan.
func scanLive(r pebble.Reader, start, end []byte, rev int64, mode scanMode,
	want func() bool, fn func(kv *mvccpb.KeyValue) bool) (int64, error) {
	if len(end) > 0 && bytes.Compare(start, end) >= 0 {
		return 0, nil
	}
	li, err := newLatestIter(r, start, end, rev)
	if err != nil {
		return 0, err
	}
	var count int64
	for ok := li.first(); ok; ok = li.next() {
		tomb, err := li.tombstone()
		if err != nil {
			li.close()
			return 0, err
		}
		if tomb {
			continue
		}
		count++
		if !want() {
			continue
		}
		v, err := li.version(mode == scanFull)
		if err != nil {
			li.close()
			return 0, err
		}
		if !fn(v.keyValue(stripNS(li.key))) {
			break
		}
	}
	if err := li.close(); err != nil {
		return 0, err
	}
	return count, nil
}

// pointEnd returns the smallest span key greater than k (k || 0x00): the
// exclusive end of the single-key interval [k, pointEnd(k)).
func pointEnd(k []byte) []byte {
	out := make([]byte, len(k)+1)
	copy(out, k)
	return out
}

// etcdInterval translates an etcd key/range_end into a span-key interval
// [start, end) in keyspace ks: empty range_end is the single key; "\x00"
// means every key >= key (up to the end of the keyspace); otherwise
// [key, range_end). end <= start is an empty interval.
func etcdInterval(ks Keyspace, key, rangeEnd []byte) (start, end []byte) {
	start = make([]byte, 1+len(key))
	start[0] = byte(ks)
	copy(start[1:], key)
	switch {
	case len(rangeEnd) == 0:
		end = pointEnd(start)
	case len(rangeEnd) == 1 && rangeEnd[0] == 0:
		end = []byte{byte(ks) + 1}
	default:
		end = make([]byte, 1+len(rangeEnd))
		end[0] = byte(ks)
		copy(end[1:], rangeEnd)
	}
	return start, end
}

// clip intersects [start, end) with span; empty span.End is unbounded.
func clip(span Span, start, end []byte) ([]byte, []byte) {
	if bytes.Compare(start, span.Start) < 0 {
		start = span.Start
	}
	if len(span.End) > 0 && bytes.Compare(end, span.End) > 0 {
		end = span.End
	}
	return start, end
}

// inSpan reports whether the non-empty interval [start, end) lies within
// span. Empty intervals are always inside.
func inSpan(span Span, start, end []byte) bool {
	if bytes.Compare(start, end) >= 0 {
		return true
	}
	return bytes.Compare(start, span.Start) >= 0 &&
		(len(span.End) == 0 || bytes.Compare(end, span.End) <= 0)
}

func isDefaultOrdering(target pb.RangeRequest_SortTarget, order pb.RangeRequest_SortOrder) bool {
	return order == pb.RangeRequest_NONE ||
		(target == pb.RangeRequest_KEY && order == pb.RangeRequest_ASCEND)
}

func hasRevisionFilters(r *pb.RangeRequest) bool {
	return r.MinModRevision != 0 || r.MaxModRevision != 0 ||
		r.MinCreateRevision != 0 || r.MaxCreateRevision != 0
}

// execRange runs an etcd Range over the span-key interval [start, end) at
// rev; headerRev goes into the response header.
func execRange(r pebble.Reader, start, end []byte, req *pb.RangeRequest, rev, headerRev int64) (*pb.RangeResponse, error) {
	if _, ok := pb.RangeRequest_SortOrder_name[int32(req.SortOrder)]; !ok {
		return nil, rpctypes.ErrGRPCInvalidSortOption
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(req.SortTarget)]; !ok {
		return nil, rpctypes.ErrGRPCInvalidSortOption
	}
	// Fetch limit as etcd's rangeLimit: everything when results are
	// re-sorted or filtered, else limit+1 to learn whether there is more.
	limit := req.Limit
	if !isDefaultOrdering(req.SortTarget, req.SortOrder) || hasRevisionFilters(req) {
		limit = 0
	}
	if limit > 0 && limit < math.MaxInt64 {
		limit++
	}
	fastKeysOnly := req.KeysOnly && req.SortTarget != pb.RangeRequest_VALUE
	mode := scanFull
	if fastKeysOnly {
		mode = scanNoValue
	}
	var kvs []*mvccpb.KeyValue
	count, err := scanLive(r, start, end, rev, mode, func() bool {
		return !req.CountOnly && (limit <= 0 || int64(len(kvs)) < limit)
	}, func(kv *mvccpb.KeyValue) bool {
		if fastKeysOnly {
			kv.Lease = 0 // etcd's index-only keys_only path has no lease
		}
		kvs = append(kvs, kv)
		return true
	})
	if err != nil {
		return nil, err
	}

	kvs = filterKVs(kvs, req)
	sortKVs(kvs, req)

	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: headerRev}, Count: count}
	if req.Limit > 0 && int64(len(kvs)) > req.Limit {
		kvs = kvs[:req.Limit]
		resp.More = true
	}
	if req.KeysOnly {
		for _, kv := range kvs {
			kv.Value = nil
		}
	}
	resp.Kvs = make([]*mvccpb.KeyValue, len(kvs))
	copy(resp.Kvs, kvs)
	return resp, nil
}

func filterKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) []*mvccpb.KeyValue {
	if !hasRevisionFilters(r) {
		return kvs
	}
	out := kvs[:0]
	for _, kv := range kvs {
		switch {
		case r.MaxModRevision != 0 && kv.ModRevision > r.MaxModRevision:
		case r.MinModRevision != 0 && kv.ModRevision < r.MinModRevision:
		case r.MaxCreateRevision != 0 && kv.CreateRevision > r.MaxCreateRevision:
		case r.MinCreateRevision != 0 && kv.CreateRevision < r.MinCreateRevision:
		default:
			out = append(out, kv)
		}
	}
	return out
}

// sortKVs sorts as etcd does: target != KEY with order NONE means ASCEND;
// KEY/ASCEND and NONE keep the scan's key order. It uses sort.Sort (not
// stable) over the key-ordered input so ties come out as in etcd.
func sortKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) {
	order := r.SortOrder
	if r.SortTarget != pb.RangeRequest_KEY && order == pb.RangeRequest_NONE {
		order = pb.RangeRequest_ASCEND
	}
	if isDefaultOrdering(r.SortTarget, order) {
		return
	}
	var less func(a, b *mvccpb.KeyValue) bool
	switch r.SortTarget {
	case pb.RangeRequest_KEY:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Key, b.Key) < 0 }
	case pb.RangeRequest_VERSION:
		less = func(a, b *mvccpb.KeyValue) bool { return a.Version < b.Version }
	case pb.RangeRequest_CREATE:
		less = func(a, b *mvccpb.KeyValue) bool { return a.CreateRevision < b.CreateRevision }
	case pb.RangeRequest_MOD:
		less = func(a, b *mvccpb.KeyValue) bool { return a.ModRevision < b.ModRevision }
	case pb.RangeRequest_VALUE:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Value, b.Value) < 0 }
	default:
		return
	}
	var s sort.Interface = kvSorter{kvs, less}
	switch order {
	case pb.RangeRequest_ASCEND:
		sort.Sort(s)
	case pb.RangeRequest_DESCEND:
		sort.Sort(sort.Reverse(s))
	}
}

type kvSorter struct {
	kvs  []*mvccpb.KeyValue
	less func(a, b *mvccpb.KeyValue) bool
}

func (s kvSorter) Len() int           { return len(s.kvs) }
func (s kvSorter) Swap(i, j int)      { s.kvs[i], s.kvs[j] = s.kvs[j], s.kvs[i] }
func (s kvSorter) Less(i, j int) bool { return s.less(s.kvs[i], s.kvs[j]) }

// StreamableRange reports whether req can be served by etcd 3.7's
// RangeStream: default key ordering and no revision filters. The error is
// etcd's Unimplemented status otherwise.
func StreamableRange(req *pb.RangeRequest) error {
	if !isDefaultOrdering(req.SortTarget, req.SortOrder) {
		return status.Errorf(codes.Unimplemented, "RangeStream does not support custom sort orders")
	}
	if hasRevisionFilters(req) {
		return status.Errorf(codes.Unimplemented, "RangeStream does not support revision filters")
	}
	return nil
}
