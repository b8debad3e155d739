package client

import (
	"context"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/rangekv/rangekv/placement"
	"github.com/rangekv/rangekv/txnproto"
)

// Timing of metadata fetches.
const (
	// defaultFetchTimeout bounds one RangeForKey, ListRanges or ListNodes
	// call when Config.DialTimeout is zero.
	defaultFetchTimeout = 2 * time.Second
	// fetchBackoff is how long routing stops fetching ranges after a
	// failed fetch (requests go through any node meanwhile).
	fetchBackoff = 500 * time.Millisecond
	// nodesInterval is the least time between two ListNodes calls.
	nodesInterval = time.Second
)

// router is the routing etcdserverpb.KVClient: it sends each request to
// the node leading the request's range when the cache says which one,
// and through the embedded clientv3 connection (any node) otherwise.
type router struct {
	lg           *zap.Logger
	cache        *placement.Cache
	anyKV        pb.KVClient
	ranges       txnproto.RangesClient
	dialOpts     []grpc.DialOption
	fetchTimeout time.Duration

	// fetchSem admits one metadata fetch at a time, so that concurrent
	// misses do not stampede: the others wait, then find the cache filled.
	fetchSem chan struct{}
	// rangesRetryAt and nodesRetryAt (guarded by fetchSem) hold back
	// fetches after a failure and between ListNodes calls.
	rangesRetryAt time.Time
	nodesRetryAt  time.Time

	mu     sync.Mutex
	urls   map[uint64]string // node ID → client URL, from ListNodes
	conns  map[uint64]*nodeConn
	closed bool

	stats counters
}

// nodeConn is the connection to one node's client URL, dialed lazily.
type nodeConn struct {
	id  uint64
	url string
	cc  *grpc.ClientConn
	kv  pb.KVClient
	// sent counts requests sent on this connection.
	sent atomic.Uint64
}

// counters back Stats.
type counters struct {
	direct, fallback, retried, hints, rangeFetches, nodeFetches atomic.Uint64
}

func newRouter(cli *clientv3.Client, lg *zap.Logger, dialOpts []grpc.DialOption, fetchTimeout time.Duration) *router {
	if fetchTimeout <= 0 {
		fetchTimeout = defaultFetchTimeout
	}
	return &router{
		lg:           lg,
		cache:        placement.NewCache(),
		anyKV:        clientv3.RetryKVClient(cli),
		ranges:       txnproto.NewRangesClient(cli.ActiveConnection()),
		dialOpts:     append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, dialOpts...),
		fetchTimeout: fetchTimeout,
		fetchSem:     make(chan struct{}, 1),
		urls:         map[uint64]string{},
		conns:        map[uint64]*nodeConn{},
	}
}

// close closes every node connection (they stay listed, in state
// SHUTDOWN, for Stats); later requests go through the closed any-node
// connection and fail as clientv3's do after Close.
func (r *router) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for _, nc := range r.conns {
		_ = nc.cc.Close()
	}
}

// Range implements etcdserverpb.KVClient.
func (r *router) Range(ctx context.Context, in *pb.RangeRequest, opts ...grpc.CallOption) (*pb.RangeResponse, error) {
	return roundTrip(ctx, r, rangeRequest(in), opts, func(kv pb.KVClient, opts []grpc.CallOption) (*pb.RangeResponse, error) {
		return kv.Range(ctx, in, opts...)
	})
}

// Put implements etcdserverpb.KVClient.
func (r *router) Put(ctx context.Context, in *pb.PutRequest, opts ...grpc.CallOption) (*pb.PutResponse, error) {
	return roundTrip(ctx, r, putRequest(in), opts, func(kv pb.KVClient, opts []grpc.CallOption) (*pb.PutResponse, error) {
		return kv.Put(ctx, in, opts...)
	})
}

// DeleteRange implements etcdserverpb.KVClient.
func (r *router) DeleteRange(ctx context.Context, in *pb.DeleteRangeRequest, opts ...grpc.CallOption) (*pb.DeleteRangeResponse, error) {
	return roundTrip(ctx, r, deleteRequest(in), opts, func(kv pb.KVClient, opts []grpc.CallOption) (*pb.DeleteRangeResponse, error) {
		return kv.DeleteRange(ctx, in, opts...)
	})
}

// Txn implements etcdserverpb.KVClient.
func (r *router) Txn(ctx context.Context, in *pb.TxnRequest, opts ...grpc.CallOption) (*pb.TxnResponse, error) {
	return roundTrip(ctx, r, txnRequest(in), opts, func(kv pb.KVClient, opts []grpc.CallOption) (*pb.TxnResponse, error) {
		return kv.Txn(ctx, in, opts...)
	})
}

// Compact implements etcdserverpb.KVClient. Compaction covers every range;
// any node runs it.
func (r *router) Compact(ctx context.Context, in *pb.CompactionRequest, opts ...grpc.CallOption) (*pb.CompactionResponse, error) {
	r.stats.fallback.Add(1)
	return r.anyKV.Compact(ctx, in, opts...)
}

// RangeStream implements etcdserverpb.KVClient: routed like Range. When
// the leader's connection fails with Unavailable before the first
// message, the stream is opened again through any node.
func (r *router) RangeStream(ctx context.Context, in *pb.RangeRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[pb.RangeStreamResponse], error) {
	req := rangeRequest(in)
	req.local = true // the header rides on the last chunk
	info, nc := r.pick(ctx, req)
	s := &rangeStream{r: r, ctx: ctx, in: in, opts: opts, req: req, info: info}
	if nc != nil {
		var err error
		s.ServerStreamingClient, err = nc.kv.RangeStream(ctx, in, with(opts, grpc.WaitForReady(false))...)
		r.countDirect(nc)
		if err == nil {
			s.direct = true
			return s, nil
		}
		if !r.retryable(ctx, req, info, err, nil) {
			return nil, err
		}
	}
	if err := s.openAny(); err != nil {
		return nil, err
	}
	return s, nil
}

// rangeStream is a RangeStream that may move to the any-node connection
// until its first message arrived.
type rangeStream struct {
	grpc.ServerStreamingClient[pb.RangeStreamResponse]
	r      *router
	ctx    context.Context
	in     *pb.RangeRequest
	opts   []grpc.CallOption
	req    request
	info   *txnproto.RangeInfo
	direct bool
	got    bool
}

func (s *rangeStream) openAny() error {
	st, err := s.r.anyKV.RangeStream(s.ctx, s.in, s.opts...)
	s.r.stats.fallback.Add(1)
	if err != nil {
		return err
	}
	s.ServerStreamingClient, s.direct = st, false
	return nil
}

// Recv implements grpc.ServerStreamingClient.
func (s *rangeStream) Recv() (*pb.RangeStreamResponse, error) {
	m, err := s.ServerStreamingClient.Recv()
	switch {
	case err == nil && !s.got:
		s.got = true
		md, _ := s.Header()
		s.r.observe(md, s.req, s.info, nil, s.direct)
	case err != nil && !s.got && s.direct && s.r.retryable(s.ctx, s.req, s.info, err, nil):
		if err := s.openAny(); err != nil {
			return nil, err
		}
		return s.Recv()
	}
	return m, err
}

// headered is a KV response.
type headered interface{ GetHeader() *pb.ResponseHeader }

// roundTrip sends one unary request: to the leader of its range when
// pick finds one, else (or after a failed direct attempt that retryable
// allows re-sending) through the any-node connection, which carries
// clientv3's own retry policy. Every response's route hint updates the
// cache.
func roundTrip[T headered](ctx context.Context, r *router, req request, opts []grpc.CallOption,
	send func(pb.KVClient, []grpc.CallOption) (T, error)) (T, error) {
	info, nc := r.pick(ctx, req)
	if nc != nil {
		var md metadata.MD
		var p peer.Peer
		res, err := send(nc.kv, with(opts, grpc.WaitForReady(false), grpc.Header(&md), grpc.Peer(&p)))
		r.countDirect(nc)
		if err == nil {
			r.observe(md, req, info, res, true)
			return res, nil
		}
		if !r.retryable(ctx, req, info, err, &p) {
			return res, err
		}
	}
	var md metadata.MD
	res, err := send(r.anyKV, with(opts, grpc.Header(&md)))
	r.stats.fallback.Add(1)
	if err == nil {
		r.observe(md, req, info, res, false)
	}
	return res, err
}

// with returns opts followed by extra, never writing into opts' array
// (clientv3 passes the same slice on every call).
func with(opts []grpc.CallOption, extra ...grpc.CallOption) []grpc.CallOption {
	return append(slices.Clip(opts), extra...)
}

func (r *router) countDirect(nc *nodeConn) {
	r.stats.direct.Add(1)
	nc.sent.Add(1)
}

// retryable handles a failed direct attempt and reports whether the
// request may be re-sent through any node. An Unavailable error makes the
// leader unknown (its node is down, stopping or unreachable), so the next
// requests go through any node until a route hint names the leader. A
// read is re-sent after any Unavailable error; a write only when the
// request provably never left the client (p, when given, has no address:
// gRPC never opened a stream for it). Any other error is the answer.
func (r *router) retryable(ctx context.Context, req request, info *txnproto.RangeInfo, err error, p *peer.Peer) bool {
	if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
		return false
	}
	r.cache.SetLeader(info.RangeId, info.Generation, 0)
	r.lg.Debug("leader unreachable; routing through any node",
		zap.Uint64("range-id", info.RangeId), zap.Uint64("leader", info.LeaderNodeId), zap.Error(err))
	if !req.read && (p == nil || p.Addr != nil) {
		return false
	}
	r.stats.retried.Add(1)
	return true
}

// observe learns from a successful response. A route hint means the
// node that answered forwarded the request to the leader the hint names:
// the hinted range's leader is recorded when the cache holds that very
// descriptor, a cached older one is dropped, and so is the range the
// request was routed by when the hint names another (the keys moved in a
// split). Without a hint, a request that went through any node was run by
// the node that answered, which therefore leads the range (header member
// ID), unless any replica could have served it (req.local).
func (r *router) observe(md metadata.MD, req request, used *txnproto.RangeInfo, res headered, direct bool) {
	if vs := md.Get(placement.RouteHintHeader); len(vs) > 0 {
		// A request spanning ranges may carry several (one per forwarded
		// part); each is true of its range.
		r.stats.hints.Add(1)
		named := false
		for _, v := range vs {
			h, err := placement.ParseRouteHint(v)
			if err != nil {
				r.lg.Debug("ignoring malformed route hint", zap.Error(err))
				continue
			}
			r.cache.SetLeader(h.RangeID, h.Generation, h.LeaderNode)
			named = named || used != nil && h.RangeID == used.RangeId
		}
		if used != nil && !named {
			r.cache.Invalidate(used.RangeId)
		}
		return
	}
	if direct || used == nil || req.local || res == nil {
		return
	}
	if id := res.GetHeader().GetMemberId(); id != 0 {
		r.cache.SetLeader(used.RangeId, used.Generation, id)
	}
}

// pick returns the cached range holding every span of req (nil when the
// request has no keys, spans several cached ranges, or its range cannot
// be fetched) and the connection to that range's leader (nil when the
// leader is unknown, its node's URL is unknown, or its connection is
// failing).
func (r *router) pick(ctx context.Context, req request) (*txnproto.RangeInfo, *nodeConn) {
	info := r.locate(ctx, req.spans)
	if info == nil || info.LeaderNodeId == 0 {
		return info, nil
	}
	nc := r.conn(info.LeaderNodeId)
	if nc == nil {
		r.fetchNodes(ctx, info.LeaderNodeId)
		if nc = r.conn(info.LeaderNodeId); nc == nil {
			return info, nil
		}
	}
	if st := nc.cc.GetState(); st == connectivity.TransientFailure || st == connectivity.Shutdown {
		return info, nil
	}
	return info, nc
}

// locate returns the one cached range holding every span, fetching the
// ranges of keys the cache misses; nil when there is none.
func (r *router) locate(ctx context.Context, spans []span) *txnproto.RangeInfo {
	var info *txnproto.RangeInfo
	for _, s := range spans {
		e, ok := r.cache.LookupSpan(s.key, s.end)
		if e == nil {
			r.fetchRange(ctx, s.key)
			if e, ok = r.cache.LookupSpan(s.key, s.end); e == nil {
				return nil
			}
		}
		if !ok || info != nil && e.RangeId != info.RangeId {
			return nil
		}
		info = e
	}
	return info
}

// acquire takes fetchSem, failing when ctx ends first.
func (r *router) acquire(ctx context.Context) bool {
	select {
	case r.fetchSem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (r *router) release() { <-r.fetchSem }

// fetchRange fills the cache for key: the whole range map when the cache
// is empty, else the one range. Failures are logged and hold fetches back
// for fetchBackoff; the request then goes through any node.
func (r *router) fetchRange(ctx context.Context, key []byte) {
	if !r.acquire(ctx) {
		return
	}
	defer r.release()
	if _, ok := r.cache.Lookup(key); ok || time.Now().Before(r.rangesRetryAt) {
		return
	}
	var err error
	if r.cache.Len() == 0 {
		err = r.listRanges(ctx)
	} else {
		err = r.rangeForKey(ctx, key)
	}
	if err != nil {
		r.rangesRetryAt = time.Now().Add(fetchBackoff)
		r.lg.Debug("fetching ranges failed; routing through any node", zap.Error(err))
	}
}

// rangeForKey fetches the range holding key into the cache. Callers hold
// fetchSem or accept a concurrent fetch.
func (r *router) rangeForKey(ctx context.Context, key []byte) error {
	ctx, cancel := context.WithTimeout(ctx, r.fetchTimeout)
	defer cancel()
	r.stats.rangeFetches.Add(1)
	info, err := r.ranges.RangeForKey(ctx, &txnproto.RangeForKeyRequest{Key: key}, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	r.cache.Insert(info)
	return nil
}

// listRanges fetches the whole range map into the cache.
func (r *router) listRanges(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.fetchTimeout)
	defer cancel()
	r.stats.rangeFetches.Add(1)
	resp, err := r.ranges.ListRanges(ctx, &txnproto.ListRangesRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	r.cache.Insert(resp.Ranges...)
	return nil
}

// fetchNodes refreshes the node URLs when node is unknown, at most once
// per nodesInterval.
func (r *router) fetchNodes(ctx context.Context, node uint64) {
	if !r.acquire(ctx) {
		return
	}
	defer r.release()
	r.mu.Lock()
	_, known := r.urls[node]
	r.mu.Unlock()
	if known || time.Now().Before(r.nodesRetryAt) {
		return
	}
	r.nodesRetryAt = time.Now().Add(nodesInterval)
	if err := r.listNodes(ctx); err != nil {
		r.lg.Debug("listing nodes failed; routing through any node", zap.Error(err))
	}
}

// listNodes records every node's first client URL. A node whose URL
// changed gets a new connection on next use.
func (r *router) listNodes(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.fetchTimeout)
	defer cancel()
	r.stats.nodeFetches.Add(1)
	resp, err := r.ranges.ListNodes(ctx, &txnproto.ListNodesRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range resp.Nodes {
		m := n.GetMember()
		if m == nil || len(m.ClientUrls) == 0 {
			continue
		}
		r.urls[m.Id] = m.ClientUrls[0]
		if nc, ok := r.conns[m.Id]; ok && nc.url != m.ClientUrls[0] {
			_ = nc.cc.Close()
			delete(r.conns, m.Id)
		}
	}
	return nil
}

// conn returns the connection to node, dialing it on first use; nil when
// the node's URL is unknown, the dial fails or the client is closed.
func (r *router) conn(node uint64) *nodeConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	if nc, ok := r.conns[node]; ok {
		return nc
	}
	u, ok := r.urls[node]
	if !ok || r.closed {
		return nil
	}
	cc, err := grpc.NewClient(dialTarget(u), r.dialOpts...)
	if err != nil {
		r.lg.Warn("cannot dial node", zap.Uint64("node", node), zap.String("url", u), zap.Error(err))
		return nil
	}
	nc := &nodeConn{id: node, url: u, cc: cc, kv: pb.NewKVClient(cc)}
	r.conns[node] = nc
	return nc
}

// dialTarget turns a client URL into a gRPC target: host:port for
// http(s) URLs, the string itself otherwise (a gRPC target already).
func dialTarget(clientURL string) string {
	u, err := url.Parse(clientURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return clientURL
	}
	return u.Host
}
