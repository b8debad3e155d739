package kvstore

import (
	"bytes"
	"fmt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"math/rand"
	"sort"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"
)

// model is a plain in-memory etcd keyspace: the live KeyValues after each
// revision.
type model struct {
	cur   map[string]*mvccpb.KeyValue
	revs  []int64
	snaps []map[string]*mvccpb.KeyValue
}

func (m *model) clone() map[string]*mvccpb.KeyValue {
	out := make(map[string]*mvccpb.KeyValue, len(m.cur))
	for k, v := range m.cur {
		out[k] = v
	}
	return out
}

func (m *model) at(rev int64) map[string]*mvccpb.KeyValue {
	i := sort.Search(len(m.revs), func(i int) bool { return m.revs[i] > rev })
	if i == 0 {
		return nil
	}
	return m.snaps[i-1]
}

func (m *model) put(rev int64, r *pb.PutRequest) error {
	k := string(r.Key)
	prev := m.cur[k]
	if (r.IgnoreValue || r.IgnoreLease) && prev == nil {
		return rpctypes.ErrGRPCKeyNotFound
	}
	nv := &mvccpb.KeyValue{Key: r.Key, Value: r.Value, Lease: r.Lease, CreateRevision: rev, ModRevision: rev, Version: 1}
	if prev != nil {
		nv.CreateRevision, nv.Version = prev.CreateRevision, prev.Version+1
		if r.IgnoreValue {
			nv.Value = prev.Value
		}
		if r.IgnoreLease {
			nv.Lease = prev.Lease
		}
	}
	if len(nv.Value) == 0 {
		nv.Value = nil
	}
	m.cur[k] = nv
	return nil
}

func (m *model) del(key, end []byte) {
	for k := range m.cur {
		kb := []byte(k)
		fromKey := len(end) == 1 && end[0] == 0
		inRange := bytes.Compare(kb, key) >= 0 && (fromKey || bytes.Compare(kb, end) < 0)
		if (len(end) == 0 && bytes.Equal(kb, key)) || (len(end) > 0 && inRange) {
			delete(m.cur, k)
		}
	}
}

var debugModel = false

func TestRandomOpsAgainstModel(t *testing.T) {
	t.Run("engine", func(t *testing.T) { randomOpsAgainstModel(t, nil, false) })
	// A cache small enough to drop its generations every few writes.
	t.Run("newest-cache", func(t *testing.T) { randomOpsAgainstModel(t, NewNewestCache(1500), false) })
	// The same tiny cache, and the key presence set answering its misses,
	// reloaded from the engine every 100 steps as at a restart.
	t.Run("presence", func(t *testing.T) { randomOpsAgainstModel(t, NewNewestCache(1500), true) })
}

func randomOpsAgainstModel(t *testing.T, cache *NewestCache, presence bool) {
	rnd := rand.New(rand.NewSource(1))
	s := newTestStore(t)
	s.newest = cache
	loadPresence := func() {
		if presence {
			var err error
			s.presence, err = LoadKeyPresence(s.db)
			require.NoError(t, err)
		}
	}
	loadPresence()
	m := &model{cur: map[string]*mvccpb.KeyValue{}}
	keys := []string{"a", "ab", "b", "c", "d", "e"}
	rk := func() string { return keys[rnd.Intn(len(keys))] }
	rrange := func() (string, string) {
		i, j := rnd.Intn(len(keys)), rnd.Intn(len(keys)+1)
		if j == len(keys) {
			return keys[i], "\x00"
		}
		if rnd.Intn(3) == 0 {
			return keys[i], ""
		}
		return keys[i], keys[j] // may be empty when j <= i
	}
	randPut := func() *pb.PutRequest {
		r := &pb.PutRequest{Key: []byte(rk()), Value: []byte(fmt.Sprint(rnd.Intn(100))), Lease: int64(rnd.Intn(3))}
		switch rnd.Intn(6) {
		case 0:
			r.IgnoreValue, r.Value = true, nil
		case 1:
			r.IgnoreLease, r.Lease = true, 0
		}
		r.PrevKv = rnd.Intn(2) == 0
		return r
	}

	rev := int64(0)
	for step := 0; step < 1500; step++ {
		rev += int64(1 + rnd.Intn(200))
		if step%100 == 99 {
			checkHistory(t, s)
			loadPresence()
		}
		switch op := rnd.Intn(20); {
		case op < 8:
			r := randPut()
			if debugModel {
				t.Logf("put %v", r)
			}
			merr := m.put(rev, r)
			_, err := s.apply(rev, func(w *WriteBatch) error { _, err := ApplyPut(w, r); return err })
			if merr != nil {
				assert.ErrorIs(t, err, merr)
				continue
			}
			require.NoError(t, err)
		case op < 12:
			k, e := rrange()
			m.del([]byte(k), bytesOrNil(e))
			if debugModel {
				t.Logf("del %q %q", k, e)
			}
			s.del(rev, k, e)
		case op < 19:
			ck := rk()
			want := int64(0)
			if kv := m.cur[ck]; kv != nil {
				want = kv.Version
			}
			if rnd.Intn(3) == 0 {
				want++
			}
			var succ []*pb.RequestOp
			for n := rnd.Intn(4); n >= 0; n-- {
				if rnd.Intn(3) == 0 {
					k, e := rrange()
					succ = append(succ, opDel(k, e))
				} else {
					r := randPut()
					r.IgnoreValue, r.IgnoreLease = false, false
					succ = append(succ, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: r}})
				}
			}
			req := &pb.TxnRequest{
				Compare: []*pb.Compare{cmpVersion(ck, "", pb.Compare_EQUAL, want)},
				Success: succ,
				Failure: []*pb.RequestOp{opPut(rk(), "f")},
			}
			ops := req.Failure
			if kv := m.cur[ck]; (kv == nil && want == 0) || (kv != nil && kv.Version == want) {
				ops = req.Success
			}
			for _, o := range ops {
				if p := o.GetRequestPut(); p != nil {
					require.NoError(t, m.put(rev, p))
				} else {
					d := o.GetRequestDeleteRange()
					m.del(d.Key, d.RangeEnd)
				}
			}
			if debugModel {
				t.Logf("txn %v", req)
			}
			resp, err := s.txn(rev, req)
			require.NoError(t, err)
			require.Equal(t, len(ops), len(resp.Responses))
		default:
			if s.rev > s.compactRev {
				s.compact(s.compactRev + 1 + rnd.Int63n((s.rev-s.compactRev+1)/2))
			}
			continue
		}
		s.rev = rev
		m.revs = append(m.revs, rev)
		m.snaps = append(m.snaps, m.clone())
		s.checkStats()

		// Read everything at a random readable revision.
		readRev := s.rev
		if s.rev > s.compactRev && rnd.Intn(2) == 0 {
			readRev = s.compactRev + rnd.Int63n(s.rev-s.compactRev+1)
		}
		resp := allAt(s, readRev)
		snap := m.at(readRev)
		if debugModel {
			t.Logf("step %d rev %d read %d compact %d: model %v store %v", step, rev, readRev, s.compactRev, snap, keysOf(resp.Kvs))
		}
		var want []*mvccpb.KeyValue
		for _, k := range keys {
			if kv := snap[k]; kv != nil {
				want = append(want, kv)
			}
		}
		require.Equal(t, int64(len(want)), resp.Count, "step %d count at %d", step, readRev)
		for i := range want {
			require.True(t, proto.Equal(want[i], resp.Kvs[i]), "step %d at %d: want %v got %v", step, readRev, want[i], resp.Kvs[i])
		}
	}

	checkHistory(t, s)
}

// checkHistory compares MVCCHistory above the compacted revision with the
// events the writes emitted.
func checkHistory(t *testing.T, s *testStore) {
	t.Helper()
	// History above the compacted revision equals the emitted events,
	// except at revisions where one txn changed a key twice (only the last
	// change of a key per revision is stored).
	dirty := map[int64]bool{}
	seen := map[string]bool{}
	for _, ev := range s.events {
		id := fmt.Sprintf("%d/%s", ev.Kv.ModRevision, ev.Kv.Key)
		if seen[id] {
			dirty[ev.Kv.ModRevision] = true
		}
		seen[id] = true
	}
	var hist, emitted []*mvccpb.Event
	require.NoError(t, MVCCHistory(s.db, s.span, s.compactRev+1, s.rev, func(ev *mvccpb.Event) bool {
		if !dirty[ev.Kv.ModRevision] {
			hist = append(hist, ev)
		}
		return true
	}))
	for _, ev := range s.events {
		if ev.Kv.ModRevision > s.compactRev && !dirty[ev.Kv.ModRevision] {
			emitted = append(emitted, ev)
		}
	}
	require.Equal(t, len(emitted), len(hist))
	for i := range hist {
		require.True(t, proto.Equal(emitted[i], hist[i]), "event %d: want %v got %v", i, emitted[i], hist[i])
	}
}
