package main

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap/zapcore"

	"github.com/rangekv/rangekv/node"
)

// Flag names, shared by registration, derivation and tests.
const (
	flagName                        = "name"
	flagDataDir                     = "data-dir"
	flagListenClientURLs            = "listen-client-urls"
	flagAdvertiseClientURLs         = "advertise-client-urls"
	flagListenPeerURLs              = "listen-peer-urls"
	flagInitialAdvertisePeerURLs    = "initial-advertise-peer-urls"
	flagInitialCluster              = "initial-cluster"
	flagInitialClusterState         = "initial-cluster-state"
	flagInitialClusterToken         = "initial-cluster-token"
	flagHeartbeatInterval           = "heartbeat-interval"
	flagElectionTimeout             = "election-timeout"
	flagMaxRequestBytes             = "max-request-bytes"
	flagMaxTxnOps                   = "max-txn-ops"
	flagSnapshotCount               = "snapshot-count"
	flagMaxClockOffset              = "max-clock-offset"
	flagClosedTimestampInterval     = "closed-timestamp-interval"
	flagRangeMaxBytes               = "range-max-bytes"
	flagRangeSplitQPS               = "range-split-qps"
	flagLeaderBalance               = "leader-balance"
	flagWatchProgressNotifyInterval = "watch-progress-notify-interval"
	flagEnablePprof                 = "enable-pprof"
	flagUnsafeClockSkew             = "unsafe-clock-skew"
	flagLogger                      = "logger"
	flagLogLevel                    = "log-level"
	flagLogOutputs                  = "log-outputs"
)

// options holds the raw values of the server flags.
type options struct {
	fs *pflag.FlagSet

	name    string
	dataDir string

	listenClientURLs         *urlsValue
	advertiseClientURLs      *urlsValue
	listenPeerURLs           *urlsValue
	initialAdvertisePeerURLs *urlsValue
	initialCluster           *clusterValue
	initialClusterState      *choiceValue
	initialClusterToken      string
	enablePprof              bool
	leaderBalance            bool
	unsafeClockSkew          time.Duration

	heartbeatMs     uint
	electionMs      uint
	maxRequestBytes int
	maxTxnOps       int
	snapshotCount   uint64
	rangeMaxBytes   int64
	rangeSplitQPS   float64
	maxClockOffset  time.Duration
	closedInterval  time.Duration
	watchProgress   time.Duration

	logger     *choiceValue
	logLevel   *choiceValue
	logOutputs []string
}

// newOptions registers the server flags, with etcd's names and defaults
// (node.DefaultConfig), on a new flag set.
func newOptions() *options {
	d := node.DefaultConfig()
	o := &options{
		fs:                       pflag.NewFlagSet("rangekv", pflag.ContinueOnError),
		listenClientURLs:         newURLsValue(d.ListenClientURLs),
		advertiseClientURLs:      newURLsValue(d.AdvertiseClientURLs),
		listenPeerURLs:           newURLsValue(d.ListenPeerURLs),
		initialAdvertisePeerURLs: newURLsValue(d.InitialAdvertisePeerURLs),
		initialCluster:           &clusterValue{members: d.InitialCluster},
		initialClusterState:      newChoiceValue(d.InitialClusterState, "new", "existing"),
		logger:                   newChoiceValue("zap", "zap"),
		logLevel:                 newChoiceValue("info", "debug", "info", "warn", "error"),
	}
	fs := o.fs
	fs.SortFlags = false

	// Member.
	fs.StringVar(&o.name, flagName, d.Name, "Human-readable name of this node; must be unique in the cluster.")
	fs.StringVar(&o.dataDir, flagDataDir, "", `Directory of this node's data (default "${name}.rangekv").`)
	fs.Var(o.listenClientURLs, flagListenClientURLs, "Comma-separated URLs to serve clients on (etcd gRPC API and HTTP endpoints).")
	fs.Var(o.listenPeerURLs, flagListenPeerURLs, "Comma-separated URLs to serve other nodes on (raft and internal RPCs).")
	fs.UintVar(&o.heartbeatMs, flagHeartbeatInterval, uint(d.HeartbeatInterval.Milliseconds()), "Raft heartbeat interval in milliseconds.")
	fs.UintVar(&o.electionMs, flagElectionTimeout, uint(d.ElectionTimeout.Milliseconds()), "Raft election timeout in milliseconds; at least 5 heartbeat intervals.")
	fs.Uint64Var(&o.snapshotCount, flagSnapshotCount, d.SnapshotCount, "Applied entries after which a range's raft log is truncated.")
	fs.IntVar(&o.maxRequestBytes, flagMaxRequestBytes, d.MaxRequestBytes, "Largest client request, in bytes, the server accepts.")
	fs.IntVar(&o.maxTxnOps, flagMaxTxnOps, d.MaxTxnOps, "Most operations allowed in one transaction branch.")
	fs.Int64Var(&o.rangeMaxBytes, flagRangeMaxBytes, d.RangeMaxBytes, "A range larger than this many bytes splits in two; 0 disables size-based splits.")
	fs.BoolVar(&o.leaderBalance, flagLeaderBalance, d.LeaderBalance, "Spread range leaderships evenly over the nodes by moving them from the node leading the most user ranges.")
	fs.Float64Var(&o.rangeSplitQPS, flagRangeSplitQPS, d.RangeSplitQPS, "A range serving more requests per second than this, sustained over 10s, splits where its load divides; 0 disables load-based splits.")
	fs.DurationVar(&o.maxClockOffset, flagMaxClockOffset, d.MaxClockOffset, "Largest clock skew tolerated between nodes; a node further off stops serving.")
	fs.DurationVar(&o.closedInterval, flagClosedTimestampInterval, d.ClosedTimestampInterval, "How often range leaders publish closed timestamps to followers, letting multi-range watches and reads proceed on idle ranges; 0 turns it off.")
	fs.DurationVar(&o.watchProgress, flagWatchProgressNotifyInterval, d.WatchProgressNotifyInterval, "Period of progress notifications to watchers that request them.")

	// Clustering.
	fs.Var(o.initialAdvertisePeerURLs, flagInitialAdvertisePeerURLs, "This node's peer URLs as the other nodes reach them.")
	fs.Var(o.advertiseClientURLs, flagAdvertiseClientURLs, "This node's client URLs as clients reach them; required if --listen-client-urls is set.")
	fs.Var(o.initialCluster, flagInitialCluster, `Founding members as comma-separated name=peerURL pairs; a name repeats for several URLs (default "${name}=${initial-advertise-peer-urls}").`)
	fs.Var(o.initialClusterState, flagInitialClusterState, `"new" to bootstrap a cluster, "existing" to join one; ignored once the node has data.`)
	fs.StringVar(&o.initialClusterToken, flagInitialClusterToken, d.InitialClusterToken, "Token unique to this cluster; keeps separate clusters from merging by mistake.")

	// Testing only, hidden from --help.
	fs.DurationVar(&o.unsafeClockSkew, flagUnsafeClockSkew, 0, "Shift this node's wall clock (fault injection for --max-clock-offset tests only).")
	_ = fs.MarkHidden(flagUnsafeClockSkew)

	// Profiling.
	fs.BoolVar(&o.enablePprof, flagEnablePprof, false, `Serve Go runtime profiles over HTTP at the client URLs + "/debug/pprof/".`)

	// Logging.
	fs.Var(o.logger, flagLogger, `Logger implementation; only "zap" is supported.`)
	fs.Var(o.logLevel, flagLogLevel, "Log level: debug, info, warn or error.")
	fs.StringSliceVar(&o.logOutputs, flagLogOutputs, []string{"stderr"}, "Comma-separated log destinations: stderr, stdout or file paths.")

	// The effective default depends on --name and on the advertised peer
	// URLs; the usage text says how, so do not print the static one.
	fs.Lookup(flagInitialCluster).DefValue = ""

	return o
}

// settings is everything a run needs, produced from flags and environment.
type settings struct {
	cfg        node.Config
	logLevel   zapcore.Level
	logOutputs []string
	// warnings are reported once the logger exists.
	warnings []string
}

// envVar returns the environment variable read for the named flag.
func envVar(flag string) string {
	return envPrefix + "_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyEnv sets every flag not given on the command line from its
// environment variable, if that is non-empty. A flag given on the command
// line wins over its variable. Variables with the prefix that match no flag
// are returned as warnings, as etcd warns about stray ETCD_ variables.
func applyEnv(fs *pflag.FlagSet, environ []string) (warnings []string, err error) {
	env := make(map[string]string)
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, envPrefix+"_") {
			env[k] = v
		}
	}
	used := make(map[string]bool)
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil {
			return
		}
		key := envVar(f.Name)
		val, ok := env[key]
		if !ok {
			return
		}
		used[key] = true
		if f.Changed {
			warnings = append(warnings, fmt.Sprintf("environment variable %s is ignored: the flag --%s is set on the command line", key, f.Name))
			return
		}
		if val == "" {
			return
		}
		if serr := f.Value.Set(val); serr != nil {
			err = usageError{fmt.Errorf("invalid value %s for environment variable %s: %w", quoteShort(val), key, serr)}
			return
		}
		f.Changed = true
	})
	if err != nil {
		return nil, err
	}
	var unknown []string
	for k := range env {
		if !used[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		warnings = append(warnings, fmt.Sprintf("unrecognized environment variable %s: it matches no flag", k))
	}
	return warnings, nil
}

// resolve applies the environment to the flags already parsed into o, fills
// in the defaults that depend on other flags, and validates the result.
func resolve(o *options, environ []string) (settings, error) {
	warnings, err := applyEnv(o.fs, environ)
	if err != nil {
		return settings{}, err
	}
	set := func(name string) bool { return o.fs.Changed(name) }

	cfg := node.DefaultConfig()
	cfg.Name = o.name
	cfg.DataDir = o.dataDir
	if !set(flagDataDir) {
		cfg.DataDir = node.DefaultDataDir(o.name)
	}
	cfg.ListenClientURLs = o.listenClientURLs.urls
	cfg.AdvertiseClientURLs = o.advertiseClientURLs.urls
	if set(flagListenClientURLs) && !set(flagAdvertiseClientURLs) {
		// etcd drops the default advertised client URL when the listen
		// URLs are given, so that a node never advertises a URL it does
		// not serve; Validate then reports the missing flag.
		cfg.AdvertiseClientURLs = nil
	}
	cfg.ListenPeerURLs = o.listenPeerURLs.urls
	cfg.InitialAdvertisePeerURLs = o.initialAdvertisePeerURLs.urls
	cfg.InitialCluster = o.initialCluster.members
	if !set(flagInitialCluster) {
		// Like etcd: the default cluster is this node alone, at its
		// advertised peer URLs.
		cfg.InitialCluster = []node.InitialMember{{Name: o.name, PeerURLs: cfg.InitialAdvertisePeerURLs}}
	}
	cfg.InitialClusterState = o.initialClusterState.val
	cfg.InitialClusterToken = o.initialClusterToken

	if cfg.HeartbeatInterval, err = millis(flagHeartbeatInterval, o.heartbeatMs); err != nil {
		return settings{}, err
	}
	if cfg.ElectionTimeout, err = millis(flagElectionTimeout, o.electionMs); err != nil {
		return settings{}, err
	}
	cfg.MaxRequestBytes = o.maxRequestBytes
	cfg.MaxTxnOps = o.maxTxnOps
	cfg.SnapshotCount = o.snapshotCount
	if cfg.SnapshotCount == 0 {
		// etcd treats 0 as "use the default".
		cfg.SnapshotCount = node.DefaultConfig().SnapshotCount
		warnings = append(warnings, fmt.Sprintf("--snapshot-count=0 replaced by the default %d", cfg.SnapshotCount))
	}
	cfg.RangeMaxBytes = o.rangeMaxBytes
	cfg.RangeSplitQPS = o.rangeSplitQPS
	cfg.LeaderBalance = o.leaderBalance
	cfg.MaxClockOffset = o.maxClockOffset
	cfg.ClosedTimestampInterval = o.closedInterval
	cfg.EnablePprof = o.enablePprof
	cfg.UnsafeClockSkew = o.unsafeClockSkew
	cfg.WatchProgressNotifyInterval = o.watchProgress

	if err := cfg.Validate(); err != nil {
		return settings{}, usageError{err}
	}
	if cfg.Name == node.DefaultConfig().Name {
		warnings = append(warnings, `running with the default --name "default"; set a unique --name for every node of a cluster`)
	}

	level, err := zapcore.ParseLevel(o.logLevel.val)
	if err != nil {
		return settings{}, usageError{fmt.Errorf("--%s: %w", flagLogLevel, err)}
	}
	outputs, err := logOutputs(o.logOutputs)
	if err != nil {
		return settings{}, usageError{err}
	}
	return settings{cfg: cfg, logLevel: level, logOutputs: outputs, warnings: warnings}, nil
}

// millis converts a millisecond flag to a duration, refusing values that
// would overflow.
func millis(flag string, ms uint) (time.Duration, error) {
	if uint64(ms) > uint64(math.MaxInt64/int64(time.Millisecond)) {
		return 0, usageError{fmt.Errorf("--%s=%d is too large", flag, ms)}
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// logOutputs checks --log-outputs and maps etcd's "default" to stderr.
func logOutputs(in []string) ([]string, error) {
	var out []string
	for _, o := range in {
		o = strings.TrimSpace(o)
		switch o {
		case "":
			return nil, errors.New("--log-outputs must not contain an empty output")
		case "default":
			o = "stderr"
		case "journal":
			return nil, errors.New(`--log-outputs=journal is not supported; use "stderr" (journald captures it under systemd)`)
		}
		if !slices.Contains(out, o) {
			out = append(out, o)
		}
	}
	if len(out) == 0 {
		out = []string{"stderr"}
	}
	return out, nil
}

// quoteShort quotes s for a message, truncating very long values.
func quoteShort(s string) string {
	const maxLen = 128
	if len(s) > maxLen {
		return strconv.Quote(s[:maxLen]) + fmt.Sprintf("...(%d bytes)", len(s))
	}
	return strconv.Quote(s)
}
