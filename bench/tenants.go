package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TenantsOptions shape the tenants workload. Zero values get the
// defaults of TenantsOptions.Defaults.
type TenantsOptions struct {
	// Tenants each own the prefix /tenants/<t>/ (Prefix replaces
	// /tenants/ when set in Config).
	Tenants int
	// Objects is the number of object names per tenant.
	Objects int
	// PageSize is the limit of each page of a list.
	PageSize int
	// NoWatch skips the per-tenant prefix watches.
	NoWatch bool
	// Mix is the percentage of each operation: create, update, delete,
	// get, list; it must sum to 100.
	Mix [5]int
}

// The operations of the tenants workload, in Mix order.
var tenantOps = [5]string{"create", "update", "delete", "get", "list"}

// Defaults fills zero fields: 64 tenants of 100 objects, pages of 50, and
// kube-apiserver's proportions: mostly updates (status writes), then gets,
// then creates, deletes and lists.
func (o TenantsOptions) Defaults() TenantsOptions {
	if o.Tenants <= 0 {
		o.Tenants = 64
	}
	if o.Objects <= 0 {
		o.Objects = 100
	}
	if o.PageSize <= 0 {
		o.PageSize = 50
	}
	if o.Mix == [5]int{} {
		o.Mix = [5]int{10, 50, 10, 20, 10}
	}
	return o
}

// objectCache is what the run knows of every object's mod_revision (0:
// absent), fed by acknowledged writes and by the tenants' watches, as
// kube-apiserver's watch cache feeds its compare-on-mod-revision writes.
type objectCache struct {
	mu   sync.Mutex
	revs map[string][2]int64 // mod_revision, revision it was observed at
}

func (oc *objectCache) get(key string) int64 {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	return oc.revs[key][0]
}

// set records that key had mod_revision rev (0: absent) at revision at,
// unless the cache holds a later observation.
func (oc *objectCache) set(key string, rev, at int64) {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	if cur, ok := oc.revs[key]; !ok || at >= cur[1] {
		oc.revs[key] = [2]int64{rev, at}
	}
}

// RunTenants runs the multi-tenant metadata profile: Tenants tenants, each
// under its own prefix, with creates and updates as transactions comparing
// the object's mod_revision (create: create_revision = 0), deletes
// comparing it too, gets, paged prefix lists, and one prefix watch per
// tenant measuring acknowledgement-to-delivery latency. Every object is
// written once first (not measured). A failed compare is not an error: it
// is counted per operation in the notes, as kube-apiserver would retry
// it. It reports each operation, plus "watch" for event delivery.
func RunTenants(ctx context.Context, c Config, o TenantsOptions) (*Report, error) {
	c = c.Defaults()
	o = o.Defaults()
	sum := 0
	for _, p := range o.Mix {
		if p < 0 {
			return nil, fmt.Errorf("bench: tenants mix %v has a negative share", o.Mix)
		}
		sum += p
	}
	if sum != 100 {
		return nil, fmt.Errorf("bench: tenants mix %v sums to %d, not 100", o.Mix, sum)
	}
	root := "/tenants/"
	if c.Prefix != "" && c.Prefix != (Config{}).Defaults().Prefix {
		root = c.Prefix
	}
	prefix := func(t int) string { return fmt.Sprintf("%st%04d/", root, t) }
	object := func(t, i int) string { return fmt.Sprintf("%sobj%05d", prefix(t), i) }

	// Write every object once.
	clients, err := dial(c)
	if err != nil {
		return nil, err
	}
	defer closeAll(clients)
	cache := &objectCache{revs: map[string][2]int64{}}
	val := value(c)
	if err := forEach(ctx, c.Clients, o.Tenants*o.Objects, func(w, n int) error {
		key := object(n/o.Objects, n%o.Objects)
		rctx, cancel := context.WithTimeout(ctx, c.RequestTimeout)
		defer cancel()
		resp, err := clients[w%len(clients)].Put(rctx, key, val)
		if err != nil {
			return fmt.Errorf("bench: writing %s: %w", key, err)
		}
		cache.set(key, resp.Header.Revision, resp.Header.Revision)
		return nil
	}); err != nil {
		return nil, err
	}
	start, err := clients[0].Get(ctx, "bench-tenants-start")
	if err != nil {
		return nil, err
	}

	recs := map[string]*Recorder{}
	for _, op := range append(tenantOps[:], "watch") {
		recs[op] = NewRecorder()
	}
	var conflicts [5]atomic.Int64

	// One prefix watch per tenant; delivery latency from the write's
	// acknowledgement (0 when the event comes first).
	type pending struct {
		acked, delivered time.Time
	}
	var pmu sync.Mutex
	inflight := map[string]*pending{}
	note := func(id string, ack bool, at time.Time) {
		pmu.Lock()
		defer pmu.Unlock()
		p := inflight[id]
		if p == nil {
			p = &pending{}
			inflight[id] = p
		}
		if ack {
			p.acked = at
		} else {
			p.delivered = at
		}
		if p.acked.IsZero() || p.delivered.IsZero() {
			return
		}
		recs["watch"].Observe(max(p.delivered.Sub(p.acked), 0), nil)
		delete(inflight, id)
	}
	wctx, wcancel := context.WithCancel(ctx)
	var wwg sync.WaitGroup
	if !o.NoWatch {
		for t := range o.Tenants {
			wch := clients[t%len(clients)].Watch(wctx, prefix(t), clientv3.WithPrefix(), clientv3.WithRev(start.Header.Revision+1))
			wwg.Go(func() {
				for resp := range wch {
					now := time.Now()
					for _, ev := range resp.Events {
						rev := ev.Kv.ModRevision
						if ev.Type == clientv3.EventTypeDelete {
							cache.set(string(ev.Kv.Key), 0, rev)
						} else {
							cache.set(string(ev.Kv.Key), rev, rev)
						}
						note(fmt.Sprintf("%s@%d", ev.Kv.Key, rev), false, now)
					}
				}
			})
		}
	}

	kv, closeKV, err := kvs(c, clients)
	if err != nil {
		wcancel()
		return nil, err
	}
	defer closeKV()
	rnds := make([]*rand.Rand, c.Clients)
	for i := range rnds {
		rnds[i] = rand.New(rand.NewPCG(uint64(i), 45))
	}
	var writes atomic.Int64
	cpu := measureServer(c.Endpoints)
	started := time.Now()
	elapsed := drive(ctx, c, func(ctx context.Context, client, seq int) {
		rnd := rnds[client]
		t, i := rnd.IntN(o.Tenants), rnd.IntN(o.Objects)
		key := object(t, i)
		op := pick(o.Mix, rnd.IntN(100))
		rev := cache.get(key)
		switch {
		case op == 0 && rev != 0:
			op = 1 // the object exists: update it
		case (op == 1 || op == 2) && rev == 0:
			op = 0 // it does not: create it
		}
		rctx, cancel := context.WithTimeout(ctx, c.RequestTimeout)
		defer cancel()
		kvc := kv[client%c.Conns]
		begin := time.Now()
		var err error
		switch op {
		case 3:
			_, err = kvc.Get(rctx, key)
		case 4:
			_, _, _, err = ListPaged(rctx, kvc, prefix(t), clientv3.GetPrefixRangeEnd(prefix(t)), o.PageSize)
		default:
			cmp := clientv3.Compare(clientv3.ModRevision(key), "=", rev)
			then := clientv3.OpPut(key, val)
			switch op {
			case 0:
				cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
			case 2:
				then = clientv3.OpDelete(key)
			}
			var resp *clientv3.TxnResponse
			resp, err = kvc.Txn(rctx).If(cmp).Then(then).Else(clientv3.OpGet(key)).Commit()
			if err == nil {
				at := resp.Header.Revision
				switch {
				case !resp.Succeeded:
					conflicts[op].Add(1)
					cur := int64(0)
					if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
						cur = kvs[0].ModRevision
					}
					cache.set(key, cur, at)
				case op == 2:
					cache.set(key, 0, at)
				default:
					cache.set(key, at, at)
				}
				if resp.Succeeded {
					writes.Add(1)
					if !o.NoWatch {
						note(fmt.Sprintf("%s@%d", key, at), true, time.Now())
					}
				}
			}
		}
		recs[tenantOps[op]].Observe(time.Since(begin), err)
	})
	// Let the watches deliver what is in flight, then count the rest.
	deadline := time.Now().Add(5 * time.Second)
	for !o.NoWatch && time.Now().Before(deadline) {
		pmu.Lock()
		left := 0
		for _, p := range inflight {
			if !p.acked.IsZero() {
				left++
			}
		}
		pmu.Unlock()
		if left == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	wcancel()
	wwg.Wait()
	rep := &Report{Workload: "tenants", Endpoints: c.Endpoints, Started: started, Elapsed: elapsed}
	var total int64
	for _, name := range tenantOps {
		op := recs[name].Summarize(name, elapsed)
		total += op.Requests - op.Errors
		rep.Ops = append(rep.Ops, op)
	}
	if !o.NoWatch {
		for _, p := range inflight {
			if !p.acked.IsZero() {
				recs["watch"].Observe(0, errNotDelivered)
			}
		}
		rep.Ops = append(rep.Ops, recs["watch"].Summarize("watch", elapsed))
	}
	rep.Server = cpu(total)
	rep.Notes = append(rep.Notes, fmt.Sprintf("%d tenants of %d objects, mix create/update/delete/get/list %v%%, pages of %d, %d watches",
		o.Tenants, o.Objects, o.Mix, o.PageSize, map[bool]int{true: 0, false: o.Tenants}[o.NoWatch]))
	for n, name := range tenantOps[:3] {
		if k := conflicts[n].Load(); k > 0 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%d %ss found the object changed (failed compare, not an error)", k, name))
		}
	}
	return rep, nil
}

// pick maps r in [0, 100) to the index of mix's share it falls in.
func pick(mix [5]int, r int) int {
	for i, p := range mix {
		if r < p {
			return i
		}
		r -= p
	}
	return len(mix) - 1
}

// forEach runs f(worker, n) for n in [0, count) over workers goroutines,
// returning the first error (the others stop taking work).
func forEach(ctx context.Context, workers, count int, f func(worker, n int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for w := range max(workers, 1) {
		wg.Go(func() {
			for ctx.Err() == nil {
				n := int(next.Add(1) - 1)
				if n >= count {
					return
				}
				if err := f(w, n); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(count))
					return
				}
			}
		})
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}
