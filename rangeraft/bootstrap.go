package rangeraft

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/txnproto"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Bootstrap state. Every founding node writes byte-identical range state,
// so no raft entries are needed to agree on it: each range's log starts
// empty, truncated at initialIndex in initialTerm (CockroachDB bootstraps
// ranges the same way).
const (
	initialIndex = 10
	initialTerm  = 5
	// BootstrapRevision is the revision of the data written at bootstrap.
	BootstrapRevision = 1
	// MetaRangeID is the range holding range descriptors and members.
	MetaRangeID = 1
	// FirstUserRangeID is the range covering every user key at bootstrap.
	FirstUserRangeID = 2
	// formatVersion is the engine format this binary writes.
	formatVersion = 1
)

// ErrNotBootstrapped is returned by LoadIdent on an engine without a node
// identity.
var ErrNotBootstrapped = errors.New("engine is not bootstrapped")

// LoadIdent reads the node identity from the engine.
func LoadIdent(eng *kvstore.Engine) (*txnproto.NodeIdent, error) {
	v, closer, err := eng.DB.Get(kvstore.NodeIdentKey())
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotBootstrapped
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	ident := &txnproto.NodeIdent{}
	if err := proto.Unmarshal(v, ident); err != nil {
		return nil, fmt.Errorf("%w: node identity: %v", kvstore.ErrCorruptDataDir, err)
	}
	if ident.FormatVersion != formatVersion {
		return nil, fmt.Errorf("data directory format %d is not supported (this binary writes format %d)", ident.FormatVersion, formatVersion)
	}
	return ident, nil
}

// MetaMemberKey is the meta-range key (without namespace) of a member.
func MetaMemberKey(id uint64) []byte { return fmt.Appendf(nil, "member/%016x", id) }

// MetaMemberPrefix prefixes every MetaMemberKey.
var MetaMemberPrefix = []byte("member/")

// MetaRangeKey is the meta-range key (without namespace) of a range
// descriptor: its end key, so a lookup of key k is the first entry > k.
func MetaRangeKey(endKey []byte) []byte { return append([]byte("range/"), endKey...) }

// Bootstrap writes a founding node's identity and the initial ranges: the
// meta range and one user range covering all keys, each replicated on every
// member (replica IDs in member-ID order). members must be identical on
// every founding node.
func Bootstrap(eng *kvstore.Engine, ident *txnproto.NodeIdent) error {
	members := slices.Clone(ident.InitialMembers)
	slices.SortFunc(members, func(a, b *txnproto.Member) int { return cmp.Compare(a.Id, b.Id) })
	var replicas []*txnproto.ReplicaDescriptor
	for i, m := range members {
		replicas = append(replicas, &txnproto.ReplicaDescriptor{NodeId: m.Id, ReplicaId: uint64(i + 1)})
	}
	descs := []*txnproto.RangeDescriptor{
		{RangeId: MetaRangeID, StartKey: kvstore.MetaSpanStart, EndKey: kvstore.MetaSpanEnd},
		{RangeId: FirstUserRangeID, StartKey: kvstore.UserSpanStart, EndKey: kvstore.UserSpanEnd},
	}
	b := eng.DB.NewIndexedBatch()
	defer b.Close()
	ident.FormatVersion = formatVersion
	if err := setProto(b, kvstore.NodeIdentKey(), ident); err != nil {
		return err
	}
	for _, d := range descs {
		d.Replicas = replicas
		d.NextReplicaId = uint64(len(replicas) + 1)
		if err := writeInitialRangeState(b, d,
			&txnproto.AppliedState{Index: initialIndex, Term: initialTerm, Revision: BootstrapRevision}); err != nil {
			return err
		}
	}
	// Meta range contents: descriptors and members, at the bootstrap
	// revision, written through the same MVCC code as any command.
	meta := descs[0]
	wb := &kvstore.WriteBatch{Batch: b, Rev: BootstrapRevision, Keyspace: kvstore.MetaKeys,
		Span: kvstore.Span{Start: meta.StartKey, End: meta.EndKey}}
	for _, d := range descs {
		if err := putMeta(wb, MetaRangeKey(d.EndKey), d); err != nil {
			return err
		}
	}
	for _, m := range members {
		if err := putMeta(wb, MetaMemberKey(m.Id), m); err != nil {
			return err
		}
	}
	if err := b.Set(kvstore.RangeStatsKey(MetaRangeID), kvstore.EncodeStats(nil, wb.Delta), nil); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}

func putMeta(wb *kvstore.WriteBatch, key []byte, m proto.Message) error {
	data, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	_, err = kvstore.ApplyPut(wb, &pb.PutRequest{Key: key, Value: data})
	return err
}

// writeInitialRangeState stages a new range's descriptor and raft state:
// an empty log truncated at initialIndex in initialTerm, committed and
// applied there. Every replica that writes it from the same inputs holds
// identical state, so raft needs no entries to agree on it.
func writeInitialRangeState(b *pebble.Batch, d *txnproto.RangeDescriptor, applied *txnproto.AppliedState) error {
	if err := setProto(b, kvstore.RangeDescriptorKey(d.RangeId), d); err != nil {
		return err
	}
	if err := setProto(b, kvstore.RaftHardStateKey(d.RangeId), &raftpb.HardState{
		Term: proto.Uint64(initialTerm), Commit: proto.Uint64(initialIndex)}); err != nil {
		return err
	}
	if err := setProto(b, kvstore.RaftTruncatedStateKey(d.RangeId),
		&txnproto.TruncatedState{Index: initialIndex, Term: initialTerm}); err != nil {
		return err
	}
	return setProto(b, kvstore.RangeAppliedStateKey(d.RangeId), applied)
}
