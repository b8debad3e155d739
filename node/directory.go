package node

import (
	"context"
	"fmt"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/placement"
	"github.com/rangekv/rangekv/rangeraft"
	"github.com/rangekv/rangekv/txnproto"
)

// directoryRepairInterval is how often a node checks that the meta range
// records the descriptors of the ranges it leads.
const directoryRepairInterval = 2 * time.Second

// metaRead runs a linearizable read on the meta range's leader.
func (n *Node) metaRead(ctx context.Context, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	s := &kvServer{n: n}
	meta := func() (*rangeraft.Replica, error) { return n.metaRange(), nil }
	return onLeader(ctx, s, meta, true, func(ctx context.Context, r *rangeraft.Replica) (*pb.RangeResponse, error) {
		if err := r.ReadIndex(ctx); err != nil {
			return nil, err
		}
		return n.readLocal(r, req)
	}, func(ctx context.Context, cc grpc.ClientConnInterface) (*pb.RangeResponse, error) {
		return pb.NewKVClient(cc).Range(ctx, req)
	})
}

// writeDirectory records descriptors in the meta range, each under its end
// key, unless the record there already equals or supersedes it
// (placement.Supersedes). Each write compares the record's mod revision
// with the one read, so a concurrent writer makes the transaction fail and
// this one re-reads and tries again; a stale descriptor never overwrites a
// newer one.
func (n *Node) writeDirectory(ctx context.Context, descs ...*txnproto.RangeDescriptor) error {
	for attempt := 0; ; attempt++ {
		txn := &pb.TxnRequest{}
		for _, d := range descs {
			key := rangeraft.MetaRangeKey(d.EndKey)
			cur, err := n.metaRead(ctx, &pb.RangeRequest{Key: key})
			if err != nil {
				return err
			}
			var modRev int64
			if len(cur.Kvs) == 1 {
				old := &txnproto.RangeDescriptor{}
				if err := proto.Unmarshal(cur.Kvs[0].Value, old); err != nil {
					return fmt.Errorf("rangekv: corrupt range record %q in the meta range: %w", key, err)
				}
				if !placement.Supersedes(d, old) {
					continue
				}
				modRev = cur.Kvs[0].ModRevision
			}
			data, err := proto.Marshal(d)
			if err != nil {
				return err
			}
			txn.Compare = append(txn.Compare, &pb.Compare{Key: key, Target: pb.Compare_MOD, Result: pb.Compare_EQUAL,
				TargetUnion: &pb.Compare_ModRevision{ModRevision: modRev}})
			txn.Success = append(txn.Success, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{
				Key: key, Value: data}}})
		}
		if len(txn.Success) == 0 {
			return nil
		}
		resp, err := n.metaTxn(ctx, txn)
		if err != nil {
			return err
		}
		if resp.Succeeded {
			return nil
		}
		if attempt == 10 {
			return fmt.Errorf("rangekv: range records kept changing under %d attempts to write them", attempt+1)
		}
	}
}

// directoryRepair keeps the meta range's records of the ranges this
// node leads up to date. A split records both new descriptors right after
// it applied (splitAt); if the node died in between, or the write failed,
// the record stays stale until the range's leader finds it here. A range
// is checked when this node starts leading it and whenever its descriptor
// changed since it was last found recorded, so an idle cluster reads
// nothing.
func (n *Node) directoryRepair() (time.Duration, func()) {
	recorded := map[uint64]uint64{} // range ID -> generation found in the meta range
	return directoryRepairInterval, func() {
		var check []*txnproto.RangeDescriptor
		for _, r := range n.store.Replicas() {
			if r.Keyspace() != kvstore.UserKeys || !r.Initialized() || !r.Status().IsLeader {
				delete(recorded, r.RangeID)
				continue
			}
			if d := r.Descriptor(); recorded[d.RangeId] != d.Generation+1 {
				check = append(check, d)
			}
		}
		if len(check) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), n.reqTimeout)
		err := n.repairDirectory(ctx, check)
		cancel()
		if err != nil {
			n.log.Warn("checking range records in the meta range", zap.Int("ranges", len(check)), zap.Error(err))
			return
		}
		for _, d := range check {
			recorded[d.RangeId] = d.Generation + 1 // +1: zero means unchecked
		}
	}
}

// repairDirectory reads every range record and rewrites those of descs
// that are missing or older.
func (n *Node) repairDirectory(ctx context.Context, descs []*txnproto.RangeDescriptor) error {
	prefix := rangeraft.MetaRangeKey(nil)
	all, err := n.metaRead(ctx, &pb.RangeRequest{Key: prefix, RangeEnd: prefixEnd(prefix)})
	if err != nil {
		return err
	}
	have := map[string]*txnproto.RangeDescriptor{}
	for _, kv := range all.Kvs {
		d := &txnproto.RangeDescriptor{}
		if err := proto.Unmarshal(kv.Value, d); err != nil {
			return fmt.Errorf("rangekv: corrupt range record %q in the meta range: %w", kv.Key, err)
		}
		have[string(kv.Key)] = d
	}
	var stale []*txnproto.RangeDescriptor
	for _, d := range descs {
		if old := have[string(rangeraft.MetaRangeKey(d.EndKey))]; old == nil || placement.Supersedes(d, old) {
			stale = append(stale, d)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	n.log.Info("repairing range records in the meta range", zap.Int("ranges", len(stale)))
	return n.writeDirectory(ctx, stale...)
}
