package node

import (
	"context"
	"encoding/binary"
	"hash/crc32"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/txnproto"
)

// clusterServer implements etcd's Cluster service: nodes are members.
type clusterServer struct {
	pb.UnimplementedClusterServer
	n *Node
}

// MemberList lists the nodes recorded in the meta range. A member whose
// client URLs are not yet published is listed with its peer URLs only,
// like an etcd member that has not started.
func (s *clusterServer) MemberList(ctx context.Context, req *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	ms, err := s.n.members()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	known := map[uint64]*txnproto.Member{}
	for _, m := range ms {
		known[m.Id] = m
	}
	resp := &pb.MemberListResponse{Header: s.n.userHeader()}
	for _, im := range s.n.ident.InitialMembers {
		m := im
		if k, ok := known[im.Id]; ok {
			m = k
		}
		pm := &pb.Member{ID: m.Id, PeerURLs: m.PeerUrls, ClientURLs: m.ClientUrls}
		if len(m.ClientUrls) > 0 {
			pm.Name = m.Name // etcd leaves the name empty until a member has started
		}
		resp.Members = append(resp.Members, pm)
	}
	return resp, nil
}

var errMembershipUnsupported = status.Error(codes.Unimplemented,
	"rangekv: changing membership (member add/remove/update/promote) is not supported yet")

// MemberAdd is not supported yet.
func (s *clusterServer) MemberAdd(context.Context, *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	return nil, errMembershipUnsupported
}

// MemberRemove is not supported yet.
func (s *clusterServer) MemberRemove(context.Context, *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	return nil, errMembershipUnsupported
}

// MemberUpdate is not supported yet.
func (s *clusterServer) MemberUpdate(context.Context, *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	return nil, errMembershipUnsupported
}

// MemberPromote is not supported yet.
func (s *clusterServer) MemberPromote(context.Context, *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	return nil, errMembershipUnsupported
}

// userHeader is a response header at the first user range's applied state.
func (n *Node) userHeader() *pb.ResponseHeader {
	r, err := n.userRange(nil)
	if err != nil {
		return n.header(0, 0)
	}
	st := r.Status()
	return n.header(st.Revision, st.Term)
}

// maintenanceServer implements the parts of etcd's Maintenance service that
// etcdctl's endpoint commands use.
type maintenanceServer struct {
	pb.UnimplementedMaintenanceServer
	n *Node
}

// Status reports the etcd API version, engine size and the raft state of
// the user range (etcd's single raft group maps to it until splits land).
func (s *maintenanceServer) Status(ctx context.Context, req *pb.StatusRequest) (*pb.StatusResponse, error) {
	r, err := s.n.userRange(nil)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	st := r.Status()
	size := s.n.eng.DiskUsage()
	resp := &pb.StatusResponse{
		Header:           s.n.header(st.Revision, st.Term),
		Version:          APIVersion,
		StorageVersion:   APIVersion,
		DbSize:           size,
		DbSizeInUse:      min(s.n.eng.LiveUsage(), size),
		Leader:           st.LeaderNode,
		RaftIndex:        st.CommitIndex,
		RaftTerm:         st.Term,
		RaftAppliedIndex: st.AppliedIndex,
	}
	if st.LeaderNode == 0 {
		resp.Errors = append(resp.Errors, rpctypes.ErrNoLeader.Error())
	}
	return resp, nil
}

// Alarm lists no alarms: rangekv raises none yet (no space quota).
func (s *maintenanceServer) Alarm(ctx context.Context, req *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	return &pb.AlarmResponse{Header: s.n.userHeader()}, nil
}

// Defragment compacts the engine's key span; Pebble reclaims space on its
// own, so this only forces the work to happen now.
func (s *maintenanceServer) Defragment(ctx context.Context, req *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	if err := s.n.eng.DB.Compact(ctx, []byte{0x00}, kvstore.UserSpanEnd, true); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &pb.DefragmentResponse{Header: s.n.userHeader()}, nil
}

// HashKV hashes the user range's logical MVCC state at a revision: every
// live key at that revision and every change above the compacted revision
// up to it. Replicas that applied the same log hash equal, whatever their
// physical compaction progress (etcd hashes its backend's bytes instead, so
// the values differ from etcd's but serve the same purpose).
func (s *maintenanceServer) HashKV(ctx context.Context, req *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	r, err := s.n.userRange(nil)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	view := r.NewReadView()
	defer view.Close()
	rev := req.Revision
	switch {
	case rev == 0:
		rev = view.Revision
	case rev > view.Revision:
		return nil, rpctypes.ErrGRPCFutureRev
	case rev < view.CompactRevision:
		return nil, rpctypes.ErrGRPCCompacted
	}
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	var num [8]byte
	writeInt := func(v int64) {
		binary.BigEndian.PutUint64(num[:], uint64(v))
		h.Write(num[:])
	}
	writeBytes := func(b []byte) {
		writeInt(int64(len(b)))
		h.Write(b)
	}
	if _, err := kvstore.MVCCScan(view.Reader, view.Span.Start, view.Span.End, rev, 0, func(kv *mvccpb.KeyValue) bool {
		writeBytes(kv.Key)
		writeInt(kv.CreateRevision)
		writeInt(kv.ModRevision)
		writeInt(kv.Version)
		writeInt(kv.Lease)
		writeBytes(kv.Value)
		return ctx.Err() == nil
	}); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := kvstore.MVCCHistory(view.Reader, view.Span, view.CompactRevision+1, rev, func(ev *mvccpb.Event) bool {
		writeInt(int64(ev.Type))
		writeBytes(ev.Kv.Key)
		writeInt(ev.Kv.ModRevision)
		writeBytes(ev.Kv.Value)
		return ctx.Err() == nil
	}); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	return &pb.HashKVResponse{
		Header:          s.n.header(view.Revision, view.Term),
		Hash:            h.Sum32(),
		CompactRevision: view.CompactRevision,
		HashRevision:    rev,
	}, nil
}
