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
		val := make([]byte, 256)
		rev := int64(0)
		for v := 0; v < versions; v++ {
			for i := 0; i < 100_000; i += 1000 {
				rev++
				_, err := s.apply(rev, func(w *WriteBatch) error {
					for j := i; j < i+1000; j++ {
						if _, err := ApplyPut(w, &pb.PutRequest{Key: []byte(fmt.Sprintf("k%06d", j)), Value: val}); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
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
