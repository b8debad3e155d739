package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/soheilhy/cmux"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/etcdserverpb/gw"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/rangeraft"
	"github.com/rangekv/rangekv/txnproto"
)

// grpcOverheadBytes is the slack etcd allows above --max-request-bytes for
// gRPC framing before the transport itself refuses a message.
const grpcOverheadBytes = 512 * 1024

// serve binds the peer and client URLs and starts their servers.
func (n *Node) serve() error {
	n.peerServer = grpc.NewServer(append(append(rangeraft.PartitionInterceptors(), n.clockInterceptors(true)...),
		grpc.WaitForHandlers(true),
		grpc.MaxRecvMsgSize(64<<20+n.cfg.MaxRequestBytes),
		grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.MaxConcurrentStreams(math.MaxUint32),
	)...)
	n.store.Transport().Register(n.peerServer)
	pb.RegisterKVServer(n.peerServer, &kvServer{n: n, peer: true})
	txnproto.RegisterRangesServer(n.peerServer, &rangesServer{n: n, peer: true})
	txnproto.RegisterTxnServiceServer(n.peerServer, &txnServer{n: n})
	for _, u := range n.cfg.ListenPeerURLs {
		l, err := net.Listen("tcp", u.Host)
		if err != nil {
			return fmt.Errorf("listen on peer URL %s: %w", u.String(), err)
		}
		n.listeners = append(n.listeners, l)
		go func() {
			if err := n.peerServer.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				n.log.Debug("peer server stopped", zap.Error(err))
			}
		}()
	}

	n.clientServer = grpc.NewServer(append(n.clockInterceptors(false),
		grpc.WaitForHandlers(true),
		grpc.MaxRecvMsgSize(n.cfg.MaxRequestBytes+grpcOverheadBytes),
		grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.MaxConcurrentStreams(math.MaxUint32),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: false}),
	)...)
	pb.RegisterKVServer(n.clientServer, &kvServer{n: n, routeHints: true})
	pb.RegisterWatchServer(n.clientServer, newWatchServer(n))
	pb.RegisterClusterServer(n.clientServer, &clusterServer{n: n})
	txnproto.RegisterRangesServer(n.clientServer, &rangesServer{n: n})
	pb.RegisterMaintenanceServer(n.clientServer, &maintenanceServer{n: n})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(n.clientServer, hs)

	mux := http.NewServeMux()
	n.registerHTTP(mux)
	if err := n.registerGateway(mux); err != nil {
		return err
	}
	for _, u := range n.cfg.ListenClientURLs {
		l, err := net.Listen("tcp", u.Host)
		if err != nil {
			return fmt.Errorf("listen on client URL %s: %w", u.String(), err)
		}
		n.listeners = append(n.listeners, l)
		m := cmux.New(l)
		// As etcd on an insecure client URL: every HTTP/2 connection is
		// gRPC (any content subtype), everything else is HTTP/1.
		grpcL := m.Match(cmux.HTTP2())
		httpL := m.Match(cmux.Any())
		hsrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		n.httpServers = append(n.httpServers, func() { hsrv.Close() })
		go func() { _ = n.clientServer.Serve(grpcL) }()
		go func() { _ = hsrv.Serve(httpL) }()
		go func() { _ = m.Serve() }()
	}
	return nil
}

// registerGateway serves etcd's JSON gateway under /v3/ (POST
// /v3/kv/range, /v3/kv/put, /v3/watch, ...). Unary services run in
// process; Watch, a stream, goes through a loopback gRPC connection to the
// node's first client URL.
func (n *Node) registerGateway(mux *http.ServeMux) error {
	ctx := context.Background()
	gwmux := runtime.NewServeMux()
	if err := gw.RegisterKVHandlerServer(ctx, gwmux, &kvServer{n: n}); err != nil {
		return err
	}
	if err := gw.RegisterClusterHandlerServer(ctx, gwmux, &clusterServer{n: n}); err != nil {
		return err
	}
	if err := gw.RegisterMaintenanceHandlerServer(ctx, gwmux, &maintenanceServer{n: n}); err != nil {
		return err
	}
	host := n.cfg.ListenClientURLs[0].Host
	if h, port, err := net.SplitHostPort(host); err == nil && (h == "" || h == "0.0.0.0" || h == "::") {
		host = net.JoinHostPort("127.0.0.1", port)
	}
	conn, err := grpc.NewClient(host, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseBytes)))
	if err != nil {
		return err
	}
	n.httpServers = append(n.httpServers, func() { conn.Close() })
	if err := gw.RegisterWatchHandler(ctx, gwmux, conn); err != nil {
		return err
	}
	mux.Handle("/v3/", gwmux)
	return nil
}

func (n *Node) registerMetrics() {
	n.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "etcd_server_has_leader",
			Help: "Whether every range on this node has a leader (1) or not (0)."}, func() float64 {
			if n.store.HasLeader() {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "etcd_mvcc_db_total_size_in_bytes",
			Help: "Total size of the node's engine on disk, in bytes."}, func() float64 {
			return float64(n.eng.DiskUsage())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "rangekv_ranges_led",
			Help: "Number of ranges this node leads."}, func() float64 {
			c := 0
			for _, r := range n.store.Replicas() {
				if r.Status().IsLeader {
					c++
				}
			}
			return float64(c)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "rangekv_txn_intents",
			Help: "Unresolved cross-range transaction intents held by this node's replicas (docs/transactions.md)."},
			func() float64 { intents, _ := n.txnCounts(); return float64(intents) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "rangekv_txn_records",
			Help: "Transaction records held by this node's replicas as anchors."},
			func() float64 { _, records := n.txnCounts(); return float64(records) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "etcd_server_version",
			Help: "API version the server implements (label).", ConstLabels: prometheus.Labels{"server_version": APIVersion}},
			func() float64 { return 1 }),
	)
}

// txnCounts sums the intents and records of the node's replicas.
func (n *Node) txnCounts() (intents, records int) {
	for _, r := range n.store.Replicas() {
		i, rec := r.TxnCounts()
		intents += i
		records += rec
	}
	return intents, records
}

// registerHTTP adds etcd's HTTP endpoints: /health, /livez, /readyz,
// /version, /metrics and, with --enable-pprof, /debug/pprof/.
func (n *Node) registerHTTP(mux *http.ServeMux) {
	mux.Handle("/metrics", promhttp.HandlerFor(n.reg, promhttp.HandlerOpts{}))
	if n.cfg.EnablePprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/version", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"etcdserver": APIVersion, "etcdcluster": APIVersion, "rangekv": Version,
		})
	})
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		reason := n.healthProblem(r.Context(), r.URL.Query().Get("serializable") == "true")
		if reason != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]string{"health": "false", "reason": reason})
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"health": "true", "reason": ""})
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, r *http.Request) {
		n.writeChecks(w, r, []check{{"serializable_read", func(ctx context.Context) error { return n.serializableProbe() }}})
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		n.writeChecks(w, r, []check{
			{"leader", func(ctx context.Context) error {
				if !n.store.HasLeader() {
					return errors.New("no leader")
				}
				return nil
			}},
			{"clock_offset", func(ctx context.Context) error {
				if p := n.clockCheck.get(); p != "" {
					return errors.New(p)
				}
				return nil
			}},
			{"serializable_read", func(ctx context.Context) error { return n.serializableProbe() }},
			{"linearizable_read", func(ctx context.Context) error { return n.linearizableProbe(ctx) }},
		})
	})
}

type check struct {
	name string
	fn   func(context.Context) error
}

// writeChecks answers in the format of etcd's /livez and /readyz: "ok", or
// per-check lines with ?verbose and on failure.
func (n *Node) writeChecks(w http.ResponseWriter, r *http.Request, checks []check) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	exclude := map[string]bool{}
	for _, e := range r.URL.Query()["exclude"] {
		exclude[e] = true
	}
	var b strings.Builder
	failed := false
	for _, c := range checks {
		if exclude[c.name] {
			fmt.Fprintf(&b, "[+]%s excluded: ok\n", c.name)
			continue
		}
		if err := c.fn(ctx); err != nil {
			failed = true
			fmt.Fprintf(&b, "[-]%s failed: %v\n", c.name, err)
		} else {
			fmt.Fprintf(&b, "[+]%s ok\n", c.name)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if failed {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "%s%s check failed\n", b.String(), strings.TrimPrefix(r.URL.Path, "/"))
		return
	}
	if _, verbose := r.URL.Query()["verbose"]; verbose {
		fmt.Fprintf(w, "%s%s check passed\n", b.String(), strings.TrimPrefix(r.URL.Path, "/"))
		return
	}
	fmt.Fprint(w, "ok")
}

func (n *Node) healthProblem(ctx context.Context, serializable bool) string {
	if !n.store.HasLeader() {
		return "RAFT NO LEADER"
	}
	if serializable {
		if err := n.serializableProbe(); err != nil {
			return "QGET ERROR: " + err.Error()
		}
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := n.linearizableProbe(ctx); err != nil {
		return "QGET ERROR: " + err.Error()
	}
	return ""
}

func (n *Node) serializableProbe() error {
	r, err := n.userRange([]byte("health"))
	if err != nil {
		return err
	}
	_, err = n.readLocal(r, &pb.RangeRequest{Key: []byte("health"), Serializable: true})
	return err
}

func (n *Node) linearizableProbe(ctx context.Context) error {
	_, err := (&kvServer{n: n}).Range(ctx, &pb.RangeRequest{Key: []byte("health")})
	return err
}

// publishMember records this node's client URLs in the meta range (etcd
// members publish their attributes through raft the same way), retrying
// until it sticks.
func (n *Node) publishMember() {
	defer n.wg.Done()
	self := &txnproto.Member{Id: n.id, Name: n.cfg.Name, ClientUrls: urlStrings(n.cfg.AdvertiseClientURLs)}
	for _, m := range n.ident.InitialMembers {
		if m.Id == n.id {
			self.PeerUrls = m.PeerUrls
		}
	}
	data, err := proto.Marshal(self)
	if err != nil {
		n.log.Error("encode member", zap.Error(err))
		return
	}
	s := &kvServer{n: n}
	req := &pb.PutRequest{Key: rangeraft.MetaMemberKey(n.id), Value: data}
	putData, err := proto.Marshal(req)
	if err != nil {
		return
	}
	for {
		if ms, err := n.members(); err == nil {
			for _, m := range ms {
				if m.Id == n.id && proto.Equal(m, self) {
					n.log.Info("published local member to cluster", zap.Strings("client-urls", self.ClientUrls))
					return
				}
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), n.reqTimeout)
		go func() {
			select {
			case <-n.stopc:
				cancel()
			case <-ctx.Done():
			}
		}()
		meta := func() (*rangeraft.Replica, error) { return n.metaRange(), nil }
		_, err := onLeader(ctx, s, meta, false, func(ctx context.Context, r *rangeraft.Replica) (*pb.PutResponse, error) {
			res, err := r.Propose(ctx, &txnproto.Command{Put: putData})
			if err != nil {
				return nil, err
			}
			return res.Response.(*pb.PutResponse), nil
		}, func(ctx context.Context, cc grpc.ClientConnInterface) (*pb.PutResponse, error) {
			return pb.NewKVClient(cc).Put(ctx, req)
		})
		cancel()
		if err != nil {
			n.log.Debug("publishing member failed; retrying", zap.Error(err))
		}
		select {
		case <-n.stopc:
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}
