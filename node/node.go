// Package node wires one rangekv process together: the engine, the range
// replicas and their scheduler, the etcd v3 gRPC API and HTTP endpoints on
// the client URLs, and the raft transport and request forwarding on the
// peer URLs. The etcd API layer only translates etcd requests into range
// requests; replication lives in rangeraft and storage in kvstore.
package node

import (
	"context"
	"errors"
	"fmt"
	"github.com/cockroachdb/pebble/v2"
	"net"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/hlc"
	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/rangeraft"
	"github.com/rangekv/rangekv/txnproto"
)

// APIVersion is the etcd API level this server implements, reported in
// Maintenance.Status and /version (kube-apiserver checks it).
const APIVersion = "3.7.0"

// Version is rangekv's own version, set by cmd/rangekv.
var Version = "0.1.0-dev"

// Node is one running rangekv process.
type Node struct {
	cfg   Config
	log   *zap.Logger
	eng   *kvstore.Engine
	ident *txnproto.NodeIdent
	id    uint64
	clock *hlc.Clock
	// clockSettledAt: see rangeraft.StoreConfig.ClockSettledAt.
	clockSettledAt time.Time
	// clockCheck is the verdict of the clock monitor (clock.go).
	clockCheck clockState
	store      *rangeraft.Store
	reg        *prometheus.Registry

	peerServer   *grpc.Server
	clientServer *grpc.Server
	listeners    []net.Listener
	httpServers  []func()

	reqTimeout time.Duration
	stopOnce   sync.Once
	stopc      chan struct{}
	// lifetime is cancelled when the node stops (closeAll): the context
	// of background work that outlives a request.
	lifetime    context.Context
	endLifetime context.CancelFunc
	done        chan struct{}
	errMu       sync.Mutex
	err         error
	wg          sync.WaitGroup
	// bgMu guards bgStopped, set once closeAll waits for background work
	// (goBackground adds none after).
	bgMu      sync.Mutex
	bgStopped bool
	// evalDB is the empty in-memory engine cross-range coordinators
	// evaluate transactions over (evalEngine).
	txnMetrics *txnMetrics
	// readCloses batches the closes of linearizable reads on followers
	// (followerread.go).
	readCloses readCloses
	evalOnce   sync.Once
	evalDB     *pebble.DB
	evalErr    error
}

// Start opens (bootstrapping if new) the node's data directory and serves
// the client and peer URLs. It returns once listeners are bound.
func Start(cfg Config, lg *zap.Logger) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:   cfg,
		log:   lg,
		stopc: make(chan struct{}),
		done:  make(chan struct{}),
		// etcd's request timeout: 5s plus two election timeouts.
		reqTimeout: 5*time.Second + 2*cfg.ElectionTimeout,
		reg:        prometheus.NewRegistry(),
	}
	n.lifetime, n.endLifetime = context.WithCancel(context.Background())
	n.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ok := false
	defer func() {
		if !ok {
			n.closeAll()
		}
	}()
	eng, err := kvstore.Open(cfg.DataDir, lg)
	if err != nil {
		return nil, err
	}
	n.eng = eng
	if err := n.loadOrBootstrap(); err != nil {
		return nil, err
	}
	n.clock = newClock(cfg)
	electionTicks := int(cfg.ElectionTimeout / cfg.HeartbeatInterval)
	store, err := rangeraft.NewStore(rangeraft.StoreConfig{
		NodeID:        n.id,
		ClusterID:     n.ident.ClusterId,
		Engine:        eng,
		Clock:         n.clock,
		Logger:        lg,
		TickInterval:  cfg.HeartbeatInterval,
		ElectionTicks: electionTicks,
		SnapshotCount: cfg.SnapshotCount,
		Registerer:    n.reg,
		Resolve:       n.resolvePeer,

		ClosedTimestampInterval: cfg.ClosedTimestampInterval,
		ReceiveDelay:            cfg.TestingRaftReceiveDelay,
		ClusterSize:             len(n.ident.InitialMembers),
		ClockSettledAt:          n.clockSettledAt,
	})
	if err != nil {
		return nil, fmt.Errorf("load ranges from %s: %w", cfg.DataDir, err)
	}
	n.store = store
	n.registerMetrics()
	n.txnMetrics = newTxnMetrics(n.reg)
	n.readCloses.init(n.reg)
	if err := n.serve(); err != nil {
		return nil, err
	}
	store.Start()
	n.wg.Add(2)
	go n.watchFatal()
	go n.publishMember()
	for _, periodic := range []func() (time.Duration, func()){n.splitQueue, n.directoryRepair, n.clockMonitor, n.leaderBalancer, n.intentResolver} {
		if interval, tick := periodic(); tick != nil {
			n.wg.Add(1)
			go n.every(interval, tick)
		}
	}
	ok = true
	lg.Info("rangekv node started",
		zap.String("name", cfg.Name),
		zap.String("member-id", fmt.Sprintf("%x", n.id)),
		zap.String("cluster-id", fmt.Sprintf("%x", n.ident.ClusterId)),
		zap.String("data-dir", cfg.DataDir),
		zap.Strings("listen-client-urls", urlStrings(cfg.ListenClientURLs)),
		zap.Strings("listen-peer-urls", urlStrings(cfg.ListenPeerURLs)))
	return n, nil
}

// ID returns the node's member ID.
func (n *Node) ID() uint64 { return n.id }

// ClusterID returns the cluster ID.
func (n *Node) ClusterID() uint64 { return n.ident.ClusterId }

// Done is closed when the node stops, by Stop or after a fatal error.
func (n *Node) Done() <-chan struct{} { return n.done }

// Err returns the fatal error that stopped the node, nil after Stop.
func (n *Node) Err() error {
	n.errMu.Lock()
	defer n.errMu.Unlock()
	return n.err
}

// Stop shuts the node down: listeners close, in-flight requests end, the
// scheduler stops and the engine closes. Nothing acknowledged is lost
// (acknowledged writes are in the synced raft log).
func (n *Node) Stop() {
	n.stopOnce.Do(func() {
		close(n.stopc)
		n.closeAll()
		close(n.done)
	})
}

// goBackground runs fn on a goroutine the node waits for when it stops;
// once it is stopping, fn does not run.
func (n *Node) goBackground(fn func()) {
	n.bgMu.Lock()
	defer n.bgMu.Unlock()
	if n.bgStopped {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		fn()
	}()
}

func (n *Node) fail(err error) {
	n.errMu.Lock()
	if n.err == nil {
		n.err = err
	}
	n.errMu.Unlock()
	go n.Stop()
}

func (n *Node) closeAll() {
	n.endLifetime()
	if n.clientServer != nil {
		n.clientServer.Stop()
	}
	if n.peerServer != nil {
		n.peerServer.Stop()
	}
	for _, stop := range n.httpServers {
		stop()
	}
	for _, l := range n.listeners {
		l.Close()
	}
	if n.store != nil {
		n.store.Stop()
	}
	n.bgMu.Lock()
	n.bgStopped = true
	n.bgMu.Unlock()
	n.wg.Wait()
	if n.evalDB != nil {
		_ = n.evalDB.Close()
	}
	if n.eng != nil {
		if err := n.eng.Close(); err != nil {
			n.log.Warn("closing engine", zap.Error(err))
		}
	}
}

func (n *Node) watchFatal() {
	defer n.wg.Done()
	select {
	case err := <-n.store.Fatal():
		n.fail(fmt.Errorf("raft scheduler: %w", err))
	case <-n.stopc:
	}
}

// initialMembers turns --initial-cluster into members with etcd-style IDs.
func (n *Node) initialMembers() ([]*txnproto.Member, *txnproto.Member, error) {
	var members []*txnproto.Member
	var self *txnproto.Member
	for _, im := range n.cfg.InitialCluster {
		urls := urlStrings(im.PeerURLs)
		m := &txnproto.Member{Id: memberID(urls, n.cfg.InitialClusterToken), Name: im.Name, PeerUrls: urls}
		members = append(members, m)
		if im.Name == n.cfg.Name {
			// Client URLs are published later through the meta range:
			// bootstrap state must be byte-identical on every founder.
			self = m
		}
	}
	if self == nil {
		return nil, nil, fmt.Errorf("--initial-cluster has no member named %q (--name)", n.cfg.Name)
	}
	return members, self, nil
}

func (n *Node) loadOrBootstrap() error {
	members, self, err := n.initialMembers()
	if err != nil {
		return err
	}
	expectCluster := clusterID(members)
	ident, err := rangeraft.LoadIdent(n.eng)
	switch {
	case errors.Is(err, rangeraft.ErrNotBootstrapped):
		if n.cfg.InitialClusterState == "existing" {
			return fmt.Errorf("data dir %s is empty and --initial-cluster-state=existing: "+
				"joining a running cluster (etcd's member add) is not supported yet", n.cfg.DataDir)
		}
		ident = &txnproto.NodeIdent{
			ClusterId:      expectCluster,
			NodeId:         self.Id,
			Name:           n.cfg.Name,
			ClusterToken:   n.cfg.InitialClusterToken,
			InitialMembers: members,
		}
		if err := rangeraft.Bootstrap(n.eng, ident); err != nil {
			return fmt.Errorf("bootstrap %s: %w", n.cfg.DataDir, err)
		}
		n.log.Info("bootstrapped new cluster member",
			zap.String("cluster-id", fmt.Sprintf("%x", ident.ClusterId)), zap.Int("members", len(members)))
	case err != nil:
		return fmt.Errorf("data dir %s: %w", n.cfg.DataDir, err)
	default:
		// A restart: the clock may not vouch for earlier readings yet
		// (rangeraft/clockround.go).
		n.clockSettledAt = time.Now().Add(n.cfg.MaxClockOffset)
		if ident.Name != n.cfg.Name {
			return fmt.Errorf("data dir %s belongs to member %q, not --name=%q", n.cfg.DataDir, ident.Name, n.cfg.Name)
		}
		if ident.ClusterId != expectCluster {
			return fmt.Errorf("data dir %s belongs to cluster %x (token %q), but --initial-cluster and "+
				"--initial-cluster-token describe cluster %x: start with the flags the member was created with, "+
				"or point --data-dir at this cluster's data", n.cfg.DataDir, ident.ClusterId, ident.ClusterToken, expectCluster)
		}
		n.log.Info("restarting member from existing data dir", zap.String("data-dir", n.cfg.DataDir))
	}
	n.ident = ident
	n.id = ident.NodeId
	return nil
}

// resolvePeer returns host:port of a node's first peer URL.
func (n *Node) resolvePeer(nodeID uint64) (string, error) {
	for _, m := range n.ident.InitialMembers {
		if m.Id == nodeID && len(m.PeerUrls) > 0 {
			u, err := url.Parse(m.PeerUrls[0])
			if err != nil {
				return "", err
			}
			return u.Host, nil
		}
	}
	return "", fmt.Errorf("unknown node %x", nodeID)
}

// maxResponseBytes bounds responses (etcd allows math.MaxInt32 on receive).
const maxResponseBytes = 1<<31 - 1

// userRange returns the local replica holding user key.
func (n *Node) userRange(key []byte) (*rangeraft.Replica, error) {
	if r := n.store.ReplicaForKey(kvstore.UserSpanKey(key)); r != nil {
		return r, nil
	}
	// User ranges tile the keyspace; a miss is a split in progress.
	return nil, errStaleRange
}

func (n *Node) metaRange() *rangeraft.Replica { return n.store.Replica(rangeraft.MetaRangeID) }

func urlStrings(us []url.URL) []string {
	out := make([]string, 0, len(us))
	for _, u := range us {
		out = append(out, u.String())
	}
	return out
}

// members reads the member records from the local meta replica, ordered
// by ID.
func (n *Node) members() ([]*txnproto.Member, error) {
	view := n.metaRange().NewReadView()
	defer view.Close()
	var out []*txnproto.Member
	var decodeErr error
	_, err := kvstore.MVCCScan(view.Reader, kvstore.MetaSpanKey(rangeraft.MetaMemberPrefix),
		kvstore.MetaSpanKey(prefixEnd(rangeraft.MetaMemberPrefix)), view.Revision, 0, func(kv *mvccpb.KeyValue) bool {
			m := &txnproto.Member{}
			if decodeErr = proto.Unmarshal(kv.Value, m); decodeErr != nil {
				return false
			}
			out = append(out, m)
			return true
		})
	if err == nil {
		err = decodeErr
	}
	return out, err
}

func prefixEnd(p []byte) []byte {
	end := slices.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// every calls tick every interval until the node stops: the loop of the
// node's periodic jobs (split queue, directory repair, clock monitor,
// leader balancer), each of which returns its interval and tick, or a nil
// tick when it is turned off.
func (n *Node) every(interval time.Duration, tick func()) {
	defer n.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-n.stopc:
			return
		case <-t.C:
		}
		tick()
	}
}
