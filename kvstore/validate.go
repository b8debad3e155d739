package kvstore

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Request validation performed by etcd's gRPC KV server (v3rpc/key.go)
// before a request reaches raft. Errors are etcd's rpctypes gRPC errors.

// ValidateRange checks a Range request as etcd does: empty key ->
// rpctypes.ErrGRPCEmptyKey; sort_order or sort_target outside its enum ->
// rpctypes.ErrGRPCInvalidSortOption.
func ValidateRange(r *pb.RangeRequest) error {
	if len(r.GetKey()) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if _, ok := pb.RangeRequest_SortOrder_name[int32(r.GetSortOrder())]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(r.GetSortTarget())]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	return nil
}

// ValidatePut checks a Put request as etcd does: empty key ->
// ErrGRPCEmptyKey; ignore_value with a non-empty value ->
// ErrGRPCValueProvided; ignore_lease with a non-zero lease ->
// ErrGRPCLeaseProvided.
func ValidatePut(r *pb.PutRequest) error {
	if len(r.GetKey()) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if r.GetIgnoreValue() && len(r.GetValue()) != 0 {
		return rpctypes.ErrGRPCValueProvided
	}
	if r.GetIgnoreLease() && r.GetLease() != 0 {
		return rpctypes.ErrGRPCLeaseProvided
	}
	return nil
}

// ValidateDeleteRange checks a DeleteRange request as etcd does: empty key
// -> ErrGRPCEmptyKey.
func ValidateDeleteRange(r *pb.DeleteRangeRequest) error {
	if len(r.GetKey()) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	return nil
}

// ValidateTxn checks a Txn request as etcd's kvServer.Txn does. First
// (checkTxnRequest): more than maxTxnOps compares, success ops or failure
// ops -> ErrGRPCTooManyOps (a nested txn's limit is maxTxnOps minus its
// parent's largest list); a compare with an empty key -> ErrGRPCEmptyKey;
// each op as ValidateRange/ValidatePut/ValidateDeleteRange; an empty
// RequestOp -> ErrGRPCKeyNotFound. Then (checkIntervals, per branch): a key
// put twice, or put and covered by a delete of the same or an enclosing
// level, -> ErrGRPCDuplicateKey; puts of the same key in the success and
// failure branches of one nested txn are allowed. As in etcd, a delete with
// range_end "\x00" is treated as the interval [key, "\x00") and so conflicts
// with no put.
func ValidateTxn(req *pb.TxnRequest, maxTxnOps int) error {
	if err := checkTxnRequest(req, maxTxnOps); err != nil {
		return err
	}
	if _, _, err := checkIntervals(req.GetSuccess()); err != nil {
		return err
	}
	_, _, err := checkIntervals(req.GetFailure())
	return err
}

func checkTxnRequest(r *pb.TxnRequest, maxTxnOps int) error {
	opc := max(len(r.GetCompare()), len(r.GetSuccess()), len(r.GetFailure()))
	if opc > maxTxnOps {
		return rpctypes.ErrGRPCTooManyOps
	}
	for _, c := range r.GetCompare() {
		if len(c.GetKey()) == 0 {
			return rpctypes.ErrGRPCEmptyKey
		}
	}
	for _, ops := range [][]*pb.RequestOp{r.GetSuccess(), r.GetFailure()} {
		for _, u := range ops {
			if err := checkRequestOp(u, maxTxnOps-opc); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkRequestOp(u *pb.RequestOp, maxTxnOps int) error {
	switch uv := u.GetRequest().(type) {
	case *pb.RequestOp_RequestRange:
		return ValidateRange(uv.RequestRange)
	case *pb.RequestOp_RequestPut:
		return ValidatePut(uv.RequestPut)
	case *pb.RequestOp_RequestDeleteRange:
		return ValidateDeleteRange(uv.RequestDeleteRange)
	case *pb.RequestOp_RequestTxn:
		return checkTxnRequest(uv.RequestTxn, maxTxnOps)
	default:
		return rpctypes.ErrGRPCKeyNotFound
	}
}

// interval is a delete's key interval [begin, end) in etcd's "affine"
// string order, where an empty end is above every key.
type interval struct{ begin, end string }

func (iv interval) containsPoint(k string) bool {
	return iv.begin <= k && (iv.end == "" || k < iv.end)
}

type intervalSet []interval

func (s intervalSet) containsPoint(k string) bool {
	for _, iv := range s {
		if iv.containsPoint(k) {
			return true
		}
	}
	return false
}

// checkIntervals mirrors etcd's checkIntervals: it returns the keys put and
// the intervals deleted by reqs (nested txns included), or
// ErrGRPCDuplicateKey on a forbidden overlap.
func checkIntervals(reqs []*pb.RequestOp) (map[string]struct{}, intervalSet, error) {
	var dels intervalSet
	for _, req := range reqs {
		tv, ok := req.GetRequest().(*pb.RequestOp_RequestDeleteRange)
		if !ok || tv.RequestDeleteRange == nil {
			continue
		}
		d := tv.RequestDeleteRange
		if len(d.RangeEnd) != 0 {
			dels = append(dels, interval{string(d.Key), string(d.RangeEnd)})
		} else {
			dels = append(dels, interval{string(d.Key), string(d.Key) + "\x00"})
		}
	}

	puts := make(map[string]struct{})
	for _, req := range reqs {
		tv, ok := req.GetRequest().(*pb.RequestOp_RequestTxn)
		if !ok {
			continue
		}
		putsThen, delsThen, err := checkIntervals(tv.RequestTxn.GetSuccess())
		if err != nil {
			return nil, dels, err
		}
		putsElse, delsElse, err := checkIntervals(tv.RequestTxn.GetFailure())
		if err != nil {
			return nil, dels, err
		}
		for k := range putsThen {
			if _, ok := puts[k]; ok || dels.containsPoint(k) {
				return nil, dels, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = struct{}{}
		}
		for k := range putsElse {
			if _, ok := puts[k]; ok {
				// then/else are exclusive: a key put by both is fine.
				if _, safe := putsThen[k]; !safe {
					return nil, dels, rpctypes.ErrGRPCDuplicateKey
				}
			}
			if dels.containsPoint(k) {
				return nil, dels, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = struct{}{}
		}
		dels = append(dels, delsThen...)
		dels = append(dels, delsElse...)
	}

	for _, req := range reqs {
		tv, ok := req.GetRequest().(*pb.RequestOp_RequestPut)
		if !ok || tv.RequestPut == nil {
			continue
		}
		k := string(tv.RequestPut.Key)
		if _, ok := puts[k]; ok || dels.containsPoint(k) {
			return nil, dels, rpctypes.ErrGRPCDuplicateKey
		}
		puts[k] = struct{}{}
	}
	return puts, dels, nil
}
