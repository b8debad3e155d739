package placement

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/rangekv/rangekv/kvstore"
)

// TxnKeys calls add with the key and range_end (etcd's form: empty for one
// key, "\x00" for every key from key on) of every compare and operation of
// req, both branches and nested txns included: every span a router must
// place the txn by. A put reports an empty range_end.
var TxnKeys = kvstore.TxnKeys

// TxnReadOnly reports whether no branch of req writes (etcd's
// isTxnReadonly).
func TxnReadOnly(req *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{req.Success, req.Failure} {
		for _, op := range ops {
			switch v := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
			case *pb.RequestOp_RequestTxn:
				if !TxnReadOnly(v.RequestTxn) {
					return false
				}
			default:
				return false
			}
		}
	}
	return true
}

// TxnSerializable reports whether every range read in req is
// serializable (etcd's isTxnSerializable).
func TxnSerializable(req *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{req.Success, req.Failure} {
		for _, op := range ops {
			switch v := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				if !v.RequestRange.Serializable {
					return false
				}
			case *pb.RequestOp_RequestTxn:
				if !TxnSerializable(v.RequestTxn) {
					return false
				}
			}
		}
	}
	return true
}
