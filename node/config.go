package node

import (
	"net/url"
	"time"
)

// Config is one node's configuration, produced from etcd-style flags by
// cmd/rangekv. Field names follow etcd's embed.Config where the meaning is
// the same.
type Config struct {
	// Name is this node's human-readable name (etcd --name).
	Name string
	// DataDir holds the Pebble engine (etcd --data-dir).
	DataDir string

	// ListenClientURLs are served with the etcd gRPC API and HTTP endpoints.
	ListenClientURLs []url.URL
	// AdvertiseClientURLs are reported to clients in MemberList.
	AdvertiseClientURLs []url.URL
	// ListenPeerURLs are served with the raft transport and internal RPCs.
	ListenPeerURLs []url.URL
	// InitialAdvertisePeerURLs are this node's peer URLs as others dial them.
	InitialAdvertisePeerURLs []url.URL

	// InitialCluster lists every founding member, in flag order.
	InitialCluster []InitialMember
	// InitialClusterState is "new" or "existing".
	InitialClusterState string
	// InitialClusterToken seeds cluster and node IDs (etcd semantics).
	InitialClusterToken string

	// HeartbeatInterval is raft's heartbeat period (one tick).
	HeartbeatInterval time.Duration
	// ElectionTimeout is raft's election timeout; a multiple of the heartbeat.
	ElectionTimeout time.Duration

	// MaxRequestBytes bounds a client request's encoded size.
	MaxRequestBytes int
	// MaxTxnOps bounds the operations in one Txn branch.
	MaxTxnOps int
	// SnapshotCount is the number of applied entries after which a range's
	// raft log is truncated (etcd --snapshot-count).
	SnapshotCount uint64
	// RangeMaxBytes is the size, in bytes of MVCC data, past which a range
	// splits; 0 disables size-based splits.
	RangeMaxBytes int64
	// RangeSplitQPS is the request rate, per second over 10s, past which a
	// range splits where its sampled load divides; 0 disables it.
	RangeSplitQPS float64
	// LeaderBalance moves range leaderships from the node leading the most
	// user ranges to the one leading the fewest (placement's first job).
	LeaderBalance bool
	// MaxClockOffset bounds accepted HLC skew between nodes.
	MaxClockOffset time.Duration
	// ClosedTimestampInterval is how often range leaders publish closed
	// timestamps on the per-node side channel
	// (docs/closed-timestamps.md); 0 turns the side channel off.
	ClosedTimestampInterval time.Duration
	// UnsafeClockSkew shifts this node's wall clock, for fault-injection
	// tests of --max-clock-offset (never set it in production).
	UnsafeClockSkew time.Duration
	// TestingRaftReceiveDelay, when set, holds each raft batch from a
	// node for the duration it returns before handling it (a one-way
	// delay, in order), for in-process fault tests; nil in production.
	TestingRaftReceiveDelay func(fromNode uint64) time.Duration `json:"-"`
	// EnablePprof serves net/http/pprof under /debug/pprof/ on the client
	// URLs (etcd --enable-pprof).
	EnablePprof bool
	// WatchProgressNotifyInterval is the period of progress notifications
	// to watchers that asked for them.
	WatchProgressNotifyInterval time.Duration
}

// InitialMember is one entry of --initial-cluster: name=peerURL[,name=peerURL].
type InitialMember struct {
	Name     string
	PeerURLs []url.URL
}
