package rangeraft

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/txnproto"
)

// TestForwardedProposals sends a leader, over its raft stream, the
// proposals a follower node would forward (Replica.ProposeRequest): a
// well-formed one is stamped above the batch's clock, applies, and leaves
// no inflight entry; malformed ones (another proposer, a stamp already
// set, a command clients cannot send, an unknown range) never apply; and
// a refusal in a batch fails the named waiting proposal with the leader
// hint.
func TestForwardedProposals(t *testing.T) {
	s, client := startSingleStore(t)
	put(t, s, "warm") // a leader
	r := s.Replica(FirstUserRangeID)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	const from = 0xb2
	fwd := func(cmd *txnproto.Command, key string) *txnproto.ForwardedProposal {
		data, err := proto.Marshal(cmd)
		require.NoError(t, err)
		return &txnproto.ForwardedProposal{RangeId: FirstUserRangeID, Command: data, Key: []byte(key)}
	}
	putData := func(key string) []byte {
		data, err := proto.Marshal(&pb.PutRequest{Key: []byte(key), Value: []byte("v")})
		require.NoError(t, err)
		return data
	}
	// The sender's clock, well ahead of the leader's: the stamp must pass it.
	senderClock := s.cfg.Clock.Now() + 5000<<20
	stream, err := client.RaftBatches(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&txnproto.RaftMessageBatch{ClusterId: 0xc1, FromNode: from, ToNode: 0xa1,
		Timestamp: senderClock, Proposals: []*txnproto.ForwardedProposal{
			fwd(&txnproto.Command{Id: 1, ProposerNode: 0xb3, Put: putData("other-proposer")}, "other-proposer"),
			fwd(&txnproto.Command{Id: 2, ProposerNode: from, Timestamp: 1, Put: putData("stamped")}, "stamped"),
			fwd(&txnproto.Command{Id: 3, ProposerNode: from, Close: &txnproto.CloseCommand{Revision: senderClock + 1000}}, ""),
			{RangeId: 999, Command: []byte{0xff}},
			fwd(&txnproto.Command{Id: 4, ProposerNode: from, Put: putData("good")}, "good"),
		}}))
	_, err = stream.CloseAndRecv()
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		kv, err := kvstore.MVCCGet(s.db, kvstore.UserSpanKey([]byte("good")), 0)
		return err == nil && kv != nil
	}, 10*time.Second, 5*time.Millisecond)
	kv, err := kvstore.MVCCGet(s.db, kvstore.UserSpanKey([]byte("good")), 0)
	require.NoError(t, err)
	require.Greater(t, kv.ModRevision, senderClock, "a forwarded write is stamped above its sender's clock")
	for _, k := range []string{"other-proposer", "stamped"} {
		kv, err := kvstore.MVCCGet(s.db, kvstore.UserSpanKey([]byte(k)), 0)
		require.NoError(t, err)
		require.Nil(t, kv, "malformed forwarded proposal %q applied", k)
	}
	r.mu.Lock()
	inflight, closed := len(r.inflight), r.st.applied.ClosedRevision
	r.mu.Unlock()
	require.Less(t, closed, senderClock+1000, "a forwarded close applied")
	require.Zero(t, inflight, "an applied forwarded proposal stays inflight")

	// A refusal reaches the proposal it names, and only it.
	p, other := &proposal{ch: make(chan ApplyResult, 1)}, &proposal{ch: make(chan ApplyResult, 1)}
	r.mu.Lock()
	r.proposals[1<<60] = p
	r.proposals[1<<60+1] = other
	r.mu.Unlock()
	stream, err = client.RaftBatches(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&txnproto.RaftMessageBatch{ClusterId: 0xc1, FromNode: from, ToNode: 0xa1,
		ProposalRefusals: []*txnproto.ProposalRefusal{{RangeId: FirstUserRangeID, Id: 1 << 60, LeaderNode: from}, {RangeId: 999, Id: 1}}}))
	_, err = stream.CloseAndRecv()
	require.NoError(t, err)
	select {
	case res := <-p.ch:
		var nl *NotLeaderError
		require.ErrorAs(t, res.Err, &nl)
		require.Equal(t, uint64(from), nl.LeaderNode)
	case <-ctx.Done():
		t.Fatal("the refusal never reached its proposal")
	}
	require.Empty(t, other.ch)

	// The store keeps serving.
	put(t, s, "after")
}
