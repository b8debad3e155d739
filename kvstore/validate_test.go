package kvstore

import (
	"github.com/stretchr/testify/assert"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

func TestValidateSimple(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"range ok", ValidateRange(&pb.RangeRequest{Key: []byte("a")}), nil},
		{"range empty key", ValidateRange(&pb.RangeRequest{RangeEnd: []byte("b")}), rpctypes.ErrGRPCEmptyKey},
		{"range bad order", ValidateRange(&pb.RangeRequest{Key: []byte("a"), SortOrder: 3}), rpctypes.ErrGRPCInvalidSortOption},
		{"range bad target", ValidateRange(&pb.RangeRequest{Key: []byte("a"), SortTarget: 5}), rpctypes.ErrGRPCInvalidSortOption},
		{"range max enums", ValidateRange(&pb.RangeRequest{Key: []byte("a"), SortOrder: 2, SortTarget: 4}), nil},
		{"put ok", ValidatePut(&pb.PutRequest{Key: []byte("a"), Value: []byte("v"), Lease: 1}), nil},
		{"put empty key", ValidatePut(&pb.PutRequest{Value: []byte("v")}), rpctypes.ErrGRPCEmptyKey},
		{"put ignore value with value", ValidatePut(&pb.PutRequest{Key: []byte("a"), Value: []byte("v"), IgnoreValue: true}), rpctypes.ErrGRPCValueProvided},
		{"put ignore lease with lease", ValidatePut(&pb.PutRequest{Key: []byte("a"), Lease: 1, IgnoreLease: true}), rpctypes.ErrGRPCLeaseProvided},
		{"put ignore both", ValidatePut(&pb.PutRequest{Key: []byte("a"), IgnoreLease: true, IgnoreValue: true}), nil},
		{"delete ok", ValidateDeleteRange(&pb.DeleteRangeRequest{Key: []byte("a")}), nil},
		{"delete empty key", ValidateDeleteRange(&pb.DeleteRangeRequest{RangeEnd: []byte("\x00")}), rpctypes.ErrGRPCEmptyKey},
	} {
		assert.Equal(t, tc.want, tc.err, tc.name)
	}
}

func TestValidateTxn(t *testing.T) {
	txn := func(cmps []*pb.Compare, succ, fail []*pb.RequestOp) *pb.TxnRequest {
		return &pb.TxnRequest{Compare: cmps, Success: succ, Failure: fail}
	}
	ops := func(o ...*pb.RequestOp) []*pb.RequestOp { return o }
	cmp := func(k string) *pb.Compare { return cmpVersion(k, "", pb.Compare_EQUAL, 0) }
	for _, tc := range []struct {
		name string
		req  *pb.TxnRequest
		max  int
		want error
	}{
		{"empty", txn(nil, nil, nil), 3, nil},
		{"ok", txn([]*pb.Compare{cmp("a")}, ops(opPut("a", "1"), opRange("a", "")), ops(opDel("a", ""))), 3, nil},
		{"too many compares", txn([]*pb.Compare{cmp("a"), cmp("b"), cmp("c"), cmp("d")}, nil, nil), 3, rpctypes.ErrGRPCTooManyOps},
		{"too many success", txn(nil, ops(opPut("a", ""), opPut("b", ""), opPut("c", ""), opPut("d", "")), nil), 3, rpctypes.ErrGRPCTooManyOps},
		{"too many failure", txn(nil, nil, ops(opPut("a", ""), opPut("b", ""), opPut("c", ""), opPut("d", ""))), 3, rpctypes.ErrGRPCTooManyOps},
		{"at the limit", txn(nil, ops(opPut("a", ""), opPut("b", ""), opPut("c", "")), nil), 3, nil},
		{"nested over the remaining budget", txn(nil, ops(opPut("a", ""), opTxn(txn(nil, ops(opPut("b", ""), opPut("c", "")), nil))), nil), 3, rpctypes.ErrGRPCTooManyOps},
		{"nested within budget", txn(nil, ops(opPut("a", ""), opTxn(txn(nil, ops(opPut("b", "")), nil))), nil), 3, nil},
		{"compare empty key", txn([]*pb.Compare{cmp("")}, nil, nil), 3, rpctypes.ErrGRPCEmptyKey},
		{"op empty key", txn(nil, ops(opPut("", "")), nil), 3, rpctypes.ErrGRPCEmptyKey},
		{"nested op empty key", txn(nil, nil, ops(opTxn(txn(nil, ops(opDel("", "")), nil)))), 3, rpctypes.ErrGRPCEmptyKey},
		{"range bad sort", txn(nil, ops(&pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("a"), SortOrder: 9}}}), nil), 3, rpctypes.ErrGRPCInvalidSortOption},
		{"put value provided", txn(nil, ops(&pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("a"), Value: []byte("x"), IgnoreValue: true}}}), nil), 3, rpctypes.ErrGRPCValueProvided},
		{"empty op", txn(nil, ops(&pb.RequestOp{}), nil), 3, rpctypes.ErrGRPCKeyNotFound},
		{"duplicate put", txn(nil, ops(opPut("a", "1"), opPut("a", "2")), nil), 3, rpctypes.ErrGRPCDuplicateKey},
		{"put and delete same key", txn(nil, ops(opDel("a", ""), opPut("a", "2")), nil), 3, rpctypes.ErrGRPCDuplicateKey},
		{"put inside deleted range", txn(nil, ops(opPut("b", "2"), opDel("a", "c")), nil), 3, rpctypes.ErrGRPCDuplicateKey},
		{"put at deleted range end", txn(nil, ops(opPut("c", "2"), opDel("a", "c")), nil), 3, nil},
		// etcd treats range_end "\x00" literally here: [a, "\x00") is empty.
		{"from-key delete does not conflict", txn(nil, ops(opPut("b", "2"), opDel("a", "\x00")), nil), 3, nil},
		{"overlapping deletes", txn(nil, ops(opDel("a", "c"), opDel("b", "d")), nil), 3, nil},
		{"success and failure are separate", txn(nil, ops(opPut("a", "1")), ops(opPut("a", "2"))), 3, nil},
		{"range does not conflict", txn(nil, ops(opPut("a", "1"), opRange("a", "z")), nil), 3, nil},
		{"nested then/else same key", txn(nil, ops(opTxn(txn(nil, ops(opPut("x", "")), ops(opPut("x", ""))))), nil), 3, nil},
		{"nested put vs parent put", txn(nil, ops(opPut("x", ""), opTxn(txn(nil, ops(opPut("x", "")), nil))), nil), 3, rpctypes.ErrGRPCDuplicateKey},
		{"nested else put vs parent put", txn(nil, ops(opPut("x", ""), opTxn(txn(nil, nil, ops(opPut("x", ""))))), nil), 3, rpctypes.ErrGRPCDuplicateKey},
		{"nested put vs parent delete", txn(nil, ops(opDel("a", "z"), opTxn(txn(nil, ops(opPut("x", "")), nil))), nil), 3, rpctypes.ErrGRPCDuplicateKey},
		{"nested delete vs parent put", txn(nil, ops(opPut("x", ""), opTxn(txn(nil, ops(opDel("x", "")), nil))), nil), 3, rpctypes.ErrGRPCDuplicateKey},
		{"two nested txns put same key", txn(nil, ops(opTxn(txn(nil, ops(opPut("x", "")), nil)), opTxn(txn(nil, ops(opPut("x", "")), nil))), nil), 3, rpctypes.ErrGRPCDuplicateKey},
		// etcd checks a nested txn's puts against the deletes of earlier
		// siblings only, so the order matters.
		{"nested delete then sibling nested put", txn(nil, ops(opTxn(txn(nil, ops(opDel("x", "")), nil)), opTxn(txn(nil, ops(opPut("x", "")), nil))), nil), 3, rpctypes.ErrGRPCDuplicateKey},
		{"nested put then sibling nested delete", txn(nil, ops(opTxn(txn(nil, ops(opPut("x", "")), nil)), opTxn(txn(nil, ops(opDel("x", "")), nil))), nil), 3, nil},
		{"deep nesting dup", txn(nil, nil, ops(opPut("k", ""), opTxn(txn(nil, ops(opTxn(txn(nil, ops(opPut("k", "")), nil))), nil)))), 10, rpctypes.ErrGRPCDuplicateKey},
		{"nil nested txn", txn(nil, ops(&pb.RequestOp{Request: &pb.RequestOp_RequestTxn{}}), nil), 3, nil},
	} {
		assert.Equal(t, tc.want, ValidateTxn(tc.req, tc.max), tc.name)
	}
}
