package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rangekv/rangekv/client"
	"github.com/rangekv/rangekv/txnproto"
)

// Config is what every workload takes. Zero values get the defaults of
// Defaults.
type Config struct {
	// Endpoints are the servers, "host:port" or URLs.
	Endpoints []string
	// Clients is the number of concurrent requesters; Conns the number of
	// gRPC connections they share (round robin), as in etcd's benchmark.
	Clients, Conns int
	// Total bounds the requests sent; Duration the run time. At least one
	// is set; the first reached ends the run.
	Total    int
	Duration time.Duration
	// Rate caps requests per second over all clients; 0 is unlimited.
	Rate float64
	// Keys are Prefix followed by a zero-padded index below KeySpace,
	// padded to KeySize bytes; Sequential walks the indexes in order,
	// otherwise they are uniform random.
	Prefix     string
	KeySize    int
	KeySpace   int
	Sequential bool
	// ValueSize is the size of every value written, in bytes.
	ValueSize int
	// DialTimeout bounds connecting; RequestTimeout each request.
	DialTimeout, RequestTimeout time.Duration
	// RangeAware sends KV requests through rangekv's range-aware client
	// (package client: straight to each range's leader) instead of
	// clientv3 (to any endpoint, which forwards). rangekv only.
	RangeAware bool
	// Progress, when set, receives a progress line every second.
	Progress io.Writer
}

// Defaults fills zero fields: 1 client on 1 connection, 10,000 requests,
// 8-byte keys in a space of 100,000, 256-byte values, 5 s timeouts.
func (c Config) Defaults() Config {
	if c.Clients <= 0 {
		c.Clients = 1
	}
	if c.Conns <= 0 {
		c.Conns = 1
	}
	c.Conns = min(c.Conns, c.Clients)
	if c.Total <= 0 && c.Duration <= 0 {
		c.Total = 10_000
	}
	if c.KeySpace <= 0 {
		c.KeySpace = 100_000
	}
	if c.KeySize <= 0 {
		c.KeySize = 8
	}
	if c.ValueSize < 0 {
		c.ValueSize = 0
	} else if c.ValueSize == 0 {
		c.ValueSize = 256
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 5 * time.Second
	}
	return c
}

// Key returns the key of index i: Prefix, then i zero-padded so that the
// key is KeySize bytes long (longer when the index needs more digits).
func (c Config) Key(i int) string {
	digits := len(fmt.Sprint(max(c.KeySpace-1, 0)))
	width := max(digits, c.KeySize-len(c.Prefix))
	return fmt.Sprintf("%s%0*d", c.Prefix, width, i)
}

// kvs returns the KV each connection's requests go through: the
// range-aware client's routing KV when c.RangeAware, else the clientv3
// client itself. The returned function closes what it opened.
func kvs(c Config, clients []*clientv3.Client) ([]clientv3.KV, func(), error) {
	out := make([]clientv3.KV, len(clients))
	if !c.RangeAware {
		for i, cli := range clients {
			out[i] = cli
		}
		return out, func() {}, nil
	}
	var opened []*client.Client
	closeAll := func() {
		for _, rc := range opened {
			rc.Close()
		}
	}
	for i := range clients {
		rc, err := client.New(client.Config{Endpoints: c.Endpoints, DialTimeout: c.DialTimeout, Logger: zap.NewNop()})
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("bench: range-aware client: %w", err)
		}
		opened = append(opened, rc)
		out[i] = rc.KV
	}
	return out, closeAll, nil
}

// dial opens Conns clients.
func dial(c Config) ([]*clientv3.Client, error) {
	clients := make([]*clientv3.Client, 0, c.Conns)
	for range c.Conns {
		cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints, DialTimeout: c.DialTimeout, Logger: zap.NewNop()})
		if err != nil {
			closeAll(clients)
			return nil, fmt.Errorf("bench: connecting to %s: %w", strings.Join(c.Endpoints, ","), err)
		}
		clients = append(clients, cli)
	}
	return clients, nil
}

func closeAll(clients []*clientv3.Client) {
	for _, c := range clients {
		c.Close()
	}
}

// drive runs op from Clients goroutines until Total requests were issued
// or Duration passed (or ctx ended), at most Rate per second, passing each
// request's sequence number. It returns the elapsed time.
//
// The run's end stops issuing; requests in flight then complete (within
// RequestTimeout) and are counted: none is cut short by the clock.
func drive(ctx context.Context, c Config, op func(ctx context.Context, client, seq int)) time.Duration {
	// Only issuing stops at the deadline; requests run under ctx.
	issue := ctx
	if c.Duration > 0 {
		var cancel context.CancelFunc
		issue, cancel = context.WithTimeout(ctx, c.Duration)
		defer cancel()
	}
	var lim *rate.Limiter
	if c.Rate > 0 {
		lim = rate.NewLimiter(rate.Limit(c.Rate), max(1, int(c.Rate/100)))
	}
	var seq atomic.Int64
	start := time.Now()
	var issued atomic.Int64
	stopProgress := progress(c, &issued, start)
	var wg sync.WaitGroup
	for client := range c.Clients {
		wg.Go(func() {
			for issue.Err() == nil {
				n := seq.Add(1) - 1
				if c.Total > 0 && n >= int64(c.Total) {
					return
				}
				if lim != nil && lim.Wait(issue) != nil {
					return
				}
				op(ctx, client, int(n))
				issued.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopProgress()
	return elapsed
}

// progress prints a line every second to c.Progress until stopped.
func progress(c Config, issued *atomic.Int64, start time.Time) (stop func()) {
	if c.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				fmt.Fprintln(c.Progress)
				return
			case <-t.C:
			}
			n := issued.Load()
			line := fmt.Sprintf("\r%6.1fs  %d requests  %.0f/s", time.Since(start).Seconds(), n, float64(n)/time.Since(start).Seconds())
			if c.Total > 0 {
				line += fmt.Sprintf("  %3.0f%%", 100*float64(n)/float64(c.Total))
			}
			fmt.Fprint(c.Progress, line)
		}
	})
	return func() { close(done); wg.Wait() }
}

// value returns a value of the configured size.
func value(c Config) string { return strings.Repeat("v", c.ValueSize) }

// keyIndex picks the key index of request seq.
func keyIndex(c Config, seq int, rnd *rand.Rand) int {
	if c.Sequential {
		return seq % c.KeySpace
	}
	return rnd.IntN(c.KeySpace)
}

// putLoad drives puts of ValueSize values at the configured keys
// (request seq of client i picks its key with a generator seeded from i
// and seed) through kv, recording each in rec, and returns the run's
// length. onAck, when set, sees every acknowledged put as it returns.
func putLoad(ctx context.Context, c Config, kv []clientv3.KV, seed uint64, rec *Recorder,
	onAck func(key string, resp *clientv3.PutResponse, at time.Time)) time.Duration {
	val := value(c)
	rnds := make([]*rand.Rand, c.Clients)
	for i := range rnds {
		rnds[i] = rand.New(rand.NewPCG(uint64(i), seed))
	}
	return drive(ctx, c, func(ctx context.Context, client, seq int) {
		key := c.Key(keyIndex(c, seq, rnds[client]))
		rctx, cancel := context.WithTimeout(ctx, c.RequestTimeout)
		t := time.Now()
		resp, err := kv[client%c.Conns].Put(rctx, key, val)
		cancel()
		now := time.Now()
		rec.Observe(now.Sub(t), err)
		if err == nil && onAck != nil {
			onAck(key, resp, now)
		}
	})
}

// measureServer starts measuring the CPU of the local servers of the
// endpoints; the returned function reports it for ops operations.
func measureServer(endpoints []string) func(ops int64) *ServerCPU {
	pids := FindServers(endpoints)
	if len(pids) == 0 {
		return func(int64) *ServerCPU { return nil }
	}
	before := CPUSeconds(pids)
	return func(ops int64) *ServerCPU {
		s := &ServerCPU{PIDs: pids, Seconds: CPUSeconds(pids) - before}
		if ops > 0 {
			s.SecondsPerOp = s.Seconds / float64(ops)
		}
		return s
	}
}

// RunPut writes values of ValueSize under Prefix keys.
func RunPut(ctx context.Context, c Config) (*Report, error) {
	c = c.Defaults()
	return runLoad(ctx, c, "put", func(ctx context.Context, kv []clientv3.KV, rec *Recorder) time.Duration {
		return putLoad(ctx, c, kv, 42, rec, nil)
	})
}

// runLoad dials c's connections, runs load over them recording every
// request in one Recorder, and reports it as the single operation name
// with the servers' CPU per successful request.
func runLoad(ctx context.Context, c Config, name string,
	load func(ctx context.Context, kv []clientv3.KV, rec *Recorder) time.Duration) (*Report, error) {
	clients, err := dial(c)
	if err != nil {
		return nil, err
	}
	defer closeAll(clients)
	kv, closeKV, err := kvs(c, clients)
	if err != nil {
		return nil, err
	}
	defer closeKV()
	rec := NewRecorder()
	cpu := measureServer(c.Endpoints)
	started := time.Now()
	elapsed := load(ctx, kv, rec)
	op := rec.Summarize(name, elapsed)
	return &Report{Workload: name, Endpoints: c.Endpoints, Started: started, Elapsed: elapsed,
		Ops: []OpReport{op}, Server: cpu(op.Requests - op.Errors)}, nil
}

// errNotDelivered is the error a watch-latency run records for an
// acknowledged put whose event no watcher delivered in time.
var errNotDelivered = errors.New("acknowledged write not delivered to the watcher")

// RunWatchLatency measures, for every acknowledged put under Prefix, the
// time from the put's acknowledgement to the delivery of its event to
// each of watchers prefix watches opened before the puts (created on the
// connections round robin). An event delivered before its put was
// acknowledged counts as 0. Puts never delivered within grace after the
// run are counted as watch errors.
func RunWatchLatency(ctx context.Context, c Config, watchers int, grace time.Duration) (*Report, error) {
	c = c.Defaults()
	watchers = max(watchers, 1)
	clients, err := dial(c)
	if err != nil {
		return nil, err
	}
	defer closeAll(clients)

	type ident struct {
		key string
		rev int64
	}
	var (
		mu        sync.Mutex
		acked     = map[ident]time.Time{}         // acknowledged, not yet delivered to every watcher
		early     = map[ident]map[int]time.Time{} // delivered before acknowledged
		delivered = map[ident]map[int]bool{}      // watchers that delivered
	)
	watchRec := NewRecorder()
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	var wwg sync.WaitGroup
	for w := range watchers {
		wch := clients[w%len(clients)].Watch(clientv3.WithRequireLeader(wctx), c.Prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
		select {
		case resp := <-wch:
			if err := resp.Err(); err != nil || !resp.Created {
				return nil, fmt.Errorf("bench: creating watch %d: %v", w, err)
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		wwg.Go(func() {
			for resp := range wch {
				now := time.Now()
				mu.Lock()
				for _, ev := range resp.Events {
					id := ident{string(ev.Kv.Key), ev.Kv.ModRevision}
					if delivered[id] == nil {
						delivered[id] = map[int]bool{}
					}
					delivered[id][w] = true
					if at, ok := acked[id]; ok {
						watchRec.Observe(now.Sub(at), nil)
					} else {
						if early[id] == nil {
							early[id] = map[int]time.Time{}
						}
						early[id][w] = now
					}
				}
				mu.Unlock()
			}
		})
	}

	kv, closeKV, err := kvs(c, clients)
	if err != nil {
		return nil, err
	}
	defer closeKV()
	putRec := NewRecorder()
	cpu := measureServer(c.Endpoints)
	started := time.Now()
	elapsed := putLoad(ctx, c, kv, 7, putRec, func(key string, resp *clientv3.PutResponse, at time.Time) {
		id := ident{key, resp.Header.Revision}
		mu.Lock()
		acked[id] = at
		for range early[id] {
			watchRec.Observe(0, nil)
		}
		delete(early, id)
		mu.Unlock()
	})

	// Wait for the stragglers, then count what never arrived.
	deadline := time.Now().Add(grace)
	for {
		mu.Lock()
		missing := 0
		for id := range acked {
			missing += watchers - len(delivered[id])
		}
		mu.Unlock()
		if missing == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	wcancel()
	wwg.Wait()
	mu.Lock()
	for id := range acked {
		for range watchers - len(delivered[id]) {
			watchRec.Observe(0, errNotDelivered)
		}
	}
	mu.Unlock()
	puts := putRec.Summarize("put", elapsed)
	watch := watchRec.Summarize("watch", elapsed)
	rep := &Report{Workload: "watch-latency", Endpoints: c.Endpoints, Started: started, Elapsed: elapsed,
		Ops: []OpReport{puts, watch}, Server: cpu(puts.Requests - puts.Errors)}
	rep.Notes = append(rep.Notes, fmt.Sprintf("%d prefix watcher(s) on %q; watch latency is put acknowledgement to event delivery", watchers, c.Prefix))
	return rep, nil
}

// SplitForRanges splits the workload's key space into n ranges of equal
// index width with the Ranges service (txnproto/rangekv.proto): rangekv
// only. Boundaries that already start a range are skipped.
func SplitForRanges(ctx context.Context, c Config, n int) error {
	c = c.Defaults()
	if n <= 1 {
		return nil
	}
	clients, err := dial(Config{Endpoints: c.Endpoints, Conns: 1, Clients: 1, DialTimeout: c.DialTimeout})
	if err != nil {
		return err
	}
	defer closeAll(clients)
	rc := txnproto.NewRangesClient(clients[0].ActiveConnection())
	for i := 1; i < n; i++ {
		key := c.Key(i * c.KeySpace / n)
		rctx, cancel := context.WithTimeout(ctx, c.RequestTimeout)
		_, err := rc.SplitRange(rctx, &txnproto.SplitRangeRequest{Key: []byte(key)})
		cancel()
		if status.Code(err) == codes.FailedPrecondition && strings.Contains(err.Error(), "already the start") {
			continue
		}
		if err != nil {
			return fmt.Errorf("bench: splitting at %q (is this rangekv?): %w", key, err)
		}
	}
	return spreadLeaders(ctx, c, rc)
}

// spreadLeaders hands the ranges' leaderships round-robin to the
// cluster's nodes and waits until each range is led where it was sent (or
// settleTimeout passes), so that a run starts in the steady state a
// balanced cluster reaches, not in the elections that follow a burst of
// splits and the leader balancer's moves.
func spreadLeaders(ctx context.Context, c Config, rc txnproto.RangesClient) error {
	const settleTimeout = 15 * time.Second
	nodes, err := rc.ListNodes(ctx, &txnproto.ListNodesRequest{})
	if err != nil {
		return fmt.Errorf("bench: listing nodes: %w", err)
	}
	deadline := time.Now().Add(settleTimeout)
	for {
		list, err := rc.ListRanges(ctx, &txnproto.ListRangesRequest{})
		if err != nil {
			return fmt.Errorf("bench: listing ranges: %w", err)
		}
		settled := true
		for i, r := range list.Ranges {
			want := nodes.Nodes[i%len(nodes.Nodes)].GetMember().GetId()
			if r.LeaderNodeId == want {
				continue
			}
			settled = false
			if r.LeaderNodeId != 0 {
				mctx, cancel := context.WithTimeout(ctx, c.RequestTimeout)
				key := r.StartKey
				if len(key) == 0 {
					key = []byte{0} // the first range's first key
				}
				_, _ = rc.MoveLeader(mctx, &txnproto.MoveLeaderRequest{Key: key, TargetNode: want})
				cancel()
			}
		}
		if settled || time.Now().After(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// MemoryReport is what a set of idle watchers costs the server process
// serving them, from its /metrics (Go heap and stack in use, and RSS).
type MemoryReport struct {
	Watchers int `json:"watchers"`
	// HeapStackBytes and RSSBytes are the growth over the run.
	HeapStackBytes int64 `json:"heap_stack_bytes"`
	RSSBytes       int64 `json:"rss_bytes"`
	// PerWatcherBytes is HeapStackBytes per watcher.
	PerWatcherBytes int64 `json:"per_watcher_bytes"`
	Goroutines      int64 `json:"goroutines_added"`
}

// serverMemory reads heap+stack in use, RSS and goroutines from an
// endpoint's /metrics. When the server serves Go's profiles
// (--enable-pprof) it first has it collect garbage (a heap profile with
// gc=1), so that heap in use is what is live rather than wherever the
// garbage collector's cycle happens to be; it reports whether it could.
func serverMemory(ctx context.Context, endpoint string) (heapStack, rss, goroutines int64, collected bool, err error) {
	if !strings.Contains(endpoint, "://") {
		endpoint = "http://" + endpoint
	}
	if req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/debug/pprof/heap?gc=1", nil); err == nil {
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			collected = resp.StatusCode == http.StatusOK
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/metrics", nil)
	if err != nil {
		return 0, 0, 0, false, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, 0, false, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, 0, false, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes":
			heapStack += int64(v)
		case "process_resident_memory_bytes":
			rss = int64(v)
		case "go_goroutines":
			goroutines = int64(v)
		}
	}
	if heapStack == 0 {
		return 0, 0, 0, false, fmt.Errorf("bench: %s/metrics has no Go memory statistics", endpoint)
	}
	return heapStack, rss, goroutines, collected, nil
}

// RunIdleWatchers opens n watchers of distinct keys under Prefix on the
// first endpoint (spread over Conns connections, many watchers per gRPC
// stream as clientv3 multiplexes them), waits until every one is created
// and settle has passed, and reports what they cost that server
// (rangekv or etcd: any server with Go's standard /metrics).
func RunIdleWatchers(ctx context.Context, c Config, n int, settle time.Duration) (*Report, error) {
	c = c.Defaults()
	ep := c.Endpoints[0]
	c.Endpoints = c.Endpoints[:1]
	clients, err := dial(c)
	if err != nil {
		return nil, err
	}
	defer closeAll(clients)
	if _, err := clients[0].Get(ctx, c.Key(0)); err != nil {
		return nil, fmt.Errorf("bench: %s not serving: %w", ep, err)
	}
	time.Sleep(settle)
	hs0, rss0, g0, gc0, err := serverMemory(ctx, ep)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rec := NewRecorder()
	started := time.Now()
	chans := make([]clientv3.WatchChan, n)
	for i := range n {
		t := time.Now()
		chans[i] = clients[i%len(clients)].Watch(wctx, c.Key(i%c.KeySpace)+fmt.Sprintf("/%d", i), clientv3.WithCreatedNotify())
		select {
		case resp := <-chans[i]:
			if err := resp.Err(); err != nil || !resp.Created {
				rec.Observe(0, fmt.Errorf("watch not created: %v", err))
				continue
			}
			rec.Observe(time.Since(t), nil)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	elapsed := time.Since(started)
	time.Sleep(settle)
	hs1, rss1, g1, gc1, err := serverMemory(ctx, ep)
	if err != nil {
		return nil, err
	}
	mem := &MemoryReport{Watchers: n, HeapStackBytes: hs1 - hs0, RSSBytes: rss1 - rss0, Goroutines: g1 - g0}
	if n > 0 {
		mem.PerWatcherBytes = mem.HeapStackBytes / int64(n)
	}
	rep := &Report{Workload: "watchers", Endpoints: c.Endpoints, Started: started, Elapsed: elapsed,
		Ops: []OpReport{rec.Summarize("watch-create", elapsed)}, Memory: mem}
	rep.Notes = append(rep.Notes, fmt.Sprintf("%d idle watchers on %s: heap+stack +%d B (%d B each), RSS +%d B, goroutines +%d",
		n, ep, mem.HeapStackBytes, mem.PerWatcherBytes, mem.RSSBytes, mem.Goroutines))
	if !gc0 || !gc1 {
		rep.Notes = append(rep.Notes, "the server does not serve /debug/pprof (rangekv --enable-pprof): heap in use includes garbage not yet collected, so the figures vary with the collector's cycle")
	} else {
		rep.Notes = append(rep.Notes, "heap measured after a garbage collection (/debug/pprof/heap?gc=1)")
	}
	return rep, nil
}

// RunTxnPut sends transactions of one compare (the first key's
// mod_revision is at least 0, so the success branch runs) and opsPerTxn
// puts of ValueSize values. The keys of one txn are its first key's
// index i and, with spread, i + k*KeySpace/opsPerTxn for k = 1.. (so
// that, after --ranges opsPerTxn, each lies in its own range), else
// i+1, i+2, ....
func RunTxnPut(ctx context.Context, c Config, opsPerTxn int, spread bool) (*Report, error) {
	c = c.Defaults()
	opsPerTxn = max(opsPerTxn, 1)
	val := value(c)
	rnds := make([]*rand.Rand, c.Clients)
	for i := range rnds {
		rnds[i] = rand.New(rand.NewPCG(uint64(i), 43))
	}
	return runLoad(ctx, c, "txn-put", func(ctx context.Context, kv []clientv3.KV, rec *Recorder) time.Duration {
		return drive(ctx, c, func(ctx context.Context, client, seq int) {
			first := keyIndex(c, seq, rnds[client])
			ops := make([]clientv3.Op, 0, opsPerTxn)
			for k := range opsPerTxn {
				idx := first + k
				if spread {
					idx = first%(c.KeySpace/opsPerTxn) + k*(c.KeySpace/opsPerTxn)
				}
				ops = append(ops, clientv3.OpPut(c.Key(idx%c.KeySpace), val))
			}
			rctx, cancel := context.WithTimeout(ctx, c.RequestTimeout)
			t := time.Now()
			_, err := kv[client%c.Conns].Txn(rctx).
				If(clientv3.Compare(clientv3.ModRevision(string(ops[0].KeyBytes())), ">", -1)).Then(ops...).Commit()
			cancel()
			rec.Observe(time.Since(t), err)
		})
	})
}
