package node

import (
	"crypto/sha1"
	"encoding/binary"
	"slices"
	"strings"

	"github.com/rangekv/rangekv/txnproto"
)

// memberID derives a member's ID from its sorted peer URLs and the cluster
// token, as etcd's membership.NewMember does for a new cluster, so the same
// --initial-cluster yields the same IDs on every founding node and across
// restarts.
func memberID(peerURLs []string, token string) uint64 {
	urls := slices.Clone(peerURLs)
	slices.Sort(urls)
	h := sha1.Sum([]byte(strings.Join(urls, "") + token))
	return binary.BigEndian.Uint64(h[:8])
}

// clusterID hashes the founding member IDs, as etcd's RaftCluster.genID.
func clusterID(members []*txnproto.Member) uint64 {
	ids := make([]uint64, 0, len(members))
	for _, m := range members {
		ids = append(ids, m.Id)
	}
	slices.Sort(ids)
	b := make([]byte, 0, 8*len(ids))
	for _, id := range ids {
		b = binary.BigEndian.AppendUint64(b, id)
	}
	h := sha1.Sum(b)
	return binary.BigEndian.Uint64(h[:8])
}
