package kvstore

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// benchApply applies one command per iteration, at random keys of a
// 100,000-key range on disk, as the raft apply loop does (one indexed
// batch per pass, committed without sync), as a sub-benchmark reading the
// replaced versions from the engine ("engine") and one with the apply
// path's NewestCache ("newest-cache"), and one with the cache and the
// KeyPresence set ("presence").
func benchApply(b *testing.B, fn func(w *WriteBatch, key []byte) error) {
	rng := rand.New(rand.NewPCG(1, 2))
	existing := func(int) []byte { return []byte(fmt.Sprintf("k%06d", rng.IntN(100_000))) }
	b.Run("engine", func(b *testing.B) { benchApplyWith(b, nil, false, existing, fn) })
	b.Run("newest-cache", func(b *testing.B) { benchApplyWith(b, NewNewestCache(64<<20), false, existing, fn) })
	b.Run("presence", func(b *testing.B) { benchApplyWith(b, NewNewestCache(64<<20), true, existing, fn) })
}

// BenchmarkApplyPutNewKeys puts keys never written before into the same
// populated range: what the NewestCache cannot answer and KeyPresence can.
func BenchmarkApplyPutNewKeys(b *testing.B) {
	val := make([]byte, 256)
	fresh := func(i int) []byte { return []byte(fmt.Sprintf("n%09d", i)) }
	put := func(w *WriteBatch, key []byte) error {
		_, err := ApplyPut(w, &pb.PutRequest{Key: key, Value: val})
		return err
	}
	b.Run("newest-cache", func(b *testing.B) { benchApplyWith(b, NewNewestCache(64<<20), false, fresh, put) })
	b.Run("presence", func(b *testing.B) { benchApplyWith(b, NewNewestCache(64<<20), true, fresh, put) })
}

func benchApplyWith(b *testing.B, cache *NewestCache, presence bool, key func(i int) []byte, fn func(w *WriteBatch, key []byte) error) {
	s := newTestStore(b)
	s.newest = cache
	rev := populate(b, s, 0)
	var kp *KeyPresence
	if presence {
		var err error
		if kp, err = LoadKeyPresence(s.db); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		rev++
		batch := s.db.NewIndexedBatch()
		w := &WriteBatch{Batch: batch, Rev: rev, Keyspace: s.ks, Span: s.span, Newest: cache, Presence: kp}
		if err := fn(w, key(i)); err != nil {
			b.Fatal(err)
		}
		if err := batch.Commit(pebble.NoSync); err != nil {
			b.Fatal(err)
		}
		batch.Close()
	}
}

func BenchmarkApplyPut(b *testing.B) {
	val := make([]byte, 256)
	benchApply(b, func(w *WriteBatch, key []byte) error {
		_, err := ApplyPut(w, &pb.PutRequest{Key: key, Value: val})
		return err
	})
}

// BenchmarkApplyTxnComparePut is the one-range txn of rangekv-bench
// txn-put: a compare on the key's mod_revision and a put of it.
func BenchmarkApplyTxnComparePut(b *testing.B) {
	val := make([]byte, 256)
	benchApply(b, func(w *WriteBatch, key []byte) error {
		_, err := ApplyTxn(w, &pb.TxnRequest{
			Compare: []*pb.Compare{{Key: key, Target: pb.Compare_MOD, Result: pb.Compare_GREATER,
				TargetUnion: &pb.Compare_ModRevision{ModRevision: -1}}},
			Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: key, Value: val}}}},
		})
		return err
	})
}

// populate writes keys k000000 to k099999 with 256-byte values, 1,000 per
// command, at revisions from rev+1 on, and returns the last revision.
func populate(b *testing.B, s *testStore, rev int64) int64 {
	val := make([]byte, 256)
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
	return rev
}
