package main

import (
	"bytes"
	"fmt"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap/zapcore"

	"github.com/rangekv/rangekv/node"
)

// parse runs the root command with args and environ, capturing the
// settings instead of starting a node. ran is false when the command
// returned before starting (an error, --help, --version).
func parse(t *testing.T, args []string, environ ...string) (s settings, ran bool, code int, stdout, stderr string) {
	t.Helper()
	cmd := newRootCommand(environ, func(_ *cobra.Command, got settings) error {
		s, ran = got, true
		return nil
	})
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	code = execute(cmd, args, &errb)
	return s, ran, code, out.String(), errb.String()
}

// mustParse is parse for invocations that must succeed.
func mustParse(t *testing.T, args []string, environ ...string) settings {
	t.Helper()
	s, ran, code, _, stderr := parse(t, args, environ...)
	if code != exitOK || !ran {
		t.Fatalf("rangekv %q (env %q): exit %d, ran=%v, stderr: %s", args, environ, code, ran, stderr)
	}
	return s
}

func urls(us []url.URL) string { return (&urlsValue{urls: us}).String() }

func TestDefaultsMatchDefaultConfig(t *testing.T) {
	s := mustParse(t, nil)
	want := node.DefaultConfig()
	if got, w := fmt.Sprintf("%+v", s.cfg), fmt.Sprintf("%+v", want); got != w {
		t.Fatalf("config from no flags differs from node.DefaultConfig():\n got  %s\n want %s", got, w)
	}
	if s.logLevel != zapcore.InfoLevel {
		t.Errorf("log level = %v, want info", s.logLevel)
	}
	if strings.Join(s.logOutputs, ",") != "stderr" {
		t.Errorf("log outputs = %v, want [stderr]", s.logOutputs)
	}
	if len(s.warnings) != 1 || !strings.Contains(s.warnings[0], "default --name") {
		t.Errorf("warnings = %q, want one about the default name", s.warnings)
	}
}

func TestAllFlags(t *testing.T) {
	s := mustParse(t, []string{
		"--name", "infra2",
		"--data-dir", "/var/lib/rk",
		"--listen-client-urls", "http://127.0.0.1:22379,http://10.0.0.2:22379",
		"--advertise-client-urls", "http://10.0.0.2:22379",
		"--listen-peer-urls", "http://0.0.0.0:22380",
		"--initial-advertise-peer-urls", "http://127.0.0.1:22380",
		"--initial-cluster", "infra1=http://127.0.0.1:12380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380",
		"--initial-cluster-state", "existing",
		"--initial-cluster-token", "tok",
		"--heartbeat-interval", "50",
		"--election-timeout=600",
		"--max-request-bytes", "10485760",
		"--max-txn-ops", "1024",
		"--snapshot-count", "5",
		"--max-clock-offset", "250ms",
		"--watch-progress-notify-interval", "2s",
		"--logger", "zap",
		"--log-level", "debug",
		"--log-outputs", "stdout,/tmp/x.log,stdout",
	})
	c := s.cfg
	checks := []struct{ field, got, want string }{
		{"Name", c.Name, "infra2"},
		{"DataDir", c.DataDir, "/var/lib/rk"},
		{"ListenClientURLs", urls(c.ListenClientURLs), "http://127.0.0.1:22379,http://10.0.0.2:22379"},
		{"AdvertiseClientURLs", urls(c.AdvertiseClientURLs), "http://10.0.0.2:22379"},
		{"ListenPeerURLs", urls(c.ListenPeerURLs), "http://0.0.0.0:22380"},
		{"InitialAdvertisePeerURLs", urls(c.InitialAdvertisePeerURLs), "http://127.0.0.1:22380"},
		{"InitialCluster", node.FormatInitialCluster(c.InitialCluster), "infra1=http://127.0.0.1:12380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380"},
		{"InitialClusterState", c.InitialClusterState, "existing"},
		{"InitialClusterToken", c.InitialClusterToken, "tok"},
		{"HeartbeatInterval", c.HeartbeatInterval.String(), "50ms"},
		{"ElectionTimeout", c.ElectionTimeout.String(), "600ms"},
		{"MaxRequestBytes", fmt.Sprint(c.MaxRequestBytes), "10485760"},
		{"MaxTxnOps", fmt.Sprint(c.MaxTxnOps), "1024"},
		{"SnapshotCount", fmt.Sprint(c.SnapshotCount), "5"},
		{"MaxClockOffset", c.MaxClockOffset.String(), "250ms"},
		{"WatchProgressNotifyInterval", c.WatchProgressNotifyInterval.String(), "2s"},
		{"logLevel", s.logLevel.String(), "debug"},
		{"logOutputs", strings.Join(s.logOutputs, ","), "stdout,/tmp/x.log"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %q, want %q", ch.field, ch.got, ch.want)
		}
	}
	if len(s.warnings) != 0 {
		t.Errorf("unexpected warnings %q", s.warnings)
	}
}

func TestDerivedDefaults(t *testing.T) {
	tests := []struct {
		name        string
		args        []string
		env         []string
		dataDir     string
		cluster     string
		advertClnts string
	}{
		{
			name:    "name sets data dir and cluster",
			args:    []string{"--name", "infra1"},
			dataDir: "infra1.rangekv", cluster: "infra1=http://localhost:2380", advertClnts: "http://localhost:2379",
		},
		{
			name:    "cluster follows advertised peer urls",
			args:    []string{"--name", "n1", "--initial-advertise-peer-urls", "http://10.0.0.1:2380,http://10.0.0.2:2380", "--listen-peer-urls", "http://0.0.0.0:2380"},
			dataDir: "n1.rangekv", cluster: "n1=http://10.0.0.1:2380,n1=http://10.0.0.2:2380", advertClnts: "http://localhost:2379",
		},
		{
			name:    "default name follows advertised peer url",
			args:    []string{"--initial-advertise-peer-urls", "http://127.0.0.1:2380"},
			dataDir: "default.rangekv", cluster: "default=http://127.0.0.1:2380", advertClnts: "http://localhost:2379",
		},
		{
			name:    "explicit data dir and cluster win",
			args:    []string{"--name", "a", "--data-dir", "d", "--initial-cluster", "a=http://localhost:2380,b=http://h:2"},
			dataDir: "d", cluster: "a=http://localhost:2380,b=http://h:2", advertClnts: "http://localhost:2379",
		},
		{
			name:    "env name sets data dir",
			env:     []string{"RANGEKV_NAME=fromenv"},
			dataDir: "fromenv.rangekv", cluster: "fromenv=http://localhost:2380", advertClnts: "http://localhost:2379",
		},
		{
			name:    "env data dir counts as given",
			args:    []string{"--name", "a"},
			env:     []string{"RANGEKV_DATA_DIR=/data"},
			dataDir: "/data", cluster: "a=http://localhost:2380", advertClnts: "http://localhost:2379",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustParse(t, tt.args, tt.env...)
			if s.cfg.DataDir != tt.dataDir {
				t.Errorf("DataDir = %q, want %q", s.cfg.DataDir, tt.dataDir)
			}
			if got := node.FormatInitialCluster(s.cfg.InitialCluster); got != tt.cluster {
				t.Errorf("InitialCluster = %q, want %q", got, tt.cluster)
			}
			if got := urls(s.cfg.AdvertiseClientURLs); got != tt.advertClnts {
				t.Errorf("AdvertiseClientURLs = %q, want %q", got, tt.advertClnts)
			}
		})
	}
}

func TestEnv(t *testing.T) {
	t.Run("every flag has a variable", func(t *testing.T) {
		env := []string{
			"RANGEKV_NAME=infra3",
			"RANGEKV_DATA_DIR=/d",
			"RANGEKV_LISTEN_CLIENT_URLS=http://127.0.0.1:32379",
			"RANGEKV_ADVERTISE_CLIENT_URLS=http://127.0.0.1:32379",
			"RANGEKV_LISTEN_PEER_URLS=http://127.0.0.1:32380",
			"RANGEKV_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:32380",
			"RANGEKV_INITIAL_CLUSTER=infra3=http://127.0.0.1:32380",
			"RANGEKV_INITIAL_CLUSTER_STATE=existing",
			"RANGEKV_INITIAL_CLUSTER_TOKEN=etcd-cluster-1",
			"RANGEKV_HEARTBEAT_INTERVAL=20",
			"RANGEKV_ELECTION_TIMEOUT=200",
			"RANGEKV_MAX_REQUEST_BYTES=100",
			"RANGEKV_MAX_TXN_OPS=3",
			"RANGEKV_SNAPSHOT_COUNT=7",
			"RANGEKV_RANGE_MAX_BYTES=4096",
			"RANGEKV_RANGE_SPLIT_QPS=50.5",
			"RANGEKV_MAX_CLOCK_OFFSET=1s",
			"RANGEKV_CLOSED_TIMESTAMP_INTERVAL=40ms",
			"RANGEKV_WATCH_PROGRESS_NOTIFY_INTERVAL=1m",
			"RANGEKV_ENABLE_PPROF=true",
			"RANGEKV_LEADER_BALANCE=false",
			"RANGEKV_UNSAFE_CLOCK_SKEW=2s",
			"RANGEKV_LOGGER=zap",
			"RANGEKV_LOG_LEVEL=warn",
			"RANGEKV_LOG_OUTPUTS=stdout",
			"PATH=/bin",
		}
		s := mustParse(t, nil, env...)
		c := s.cfg
		got := fmt.Sprintf("%s %s %s %s %s %s %s %s %s %v %v %d %d %d %d %v %v %v %v %v %v %v %v %v",
			c.Name, c.DataDir, urls(c.ListenClientURLs), urls(c.AdvertiseClientURLs), urls(c.ListenPeerURLs),
			urls(c.InitialAdvertisePeerURLs), node.FormatInitialCluster(c.InitialCluster), c.InitialClusterState,
			c.InitialClusterToken, c.HeartbeatInterval, c.ElectionTimeout, c.MaxRequestBytes, c.MaxTxnOps,
			c.SnapshotCount, c.RangeMaxBytes, c.RangeSplitQPS, c.MaxClockOffset, c.WatchProgressNotifyInterval, c.EnablePprof, c.UnsafeClockSkew, c.LeaderBalance, s.logLevel, s.logOutputs, c.ClosedTimestampInterval)
		want := "infra3 /d http://127.0.0.1:32379 http://127.0.0.1:32379 http://127.0.0.1:32380 http://127.0.0.1:32380 " +
			"infra3=http://127.0.0.1:32380 existing etcd-cluster-1 20ms 200ms 100 3 7 4096 50.5 1s 1m0s true 2s false warn [stdout] 40ms"
		if got != want {
			t.Fatalf("config from env:\n got  %s\n want %s", got, want)
		}
		if len(s.warnings) != 0 {
			t.Fatalf("unexpected warnings %q", s.warnings)
		}
		// The environment is checked against the flag list, so every
		// server flag must have been covered above.
		o := newOptions()
		seen := strings.Join(env, "\n")
		o.fs.VisitAll(func(f *pflag.Flag) {
			if !strings.Contains(seen, envVar(f.Name)+"=") {
				t.Errorf("flag --%s not covered by this test", f.Name)
			}
		})
	})

	t.Run("flag wins over env", func(t *testing.T) {
		s := mustParse(t, []string{"--name", "flag", "--election-timeout", "2000"},
			"RANGEKV_NAME=env", "RANGEKV_ELECTION_TIMEOUT=3000", "RANGEKV_MAX_TXN_OPS=9")
		if s.cfg.Name != "flag" || s.cfg.ElectionTimeout != 2*time.Second {
			t.Fatalf("name=%q election=%v; flags must win", s.cfg.Name, s.cfg.ElectionTimeout)
		}
		if s.cfg.MaxTxnOps != 9 {
			t.Fatalf("MaxTxnOps = %d, want 9 from env", s.cfg.MaxTxnOps)
		}
		if w := strings.Join(s.warnings, "\n"); !strings.Contains(w, "RANGEKV_NAME is ignored") || !strings.Contains(w, "RANGEKV_ELECTION_TIMEOUT is ignored") {
			t.Fatalf("warnings %q must mention the shadowed variables", s.warnings)
		}
	})

	t.Run("empty env value ignored", func(t *testing.T) {
		s := mustParse(t, []string{"--name", "a"}, "RANGEKV_LISTEN_CLIENT_URLS=", "RANGEKV_MAX_TXN_OPS=")
		if urls(s.cfg.ListenClientURLs) != "http://localhost:2379" || s.cfg.MaxTxnOps != 128 {
			t.Fatalf("empty variables must leave defaults: %+v", s.cfg)
		}
	})

	t.Run("unknown variables warn", func(t *testing.T) {
		s := mustParse(t, []string{"--name", "a"}, "RANGEKV_LISTEN_CLIENT_URL=http://x:1", "RANGEKV_VERSION=1", "RANGEKVX=1", "OTHER_NAME=b")
		w := strings.Join(s.warnings, "\n")
		for _, want := range []string{"RANGEKV_LISTEN_CLIENT_URL:", "RANGEKV_VERSION:"} {
			if !strings.Contains(w, "unrecognized environment variable "+want) {
				t.Errorf("warnings %q lack %s", s.warnings, want)
			}
		}
		if strings.Contains(w, "RANGEKVX") || strings.Contains(w, "OTHER_NAME") {
			t.Errorf("warnings %q mention variables without the RANGEKV_ prefix", s.warnings)
		}
	})
}

func TestBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  []string
		want string // substring of the one-line error
	}{
		{name: "positional arg", args: []string{"start"}, want: `unexpected argument "start"`},
		{name: "arg after flags", args: []string{"--name", "a", "extra"}, want: `unexpected argument "extra"`},
		{name: "unknown flag", args: []string{"--nmae", "a"}, want: "unknown flag: --nmae"},
		{name: "missing value", args: []string{"--name"}, want: "flag needs an argument: --name"},
		{name: "heartbeat not a number", args: []string{"--heartbeat-interval", "100ms"}, want: `invalid value "100ms" for --heartbeat-interval`},
		{name: "negative heartbeat", args: []string{"--heartbeat-interval", "-1"}, want: "--heartbeat-interval"},
		{name: "zero heartbeat", args: []string{"--heartbeat-interval", "0"}, want: "--heartbeat-interval must be >0"},
		{name: "huge heartbeat", args: []string{"--heartbeat-interval", "18446744073709551615"}, want: "--heartbeat-interval=18446744073709551615 is too large"},
		{name: "election under 5x", args: []string{"--election-timeout", "400"}, want: "should be at least as 5 times as --heartbeat-interval"},
		{name: "election too long", args: []string{"--heartbeat-interval", "1000", "--election-timeout", "60000"}, want: "is too long"},
		{name: "bad duration", args: []string{"--max-clock-offset", "500"}, want: `invalid value "500" for --max-clock-offset`},
		{name: "zero clock offset", args: []string{"--max-clock-offset", "0s"}, want: "--max-clock-offset must be >0"},
		{name: "negative closed timestamp interval", args: []string{"--closed-timestamp-interval", "-1s"}, want: "--closed-timestamp-interval must be >=0"},
		{name: "negative progress interval", args: []string{"--watch-progress-notify-interval", "-1s"}, want: "--watch-progress-notify-interval must be >0"},
		{name: "zero request bytes", args: []string{"--max-request-bytes", "0"}, want: "--max-request-bytes must be >0"},
		{name: "negative txn ops", args: []string{"--max-txn-ops", "-5"}, want: "--max-txn-ops must be >0"},
		{name: "https", args: []string{"--listen-client-urls", "https://127.0.0.1:2379", "--advertise-client-urls", "https://127.0.0.1:2379"}, want: "TLS is not supported yet"},
		{name: "url without port", args: []string{"--listen-peer-urls", "http://127.0.0.1"}, want: `"host:port"`},
		{name: "url without scheme", args: []string{"--advertise-client-urls", "127.0.0.1:2379"}, want: "URL scheme must be http"},
		{name: "listen on hostname", args: []string{"--listen-client-urls", "http://example.com:2379", "--advertise-client-urls", "http://example.com:2379"}, want: "expected IP in URL for binding"},
		{name: "listen without advertise", args: []string{"--listen-client-urls", "http://0.0.0.0:2379"}, want: "--advertise-client-urls is required when --listen-client-urls is set explicitly"},
		{name: "unknown state", args: []string{"--initial-cluster-state", "old"}, want: `invalid value "old" for --initial-cluster-state: valid values are "new" or "existing"`},
		{name: "unknown log level", args: []string{"--log-level", "trace"}, want: "--log-level"},
		{name: "fatal log level", args: []string{"--log-level", "fatal"}, want: "--log-level"},
		{name: "other logger", args: []string{"--logger", "capnslog"}, want: `valid values are "zap"`},
		{name: "journal output", args: []string{"--log-outputs", "journal"}, want: "journal is not supported"},
		{name: "empty output", args: []string{"--log-outputs", "stderr,,stdout"}, want: "empty output"},
		{name: "malformed cluster", args: []string{"--initial-cluster", "infra1"}, want: "want name=URL"},
		{name: "cluster lacks name", args: []string{"--name", "infra9", "--initial-cluster", "infra1=http://localhost:2380"}, want: `couldn't find local name "infra9"`},
		{name: "cluster mismatch", args: []string{"--name", "a", "--initial-cluster", "a=http://127.0.0.1:2380"}, want: "--initial-cluster has a=http://127.0.0.1:2380 but missing from --initial-advertise-peer-urls=http://localhost:2380"},
		{name: "duplicate peer url", args: []string{"--initial-cluster", "default=http://localhost:2380,b=http://localhost:2380"}, want: "duplicate url"},
		{name: "empty name", args: []string{"--name", ""}, want: "invalid --name"},
		{name: "empty data dir", args: []string{"--data-dir", ""}, want: "--data-dir must not be empty"},
		{name: "huge value", args: []string{"--listen-peer-urls", strings.Repeat("x", 1<<20)}, want: "URL scheme must be http"},

		{name: "malformed env int", env: []string{"RANGEKV_MAX_TXN_OPS=many"}, want: `invalid value "many" for environment variable RANGEKV_MAX_TXN_OPS`},
		{name: "malformed env duration", env: []string{"RANGEKV_MAX_CLOCK_OFFSET=5"}, want: "RANGEKV_MAX_CLOCK_OFFSET"},
		{name: "malformed env url", env: []string{"RANGEKV_LISTEN_PEER_URLS=https://127.0.0.1:2380"}, want: "RANGEKV_LISTEN_PEER_URLS: TLS is not supported yet"},
		{name: "malformed env state", env: []string{"RANGEKV_INITIAL_CLUSTER_STATE=bogus"}, want: "RANGEKV_INITIAL_CLUSTER_STATE"},
		{name: "malformed env cluster", env: []string{"RANGEKV_INITIAL_CLUSTER=a=b"}, want: "RANGEKV_INITIAL_CLUSTER"},
		{name: "huge env value", env: []string{"RANGEKV_HEARTBEAT_INTERVAL=" + strings.Repeat("9", 1<<16)}, want: "RANGEKV_HEARTBEAT_INTERVAL"},
		{name: "env valid but inconsistent", env: []string{"RANGEKV_ELECTION_TIMEOUT=100"}, want: "should be at least as 5 times"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, ran, code, _, stderr := parse(t, tt.args, tt.env...)
			if ran {
				t.Fatal("node would have started")
			}
			if code != exitUsage {
				t.Errorf("exit code %d, want %d", code, exitUsage)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr %q does not contain %q", stderr, tt.want)
			}
			if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "rangekv: ") {
				t.Errorf("error must be one line starting with \"rangekv: \", got %q", stderr)
			}
			if len(stderr) > 1200 {
				t.Errorf("error is %d bytes; long input must be truncated", len(stderr))
			}
		})
	}
}

func TestRunError(t *testing.T) {
	cmd := newRootCommand(nil, func(*cobra.Command, settings) error {
		return fmt.Errorf("failed to start node: disk\non fire")
	})
	var errb bytes.Buffer
	cmd.SetErr(&errb)
	if code := execute(cmd, nil, &errb); code != exitError {
		t.Fatalf("exit code %d, want %d", code, exitError)
	}
	if got := errb.String(); got != "rangekv: failed to start node: disk on fire\n" {
		t.Fatalf("stderr = %q", got)
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}, {"--name", "x", "--version"}} {
		_, ran, code, stdout, stderr := parse(t, args, "RANGEKV_HEARTBEAT_INTERVAL=bad")
		if ran || code != exitOK {
			t.Fatalf("%q: ran=%v code=%d stderr=%s", args, ran, code, stderr)
		}
		for _, want := range []string{
			"rangekv Version: " + Version + "\n",
			"etcd API Version: 3.7.0\n",
			"Go Version: " + runtime.Version() + "\n",
			"Go OS/Arch: " + runtime.GOOS + "/" + runtime.GOARCH + "\n",
		} {
			if !strings.Contains(stdout, want) {
				t.Errorf("%q: output %q lacks %q", args, stdout, want)
			}
		}
	}
	if _, _, code, _, _ := parse(t, []string{"version", "extra"}); code != exitUsage {
		t.Errorf("version with an argument: exit %d, want %d", code, exitUsage)
	}
}

func TestHelp(t *testing.T) {
	_, ran, code, stdout, _ := parse(t, []string{"--help"})
	if ran || code != exitOK {
		t.Fatalf("ran=%v code=%d", ran, code)
	}
	for _, want := range []string{
		"etcd v3 API", "RANGEKV_LISTEN_CLIENT_URLS", "TLS is not supported yet",
		"--initial-cluster 'infra1=http://127.0.0.1:12380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380'",
		"--listen-client-urls urls", `(default "${name}.rangekv")`, "(default http://localhost:2379)",
		"--heartbeat-interval uint", "(default 100)", "(default 500ms)", "(default 10m0s)", `(default "etcd-cluster")`,
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	if strings.Contains(stdout, "completion") {
		t.Error("--help lists a completion command")
	}
}
