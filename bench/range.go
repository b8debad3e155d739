package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// RangeOptions shape the range workload.
type RangeOptions struct {
	// Serializable reads the local replica (etcd --consistency=s);
	// otherwise reads are linearizable (l).
	Serializable bool
	// Limit, when positive, makes each request a list of the whole
	// Prefix in pages of Limit keys, the first page at the current
	// revision and the others at that revision (as kube-apiserver pages
	// a list); a request counts once, however many pages it took. Zero
	// reads one key of the key space per request.
	Limit int
	// NoPopulate skips writing the key space before the reads.
	NoPopulate bool
}

// RunRange reads keys under Prefix: one random (or sequential) key of the
// key space per request, or, with a Limit, the whole prefix in pages.
// Unless NoPopulate, it first writes every key of the key space once
// (not measured), so reads find values of ValueSize.
func RunRange(ctx context.Context, c Config, o RangeOptions) (*Report, error) {
	c = c.Defaults()
	if o.Limit < 0 {
		return nil, fmt.Errorf("bench: range limit %d is negative", o.Limit)
	}
	if !o.NoPopulate {
		if err := Populate(ctx, c); err != nil {
			return nil, err
		}
	}
	var opts []clientv3.OpOption
	if o.Serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	name := "range"
	if o.Limit > 0 {
		name = "list"
	}
	rnds := make([]*rand.Rand, c.Clients)
	for i := range rnds {
		rnds[i] = rand.New(rand.NewPCG(uint64(i), 44))
	}
	rep, err := runLoad(ctx, c, name, func(ctx context.Context, kv []clientv3.KV, rec *Recorder) time.Duration {
		return drive(ctx, c, func(ctx context.Context, client, seq int) {
			rctx, cancel := context.WithTimeout(ctx, c.RequestTimeout)
			defer cancel()
			t := time.Now()
			if o.Limit == 0 {
				_, err := kv[client%c.Conns].Get(rctx, c.Key(keyIndex(c, seq, rnds[client])), opts...)
				rec.Observe(time.Since(t), err)
				return
			}
			_, _, _, err := ListPaged(rctx, kv[client%c.Conns], c.Prefix, clientv3.GetPrefixRangeEnd(c.Prefix), o.Limit, opts...)
			rec.Observe(time.Since(t), err)
		})
	})
	if rep != nil {
		mode := "linearizable"
		if o.Serializable {
			mode = "serializable"
		}
		rep.Notes = append(rep.Notes, fmt.Sprintf("%s reads over %d keys", mode, c.KeySpace))
	}
	return rep, err
}

// ListPaged lists [start, end) in pages of limit keys: the first page at
// the current revision, the following ones at that revision, each
// continuing after the previous page's last key, as kube-apiserver pages
// a list. It returns the keys, the revision read at, and the number of
// pages.
func ListPaged(ctx context.Context, kv clientv3.KV, start, end string, limit int, opts ...clientv3.OpOption) (kvs []*mvccpb.KeyValue, rev int64, pages int, err error) {
	opts = append(append([]clientv3.OpOption(nil), opts...), clientv3.WithRange(end), clientv3.WithLimit(int64(limit)))
	key := start
	for {
		resp, err := kv.Get(ctx, key, opts...)
		if err != nil {
			return kvs, rev, pages, err
		}
		pages++
		kvs = append(kvs, resp.Kvs...)
		if rev == 0 {
			rev = resp.Header.Revision
			opts = append(opts, clientv3.WithRev(rev))
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return kvs, rev, pages, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Populate writes every key of c's key space once, with Clients
// concurrent writers, before a read workload. It fails on the first error.
func Populate(ctx context.Context, c Config) error {
	c = c.Defaults()
	clients, err := dial(c)
	if err != nil {
		return err
	}
	defer closeAll(clients)
	val := value(c)
	return forEach(ctx, c.Clients, c.KeySpace, func(w, i int) error {
		rctx, cancel := context.WithTimeout(ctx, c.RequestTimeout)
		defer cancel()
		if _, err := clients[w%len(clients)].Put(rctx, c.Key(i), val); err != nil {
			return fmt.Errorf("bench: populating %s: %w", c.Key(i), err)
		}
		return nil
	})
}
