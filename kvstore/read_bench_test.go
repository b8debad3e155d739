package kvstore

import (
	"fmt"
	"math/rand/v2"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// BenchmarkExecRange reads one key, and a page of 50 keys, of a
// 100,000-key range whose keys have one or three versions.
func BenchmarkExecRange(b *testing.B) {
	for _, versions := range []int{1, 3} {
		s := newTestStore(b)
		rev := int64(0)
		for range versions {
			rev = populate(b, s, rev)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		for _, limit := range []int64{1, 50} {
			b.Run(fmt.Sprintf("versions=%d/keys=%d", versions, limit), func(b *testing.B) {
				for range b.N {
					i := rng.IntN(100_000 - 100)
					req := &pb.RangeRequest{Key: []byte(fmt.Sprintf("k%06d", i))}
					if limit > 1 {
						req.RangeEnd = []byte(fmt.Sprintf("k%06d", i+int(limit)))
					}
					if _, err := ExecRange(s.db, UserKeys, Span{Start: UserSpanStart, End: UserSpanEnd}, req, rev, 0); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
