package client

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/rangekv/rangekv/placement"
)

// span is a request's key span as etcd gives it: key alone when end is
// empty, [key, +inf) when end is "\x00", else [key, end).
type span struct{ key, end []byte }

// request is what routing needs to know about one KV request.
type request struct {
	// spans are every span the request addresses; none (Compact) means
	// it is not routed.
	spans []span
	// read marks a request that writes nothing (Range, read-only Txn): it
	// may be re-sent after any Unavailable error.
	read bool
	// local marks a request whose answer says nothing about leadership: a
	// serializable read (any replica serves it) or a stream (no header).
	local bool
}

func rangeRequest(r *pb.RangeRequest) request {
	return request{spans: []span{{r.Key, r.RangeEnd}}, read: true, local: r.Serializable}
}

func putRequest(r *pb.PutRequest) request {
	return request{spans: []span{{r.Key, nil}}}
}

func deleteRequest(r *pb.DeleteRangeRequest) request {
	return request{spans: []span{{r.Key, r.RangeEnd}}}
}

func txnRequest(r *pb.TxnRequest) request {
	read := placement.TxnReadOnly(r)
	var spans []span
	placement.TxnKeys(r, func(key, end []byte) { spans = append(spans, span{key, end}) })
	return request{spans: spans, read: read, local: read && placement.TxnSerializable(r)}
}
