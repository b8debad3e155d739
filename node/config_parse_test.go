package node

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestParseURLs(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr string // substring; "" means success
	}{
		{name: "one", in: "http://127.0.0.1:2379", want: []string{"http://127.0.0.1:2379"}},
		{name: "several in order", in: "http://b:2,http://a:1", want: []string{"http://b:2", "http://a:1"}},
		{name: "spaces trimmed", in: " http://a:1 , http://b:2 ", want: []string{"http://a:1", "http://b:2"}},
		{name: "duplicates dropped", in: "http://a:1,http://a:1,http://b:2", want: []string{"http://a:1", "http://b:2"}},
		{name: "ipv6", in: "http://[::1]:2379", want: []string{"http://[::1]:2379"}},
		{name: "bind all empty host", in: "http://:2379", want: []string{"http://:2379"}},
		{name: "port zero", in: "http://127.0.0.1:0", want: []string{"http://127.0.0.1:0"}},
		{name: "localhost", in: "http://localhost:2380", want: []string{"http://localhost:2380"}},

		{name: "empty", in: "", wantErr: "no URLs given"},
		{name: "blank", in: "  ", wantErr: "no URLs given"},
		{name: "empty element", in: "http://a:1,,http://b:2", wantErr: "empty URL"},
		{name: "trailing comma", in: "http://a:1,", wantErr: "empty URL"},
		{name: "https", in: "https://a:1", wantErr: "TLS is not supported yet"},
		{name: "https among http", in: "http://a:1,https://b:2", wantErr: "TLS is not supported yet"},
		{name: "unix", in: "unix://localhost:1", wantErr: "unix socket URLs are not supported"},
		{name: "no scheme", in: "127.0.0.1:2379", wantErr: "URL scheme must be http"},
		{name: "bare host", in: "localhost", wantErr: "URL scheme must be http"},
		{name: "other scheme", in: "ftp://a:1", wantErr: "URL scheme must be http"},
		{name: "missing port", in: "http://127.0.0.1", wantErr: `does not have the form "host:port"`},
		{name: "missing port colon", in: "http://127.0.0.1:", wantErr: "port must be a number"},
		{name: "named port", in: "http://a:http", wantErr: "invalid port"},
		{name: "port too big", in: "http://a:65536", wantErr: "port must be a number"},
		{name: "negative port", in: "http://a:-1", wantErr: "invalid port"},
		{name: "opaque", in: "http:a:1", wantErr: "want http://host:port"},
		{name: "no host", in: "http://", wantErr: `does not have the form "host:port"`},
		{name: "path", in: "http://a:1/v3", wantErr: "must not contain a path"},
		{name: "slash", in: "http://a:1/", wantErr: "must not contain a path"},
		{name: "query", in: "http://a:1?x=y", wantErr: "query or fragment"},
		{name: "fragment", in: "http://a:1#f", wantErr: "query or fragment"},
		{name: "user info", in: "http://u:p@a:1", wantErr: "user info"},
		{name: "control char", in: "http://a:1\x00", wantErr: "invalid URL"},
		{name: "garbage", in: "%%%", wantErr: "URL scheme must be http"},
		{name: "bad escape", in: "http://a:1%zz", wantErr: "invalid URL"},
		{name: "ipv6 unbracketed", in: "http://::1:2379", wantErr: "invalid URL"},
		{name: "leading zero port ok length", in: "http://a:99999", wantErr: "port must be a number"},
		{name: "huge", in: "http://" + strings.Repeat("a", 1<<20), wantErr: `does not have the form "host:port"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseURLs(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseURLs(%q) = %v, want error containing %q", tt.in, got, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseURLs(%q) error = %q, want it to contain %q", tt.in, err, tt.wantErr)
				}
				if len(err.Error()) > 400 {
					t.Fatalf("error message is %d bytes; hostile input must be truncated", len(err.Error()))
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseURLs(%q): %v", tt.in, err)
			}
			if s := configTestURLStrings(got); strings.Join(s, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("ParseURLs(%q) = %v, want %v", tt.in, s, tt.want)
			}
		})
	}
}

func TestParseInitialCluster(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string // FormatInitialCluster of the result
		members int
		wantErr string
	}{
		{name: "single", in: "default=http://localhost:2380", want: "default=http://localhost:2380", members: 1},
		{
			name:    "three",
			in:      "infra1=http://127.0.0.1:12380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380",
			want:    "infra1=http://127.0.0.1:12380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380",
			members: 3,
		},
		{
			name:    "repeated name gives several URLs",
			in:      "a=http://h1:1,b=http://h2:2,a=http://h1:3",
			want:    "a=http://h1:1,a=http://h1:3,b=http://h2:2",
			members: 2,
		},
		{name: "empty entries skipped", in: ",a=http://h:1,,", want: "a=http://h:1", members: 1},
		{name: "spaces trimmed", in: " a = http://h:1 , b=http://h:2", want: "a=http://h:1,b=http://h:2", members: 2},
		{name: "empty string", in: "", want: "", members: 0},

		{name: "missing equals", in: "a=http://h:1,http://h:2", wantErr: "want name=URL"},
		{name: "only name", in: "infra1", wantErr: "want name=URL"},
		{name: "empty name", in: "=http://h:1", wantErr: "empty name"},
		{name: "name with space", in: "a b=http://h:1", wantErr: "must not contain"},
		{name: "name with control char", in: "a\x01=http://h:1", wantErr: "must not contain"},
		{name: "empty URL", in: "a=", wantErr: "empty URL"},
		{name: "missing port", in: "a=http://h", wantErr: `"host:port"`},
		{name: "https", in: "a=https://h:1", wantErr: "TLS is not supported yet"},
		{name: "double equals", in: "a=b=http://h:1", wantErr: "invalid URL"},
		{name: "path", in: "a=http://h:1/x", wantErr: "must not contain a path"},
		{name: "duplicate url same name", in: "a=http://h:1,a=http://h:1", wantErr: "duplicate url"},
		{name: "duplicate url other names", in: "a=http://h:1,b=http://h:1", wantErr: "duplicate url"},
		{name: "garbage", in: "\x00\xff=%zz", wantErr: "must not contain"},
		{name: "huge name", in: strings.Repeat("n", 1<<20) + "=http://h", wantErr: `"host:port"`},
		{name: "huge list", in: strings.Repeat("a=http://h:1,", 10000), wantErr: "duplicate url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseInitialCluster(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseInitialCluster(%q) = %v, want error containing %q", configTestShort(tt.in), got, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseInitialCluster(%q) error = %q, want it to contain %q", configTestShort(tt.in), err, tt.wantErr)
				}
				if len(err.Error()) > 600 {
					t.Fatalf("error message is %d bytes; hostile input must be truncated", len(err.Error()))
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseInitialCluster(%q): %v", tt.in, err)
			}
			if len(got) != tt.members {
				t.Fatalf("got %d members, want %d: %v", len(got), tt.members, got)
			}
			if s := FormatInitialCluster(got); s != tt.want {
				t.Fatalf("ParseInitialCluster(%q) = %q, want %q", tt.in, s, tt.want)
			}
		})
	}
}

func TestFormatInitialClusterRoundTrip(t *testing.T) {
	in := "infra1=http://127.0.0.1:12380,infra1=http://10.0.0.1:12380,infra2=http://127.0.0.1:22380"
	m, err := ParseInitialCluster(in)
	if err != nil {
		t.Fatal(err)
	}
	if got := FormatInitialCluster(m); got != in {
		t.Fatalf("round trip: got %q, want %q", got, in)
	}
}

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate(): %v", err)
	}
	checks := []struct {
		field string
		got   any
		want  any
	}{
		{"Name", c.Name, "default"},
		{"DataDir", c.DataDir, "default.rangekv"},
		{"ListenClientURLs", configTestURLStrings(c.ListenClientURLs), []string{"http://localhost:2379"}},
		{"AdvertiseClientURLs", configTestURLStrings(c.AdvertiseClientURLs), []string{"http://localhost:2379"}},
		{"ListenPeerURLs", configTestURLStrings(c.ListenPeerURLs), []string{"http://localhost:2380"}},
		{"InitialAdvertisePeerURLs", configTestURLStrings(c.InitialAdvertisePeerURLs), []string{"http://localhost:2380"}},
		{"InitialCluster", FormatInitialCluster(c.InitialCluster), "default=http://localhost:2380"},
		{"InitialClusterState", c.InitialClusterState, "new"},
		{"InitialClusterToken", c.InitialClusterToken, "etcd-cluster"},
		{"HeartbeatInterval", c.HeartbeatInterval, 100 * time.Millisecond},
		{"ElectionTimeout", c.ElectionTimeout, time.Second},
		{"MaxRequestBytes", c.MaxRequestBytes, 1572864},
		{"MaxTxnOps", c.MaxTxnOps, 128},
		{"SnapshotCount", c.SnapshotCount, uint64(10000)},
		{"MaxClockOffset", c.MaxClockOffset, 500 * time.Millisecond},
		{"WatchProgressNotifyInterval", c.WatchProgressNotifyInterval, 10 * time.Minute},
	}
	for _, ch := range checks {
		if gs, ws := fmt.Sprint(ch.got), fmt.Sprint(ch.want); gs != ws {
			t.Errorf("%s = %s, want %s", ch.field, gs, ws)
		}
	}
	// Each call returns fresh slices.
	d := DefaultConfig()
	d.ListenClientURLs[0].Host = "changed:1"
	if DefaultConfig().ListenClientURLs[0].Host != "localhost:2379" {
		t.Fatal("DefaultConfig shares slices between calls")
	}
	if DefaultDataDir("infra1") != "infra1.rangekv" {
		t.Fatalf("DefaultDataDir(infra1) = %q", DefaultDataDir("infra1"))
	}
}

func TestValidate(t *testing.T) {
	mustURLs := func(s string) []url.URL {
		us, err := ParseURLs(s)
		if err != nil {
			t.Fatal(err)
		}
		return us
	}
	mustCluster := func(s string) []InitialMember {
		m, err := ParseInitialCluster(s)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	tests := []struct {
		name    string
		mod     func(c *Config)
		wantErr string
	}{
		{name: "default ok", mod: func(c *Config) {}},
		{name: "three node member ok", mod: func(c *Config) {
			c.Name = "infra2"
			c.InitialAdvertisePeerURLs = mustURLs("http://127.0.0.1:22380")
			c.InitialCluster = mustCluster("infra1=http://127.0.0.1:12380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380")
		}},
		{name: "several peer urls ok", mod: func(c *Config) {
			c.InitialAdvertisePeerURLs = mustURLs("http://10.0.0.1:2380,http://localhost:2380")
			c.InitialCluster = mustCluster("default=http://localhost:2380,default=http://10.0.0.1:2380")
		}},
		{name: "existing ok without advertise match", mod: func(c *Config) {
			c.InitialClusterState = "existing"
			c.InitialAdvertisePeerURLs = mustURLs("http://10.0.0.9:2380")
		}},
		{name: "bind ipv4 any", mod: func(c *Config) { c.ListenClientURLs = mustURLs("http://0.0.0.0:2379") }},
		{name: "election exactly 5x", mod: func(c *Config) { c.ElectionTimeout = 500 * time.Millisecond }},

		{name: "empty name", mod: func(c *Config) { c.Name = "" }, wantErr: "invalid --name"},
		{name: "name with comma", mod: func(c *Config) { c.Name = "a,b" }, wantErr: "invalid --name"},
		{name: "empty data dir", mod: func(c *Config) { c.DataDir = "" }, wantErr: "--data-dir must not be empty"},
		{name: "blank data dir", mod: func(c *Config) { c.DataDir = "  " }, wantErr: "--data-dir must not be empty"},
		{name: "no listen client", mod: func(c *Config) { c.ListenClientURLs = nil }, wantErr: "--listen-client-urls must not be empty"},
		{name: "no listen peer", mod: func(c *Config) { c.ListenPeerURLs = nil }, wantErr: "--listen-peer-urls must not be empty"},
		{name: "bind to hostname", mod: func(c *Config) { c.ListenPeerURLs = mustURLs("http://example.com:2380") }, wantErr: "expected IP in URL for binding"},
		{name: "bind empty host", mod: func(c *Config) { c.ListenClientURLs = mustURLs("http://:2379") }, wantErr: "expected IP in URL for binding"},
		{name: "hand-built https", mod: func(c *Config) {
			c.ListenClientURLs = []url.URL{{Scheme: "https", Host: "127.0.0.1:2379"}}
		}, wantErr: "TLS is not supported yet"},
		{name: "hand-built no port", mod: func(c *Config) {
			c.AdvertiseClientURLs = []url.URL{{Scheme: "http", Host: "a"}}
		}, wantErr: "host:port"},
		{name: "advertise client empty host", mod: func(c *Config) { c.AdvertiseClientURLs = mustURLs("http://:2379") }, wantErr: `--advertise-client-urls "http://:2379" must be in the format "host:port"`},
		{name: "advertise peer empty host", mod: func(c *Config) { c.InitialAdvertisePeerURLs = mustURLs("http://:2380") }, wantErr: `--initial-advertise-peer-urls "http://:2380" must be "host:port"`},
		{name: "advertise port zero", mod: func(c *Config) { c.AdvertiseClientURLs = mustURLs("http://a:0") }, wantErr: "port 0"},
		{name: "no advertise client", mod: func(c *Config) { c.AdvertiseClientURLs = nil }, wantErr: "--advertise-client-urls is required when --listen-client-urls is set explicitly"},
		{name: "no advertise peer", mod: func(c *Config) { c.InitialAdvertisePeerURLs = nil }, wantErr: "--initial-advertise-peer-urls must not be empty"},
		{name: "unknown state", mod: func(c *Config) { c.InitialClusterState = "old" }, wantErr: `unexpected clusterState "old"`},
		{name: "empty state", mod: func(c *Config) { c.InitialClusterState = "" }, wantErr: `unexpected clusterState ""`},
		{name: "state wrong case", mod: func(c *Config) { c.InitialClusterState = "New" }, wantErr: "unexpected clusterState"},
		{name: "zero heartbeat", mod: func(c *Config) { c.HeartbeatInterval = 0 }, wantErr: "--heartbeat-interval must be >0 (set to 0ms)"},
		{name: "negative heartbeat", mod: func(c *Config) { c.HeartbeatInterval = -time.Second }, wantErr: "--heartbeat-interval must be >0"},
		{name: "zero election", mod: func(c *Config) { c.ElectionTimeout = 0 }, wantErr: "--election-timeout must be >0 (set to 0ms)"},
		{name: "election under 5x", mod: func(c *Config) { c.ElectionTimeout = 499 * time.Millisecond }, wantErr: "--election-timeout[499ms] should be at least as 5 times as --heartbeat-interval[100ms]"},
		{name: "huge heartbeat", mod: func(c *Config) { c.HeartbeatInterval = time.Duration(1<<62 + 1) }, wantErr: "should be at least as 5 times"},
		{name: "election too long", mod: func(c *Config) { c.ElectionTimeout = 50001 * time.Millisecond }, wantErr: "--election-timeout[50001ms] is too long, and should be set less than 50000ms"},
		{name: "zero request bytes", mod: func(c *Config) { c.MaxRequestBytes = 0 }, wantErr: "--max-request-bytes must be >0"},
		{name: "negative request bytes", mod: func(c *Config) { c.MaxRequestBytes = -1 }, wantErr: "--max-request-bytes must be >0 (set to -1)"},
		{name: "zero txn ops", mod: func(c *Config) { c.MaxTxnOps = 0 }, wantErr: "--max-txn-ops must be >0"},
		{name: "zero snapshot count", mod: func(c *Config) { c.SnapshotCount = 0 }, wantErr: "--snapshot-count must be >0"},
		{name: "zero clock offset", mod: func(c *Config) { c.MaxClockOffset = 0 }, wantErr: "--max-clock-offset must be >0"},
		{name: "zero progress interval", mod: func(c *Config) { c.WatchProgressNotifyInterval = 0 }, wantErr: "--watch-progress-notify-interval must be >0"},

		{name: "name not in cluster", mod: func(c *Config) { c.Name = "infra9" }, wantErr: `couldn't find local name "infra9" in the initial cluster configuration`},
		{name: "empty cluster", mod: func(c *Config) { c.InitialCluster = nil }, wantErr: "couldn't find local name"},
		{name: "cluster url not advertised", mod: func(c *Config) {
			c.InitialAdvertisePeerURLs = mustURLs("http://127.0.0.1:2380")
		}, wantErr: "--initial-cluster has default=http://localhost:2380 but missing from --initial-advertise-peer-urls=http://127.0.0.1:2380"},
		{name: "advertised url not in cluster", mod: func(c *Config) {
			c.InitialAdvertisePeerURLs = mustURLs("http://localhost:2380,http://127.0.0.1:2380")
		}, wantErr: "--initial-advertise-peer-urls has http://127.0.0.1:2380 but missing from --initial-cluster=default=http://127.0.0.1:2380,default=http://localhost:2380"},
		{name: "duplicate member entries", mod: func(c *Config) {
			c.InitialCluster = append(c.InitialCluster, InitialMember{Name: "default", PeerURLs: mustURLs("http://h:1")})
		}, wantErr: `lists member "default" twice`},
		{name: "duplicate url across members", mod: func(c *Config) {
			c.InitialCluster = append(c.InitialCluster, InitialMember{Name: "other", PeerURLs: mustURLs("http://localhost:2380")})
		}, wantErr: "has duplicate url"},
		{name: "member without urls", mod: func(c *Config) {
			c.InitialCluster = append(c.InitialCluster, InitialMember{Name: "other"})
		}, wantErr: `member "other" has no peer URLs`},
		{name: "member with bad name", mod: func(c *Config) {
			c.InitialCluster = append(c.InitialCluster, InitialMember{Name: "a=b", PeerURLs: mustURLs("http://h:1")})
		}, wantErr: "invalid --initial-cluster"},
		{name: "member empty host", mod: func(c *Config) {
			c.InitialCluster = append(c.InitialCluster, InitialMember{Name: "o", PeerURLs: mustURLs("http://:1")})
		}, wantErr: "unexpected empty host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mod(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate succeeded, want error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate error = %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func FuzzParseInitialCluster(f *testing.F) {
	for _, s := range []string{
		"default=http://localhost:2380",
		"a=http://h:1,a=http://h:2,b=http://[::1]:3",
		",,=,a=,=b",
		"a=https://h:1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseInitialCluster(s)
		if err != nil {
			return
		}
		// Whatever parses must round-trip.
		again, err := ParseInitialCluster(FormatInitialCluster(m))
		if err != nil {
			t.Fatalf("re-parse of %q: %v", FormatInitialCluster(m), err)
		}
		if FormatInitialCluster(again) != FormatInitialCluster(m) {
			t.Fatalf("round trip changed %q to %q", FormatInitialCluster(m), FormatInitialCluster(again))
		}
	})
}

func configTestURLStrings(us []url.URL) []string {
	out := make([]string, len(us))
	for i := range us {
		out[i] = us[i].String()
	}
	return out
}

func configTestShort(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
