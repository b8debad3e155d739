// Package client is rangekv's range-aware Go client. It is a clientv3
// client whose KV methods (Put, Get, Delete, Txn, Do, Compact, GetStream)
// send each request straight to the node leading the request's range,
// using a cache of the range map fetched from the Ranges service
// (txnproto/rangekv.proto) on the client port. Everything else (Watch,
// Lease, Cluster, Maintenance, Auth) goes through the embedded clientv3
// client to any node, as does every KV request the cache cannot place.
// Answers are exactly etcd's either way: any node serves any request.
//
// Serializable reads are routed to the leader too (the simplest rule; its
// answer is at least as fresh). Watches use any node because every node
// holds a replica of every range today and serves watches from its local
// replica's event feed. See docs/client.md.
package client

import (
	"context"
	"errors"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/rangekv/rangekv/txnproto"
)

// Config configures a Client; its fields mean what clientv3.Config's do.
type Config struct {
	// Endpoints are the nodes the embedded clientv3 client talks to
	// ("host:port" or "http://host:port"); at least one is required.
	// Routed requests also dial the client URL each node advertises.
	Endpoints []string
	// DialTimeout is the embedded client's dial timeout. It also bounds
	// each fetch of range or node metadata (default 2s).
	DialTimeout time.Duration
	// DialOptions are added to the options of every connection: the
	// embedded client's and each per-node one. Per-node connections are
	// insecure unless these set transport credentials.
	DialOptions []grpc.DialOption
	// Logger logs routing events at debug level; nil uses clientv3's
	// default logger.
	Logger *zap.Logger
}

// Client is a clientv3.Client whose KV routes by range. The embedded
// clientv3.KV (the routing one) shadows the embedded clientv3.Client's
// KV, so c.Put, c.Get, c.Delete, c.Txn, c.Do, c.Compact and c.GetStream
// route, and c.KV is the routing KV; c.Client.KV is clientv3's own.
type Client struct {
	*clientv3.Client
	clientv3.KV

	r *router
}

// New creates a client. Like clientv3.New it does not wait for a
// connection; the range map is fetched on the first KV request.
func New(cfg Config) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("client: at least one endpoint is required")
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		DialOptions: cfg.DialOptions,
		Logger:      cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	r := newRouter(cli, cli.GetLogger(), cfg.DialOptions, cfg.DialTimeout)
	return &Client{Client: cli, KV: clientv3.NewKVFromKVClient(r, cli), r: r}, nil
}

// Close closes the per-node connections and the embedded client.
func (c *Client) Close() error {
	c.r.close()
	return c.Client.Close()
}

// Ranges returns the cached ranges in key order: possibly stale, with
// gaps where entries were dropped. The values are shared; do not modify
// them.
func (c *Client) Ranges() []*txnproto.RangeInfo { return c.r.cache.All() }

// RangeFor returns the range holding key: the cached one, or on a miss
// the one a node reports (RangeForKey), which is then cached.
func (c *Client) RangeFor(ctx context.Context, key []byte) (*txnproto.RangeInfo, error) {
	if info, ok := c.r.cache.Lookup(key); ok {
		return info, nil
	}
	if err := c.r.rangeForKey(ctx, key); err != nil {
		return nil, err
	}
	if info, ok := c.r.cache.Lookup(key); ok {
		return info, nil
	}
	// A concurrent insert of a newer descriptor may have won; ask again.
	return c.r.ranges.RangeForKey(ctx, &txnproto.RangeForKeyRequest{Key: key})
}

// Refresh fetches the whole range map (ListRanges) and node list
// (ListNodes) from a node. Newer cached descriptors are kept.
func (c *Client) Refresh(ctx context.Context) error {
	if !c.r.acquire(ctx) {
		return ctx.Err()
	}
	defer c.r.release()
	if err := c.r.listRanges(ctx); err != nil {
		return err
	}
	return c.r.listNodes(ctx)
}

// RangesClient returns the Ranges service (ListRanges, RangeForKey,
// SplitRange, ListNodes) through the embedded client's connection.
func (c *Client) RangesClient() txnproto.RangesClient { return c.r.ranges }

// Stats counts routing decisions since New. Every KV request is counted
// once in Direct or Fallback, except that a direct attempt re-sent
// through any node (Retried) counts in both.
type Stats struct {
	// Direct counts requests sent on a leader's connection.
	Direct uint64
	// Fallback counts requests sent through the embedded client (any
	// node): no keys (Compact), keys in several cached ranges, a range
	// the cache could not fetch, an unknown or unreachable leader.
	Fallback uint64
	// Retried counts direct attempts that failed with Unavailable and
	// were re-sent through any node.
	Retried uint64
	// RouteHints counts responses carrying a route hint: a node had to
	// forward the request, so the cache sent it to the wrong node.
	RouteHints uint64
	// RangeFetches counts RangeForKey and ListRanges calls.
	RangeFetches uint64
	// NodeFetches counts ListNodes calls.
	NodeFetches uint64
	// DirectByNode counts direct requests by node ID.
	DirectByNode map[uint64]uint64
}

// Stats returns the routing counters.
func (c *Client) Stats() Stats {
	s := &c.r.stats
	st := Stats{
		Direct:       s.direct.Load(),
		Fallback:     s.fallback.Load(),
		Retried:      s.retried.Load(),
		RouteHints:   s.hints.Load(),
		RangeFetches: s.rangeFetches.Load(),
		NodeFetches:  s.nodeFetches.Load(),
		DirectByNode: map[uint64]uint64{},
	}
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	for id, nc := range c.r.conns {
		if n := nc.sent.Load(); n > 0 {
			st.DirectByNode[id] = n
		}
	}
	return st
}
