package rangeraft

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/txnproto"
)

func TestQuorumClock(t *testing.T) {
	// Replica i lives on node 10*i.
	replicas := func(ids ...uint64) []*txnproto.ReplicaDescriptor {
		var out []*txnproto.ReplicaDescriptor
		for _, id := range ids {
			out = append(out, &txnproto.ReplicaDescriptor{ReplicaId: id, NodeId: 10 * id})
		}
		return out
	}
	three := replicas(1, 2, 3)
	cases := []struct {
		name      string
		replicas  []*txnproto.ReplicaDescriptor
		evidence  map[uint64]clockEvidence
		peers     map[uint64]clockEvidence
		want      int64
		wantStale bool
	}{
		{name: "no evidence: only self", replicas: three, want: 0, wantStale: true},
		{name: "single voter is its own majority", replicas: replicas(1), want: 100},
		{name: "majority is self and the fresher peer", replicas: three,
			evidence: map[uint64]clockEvidence{2: {stamp: 40, epoch: 7}, 3: {stamp: 60, epoch: 9}}, want: 60},
		{name: "a node without new votes counts at its newest batch", replicas: three,
			evidence: map[uint64]clockEvidence{2: {stamp: 40, epoch: 7}, 3: {stamp: 60, epoch: 9}},
			peers:    map[uint64]clockEvidence{20: {stamp: 90, epoch: 7}}, want: 90},
		{name: "a node that voted since counts only at its evidence", replicas: three,
			evidence: map[uint64]clockEvidence{2: {stamp: 40, epoch: 7}, 3: {stamp: 60, epoch: 9}},
			peers:    map[uint64]clockEvidence{20: {stamp: 90, epoch: 8}, 30: {stamp: 95, epoch: 10}}, want: 60, wantStale: true},
		{name: "batches never stand in for missing evidence", replicas: three,
			peers: map[uint64]clockEvidence{20: {stamp: 90}, 30: {stamp: 95}}, want: 0, wantStale: true},
		{name: "five voters need three", replicas: replicas(1, 2, 3, 4, 5),
			evidence: map[uint64]clockEvidence{2: {stamp: 10}, 3: {stamp: 50}, 4: {stamp: 30}, 5: {stamp: 5}}, want: 30},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, stale := quorumClock(tc.replicas, 1, 100, tc.evidence, tc.peers)
			require.Equal(t, tc.want, got)
			require.Equal(t, tc.wantStale, stale)
		})
	}
}

func TestVoteAndStaleResponse(t *testing.T) {
	msg := func(typ raftpb.MessageType, term uint64, reject bool) *raftpb.Message {
		return &raftpb.Message{Type: typ.Enum(), Term: proto.Uint64(term), Reject: proto.Bool(reject)}
	}
	require.True(t, castsVote([]*raftpb.Message{msg(raftpb.MessageType_MsgApp, 5, false), msg(raftpb.MessageType_MsgVote, 6, false)}))
	require.True(t, castsVote([]*raftpb.Message{msg(raftpb.MessageType_MsgVoteResp, 6, false)}))
	require.False(t, castsVote([]*raftpb.Message{msg(raftpb.MessageType_MsgVoteResp, 6, true)}))
	require.False(t, castsVote([]*raftpb.Message{msg(raftpb.MessageType_MsgPreVote, 6, false), msg(raftpb.MessageType_MsgPreVoteResp, 6, false)}))

	require.True(t, staleResponse(msg(raftpb.MessageType_MsgHeartbeatResp, 5, false), 6))
	require.True(t, staleResponse(msg(raftpb.MessageType_MsgAppResp, 5, true), 6))
	require.False(t, staleResponse(msg(raftpb.MessageType_MsgAppResp, 6, false), 6))
	require.False(t, staleResponse(msg(raftpb.MessageType_MsgApp, 5, false), 6))
}

// TestInstallClosed checks a follower's handling of side-channel closes:
// in force once the index has applied, pending until then, never
// lowering what is in force.
func TestInstallClosed(t *testing.T) {
	s, _ := startSingleStore(t)
	put(t, s, "a")
	r := s.Replica(FirstUserRangeID)
	applied := r.Status().AppliedIndex
	base := r.ReadableRevision()

	require.True(t, r.InstallClosed(base+10, applied))
	require.Equal(t, base+10, r.ReadableRevision())
	require.False(t, r.InstallClosed(base+5, applied), "an older close lowers nothing")
	require.Equal(t, base+10, r.ReadableRevision())

	// Ahead of the applied index: pending until the entry applies.
	require.False(t, r.InstallClosed(base+20, applied+1))
	require.Equal(t, base+10, r.ReadableRevision())
	// A real leader closes only below its clock, so its later proposals
	// are stamped above the close; these closes were made up by the test,
	// so move the clock past them as the leader's would be.
	require.NoError(t, s.cfg.Clock.Update(base+30))
	res := put(t, s, "b") // applies index applied+1 (or later)
	require.Greater(t, res.Revision, base+10, "writes apply above what is closed")
	require.GreaterOrEqual(t, r.ReadableRevision(), base+20)
}
