package node

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Defaults follow etcd's (embed.NewConfig) except where rangekv's names
// differ: the data directory is "${name}.rangekv" instead of "${name}.etcd".
const (
	cfgDefaultName                     = "default"
	cfgDataDirSuffix                   = ".rangekv"
	cfgDefaultListenClientURLs         = "http://localhost:2379"
	cfgDefaultAdvertiseClientURLs      = "http://localhost:2379"
	cfgDefaultListenPeerURLs           = "http://localhost:2380"
	cfgDefaultAdvertisePeerURLs        = "http://localhost:2380"
	cfgClusterStateNew                 = "new"
	cfgClusterStateExisting            = "existing"
	cfgDefaultInitialClusterToken      = "etcd-cluster"
	cfgDefaultHeartbeatInterval        = 100 * time.Millisecond
	cfgDefaultElectionTimeout          = 1000 * time.Millisecond
	cfgMaxElectionTimeout              = 50000 * time.Millisecond // etcd's limit
	cfgDefaultMaxRequestBytes          = 1572864                  // 1.5 MiB
	cfgDefaultMaxTxnOps                = 128
	cfgDefaultSnapshotCount            = 10000
	cfgDefaultMaxClockOffset           = 500 * time.Millisecond
	cfgDefaultClosedTimestampInterval  = 20 * time.Millisecond
	cfgDefaultWatchProgressNotifyIntvl = 10 * time.Minute
)

// errUnsetAdvertiseClientURLs is returned by Validate when client URLs are
// listened on but none are advertised (etcd's message).
var errUnsetAdvertiseClientURLs = errors.New("--advertise-client-urls is required when --listen-client-urls is set explicitly")

// DefaultConfig returns the configuration of a single-node cluster named
// "default" with etcd's defaults: client URL http://localhost:2379, peer URL
// http://localhost:2380, data directory "default.rangekv".
func DefaultConfig() Config {
	return Config{
		Name:                        cfgDefaultName,
		DataDir:                     DefaultDataDir(cfgDefaultName),
		ListenClientURLs:            mustParseConfigURLs(cfgDefaultListenClientURLs),
		AdvertiseClientURLs:         mustParseConfigURLs(cfgDefaultAdvertiseClientURLs),
		ListenPeerURLs:              mustParseConfigURLs(cfgDefaultListenPeerURLs),
		InitialAdvertisePeerURLs:    mustParseConfigURLs(cfgDefaultAdvertisePeerURLs),
		InitialCluster:              []InitialMember{{Name: cfgDefaultName, PeerURLs: mustParseConfigURLs(cfgDefaultAdvertisePeerURLs)}},
		InitialClusterState:         cfgClusterStateNew,
		InitialClusterToken:         cfgDefaultInitialClusterToken,
		HeartbeatInterval:           cfgDefaultHeartbeatInterval,
		ElectionTimeout:             cfgDefaultElectionTimeout,
		MaxRequestBytes:             cfgDefaultMaxRequestBytes,
		MaxTxnOps:                   cfgDefaultMaxTxnOps,
		SnapshotCount:               cfgDefaultSnapshotCount,
		RangeMaxBytes:               64 << 20,
		RangeSplitQPS:               2500,
		LeaderBalance:               true,
		MaxClockOffset:              cfgDefaultMaxClockOffset,
		ClosedTimestampInterval:     cfgDefaultClosedTimestampInterval,
		WatchProgressNotifyInterval: cfgDefaultWatchProgressNotifyIntvl,
	}
}

func mustParseConfigURLs(s string) []url.URL {
	us, err := ParseURLs(s)
	if err != nil {
		panic(err)
	}
	return us
}

// ParseURLs parses a comma-separated list of URLs as given to the
// --*-urls flags. Surrounding spaces are ignored and duplicates are dropped
// (etcd keeps URL flags unique); order is otherwise preserved. Every URL must
// have the form http://host:port with no path, query, fragment or user
// info; the host may be empty (bind all) but the port may not. https is
// rejected because TLS is not supported yet.
func ParseURLs(s string) ([]url.URL, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("no URLs given")
	}
	var out []url.URL
	seen := make(map[string]bool)
	for part := range strings.SplitSeq(s, ",") {
		u, err := parseConfigURL(part)
		if err != nil {
			return nil, err
		}
		if key := u.String(); !seen[key] {
			seen[key] = true
			out = append(out, *u)
		}
	}
	return out, nil
}

// parseConfigURL parses and checks one URL of a URL list.
func parseConfigURL(in string) (*url.URL, error) {
	in = strings.TrimSpace(in)
	if in == "" {
		return nil, errors.New("empty URL in list")
	}
	q := quoteForConfigError(in)
	if !strings.Contains(in, "://") {
		// A common mistake is "host:port" without a scheme, which url.Parse
		// misreads; say what is wanted instead.
		return nil, fmt.Errorf("URL scheme must be http: %s (want http://host:port)", q)
	}
	u, err := url.Parse(in)
	if err != nil {
		return nil, fmt.Errorf("invalid URL %s: %w", q, urlErrorCause(err))
	}
	switch u.Scheme {
	case "http":
	case "https":
		return nil, fmt.Errorf("TLS is not supported yet: %s (use http://)", q)
	case "unix", "unixs":
		return nil, fmt.Errorf("unix socket URLs are not supported: %s", q)
	default:
		return nil, fmt.Errorf("URL scheme must be http: %s", q)
	}
	if u.Opaque != "" || u.Host == "" {
		return nil, fmt.Errorf("URL address does not have the form \"host:port\": %s", q)
	}
	if u.User != nil {
		return nil, fmt.Errorf("URL must not contain user info: %s", q)
	}
	if u.Path != "" || u.RawPath != "" {
		return nil, fmt.Errorf("URL must not contain a path: %s", q)
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return nil, fmt.Errorf("URL must not contain a query or fragment: %s", q)
	}
	_, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return nil, fmt.Errorf("URL address does not have the form \"host:port\": %s", q)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return nil, fmt.Errorf("URL port must be a number from 0 to 65535: %s", q)
	}
	return u, nil
}

// urlErrorCause drops the *url.Error wrapper, whose message repeats the
// (possibly huge) input.
func urlErrorCause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// quoteForConfigError quotes s for an error message, truncating very long input so a
// hostile flag value cannot flood the log.
func quoteForConfigError(s string) string {
	const maxLen = 128
	if len(s) > maxLen {
		return strconv.Quote(s[:maxLen]) + fmt.Sprintf("...(%d bytes)", len(s))
	}
	return strconv.Quote(s)
}

// ParseInitialCluster parses etcd's --initial-cluster format,
// "name1=http://host:port,name2=http://host:port". A name may repeat to give
// a member several peer URLs. Members are returned in order of first
// appearance, each member's URLs in flag order. Empty entries (",,") are
// skipped as etcd does; an empty string yields no members. A peer URL may
// appear only once in the whole cluster.
func ParseInitialCluster(s string) ([]InitialMember, error) {
	var members []InitialMember
	index := make(map[string]int)
	seenURL := make(map[string]bool)
	for entry := range strings.SplitSeq(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, rawURL, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, fmt.Errorf("invalid --initial-cluster entry %s: want name=URL", quoteForConfigError(entry))
		}
		name = strings.TrimSpace(name)
		if err := checkNodeName(name); err != nil {
			return nil, fmt.Errorf("invalid --initial-cluster entry %s: %w", quoteForConfigError(entry), err)
		}
		u, err := parseConfigURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("invalid --initial-cluster entry for %s: %w", quoteForConfigError(name), err)
		}
		if key := u.String(); seenURL[key] {
			return nil, fmt.Errorf("initial cluster %s has duplicate url %s", quoteForConfigError(s), key)
		} else {
			seenURL[key] = true
		}
		i, ok := index[name]
		if !ok {
			i = len(members)
			index[name] = i
			members = append(members, InitialMember{Name: name})
		}
		members[i].PeerURLs = append(members[i].PeerURLs, *u)
	}
	return members, nil
}

// DefaultDataDir returns the data directory used when --data-dir is not
// given: "${name}.rangekv", like etcd's "${name}.etcd".
func DefaultDataDir(name string) string { return name + cfgDataDirSuffix }

// FormatInitialCluster renders members in --initial-cluster format; it is
// the inverse of ParseInitialCluster.
func FormatInitialCluster(members []InitialMember) string {
	var b strings.Builder
	for _, m := range members {
		for _, u := range m.PeerURLs {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(m.Name)
			b.WriteByte('=')
			b.WriteString(u.String())
		}
	}
	return b.String()
}

// checkNodeName reports whether name can be a node name: non-empty, and free of
// the separators of --initial-cluster, whitespace and control characters.
func checkNodeName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	for _, r := range name {
		if r == '=' || r == ',' || unicode.IsSpace(r) || unicode.IsControl(r) || r == unicode.ReplacementChar {
			return fmt.Errorf("name %s must not contain '=', ',', spaces or control characters", quoteForConfigError(name))
		}
	}
	return nil
}

// Validate checks c the way etcd checks its configuration before starting,
// with etcd's messages where etcd has the same rule. It does not resolve
// host names: a peer URL in --initial-cluster matches one in
// --initial-advertise-peer-urls only if both are written the same way.
func (c *Config) Validate() error {
	if err := checkNodeName(c.Name); err != nil {
		return fmt.Errorf("invalid --name: %w", err)
	}
	if strings.TrimSpace(c.DataDir) == "" {
		return errors.New("--data-dir must not be empty")
	}

	if len(c.ListenPeerURLs) == 0 {
		return errors.New("--listen-peer-urls must not be empty")
	}
	if len(c.ListenClientURLs) == 0 {
		return errors.New("--listen-client-urls must not be empty")
	}
	for _, l := range []struct {
		flag string
		urls []url.URL
	}{{"--listen-peer-urls", c.ListenPeerURLs}, {"--listen-client-urls", c.ListenClientURLs}} {
		if err := recheckConfigURLs(l.urls); err != nil {
			return fmt.Errorf("%s: %w", l.flag, err)
		}
		if err := checkBindConfigURLs(l.urls); err != nil {
			return err
		}
	}
	if len(c.InitialAdvertisePeerURLs) == 0 {
		return errors.New("--initial-advertise-peer-urls must not be empty")
	}
	if err := recheckConfigURLs(c.InitialAdvertisePeerURLs); err != nil {
		return fmt.Errorf("--initial-advertise-peer-urls: %w", err)
	}
	if err := checkAdvertisedURLs(c.InitialAdvertisePeerURLs); err != nil {
		return fmt.Errorf("--initial-advertise-peer-urls %q must be \"host:port\" (%w)", joinConfigURLs(c.InitialAdvertisePeerURLs), err)
	}
	if err := recheckConfigURLs(c.AdvertiseClientURLs); err != nil {
		return fmt.Errorf("--advertise-client-urls: %w", err)
	}
	if err := checkAdvertisedURLs(c.AdvertiseClientURLs); err != nil {
		return fmt.Errorf("--advertise-client-urls %q must be in the format \"host:port\" (%w)", joinConfigURLs(c.AdvertiseClientURLs), err)
	}

	if c.InitialClusterState != cfgClusterStateNew && c.InitialClusterState != cfgClusterStateExisting {
		return fmt.Errorf("unexpected clusterState %q", c.InitialClusterState)
	}

	if c.HeartbeatInterval <= 0 {
		return fmt.Errorf("--heartbeat-interval must be >0 (set to %dms)", c.HeartbeatInterval.Milliseconds())
	}
	if c.ElectionTimeout <= 0 {
		return fmt.Errorf("--election-timeout must be >0 (set to %dms)", c.ElectionTimeout.Milliseconds())
	}
	if c.HeartbeatInterval > c.ElectionTimeout/5 {
		return fmt.Errorf("--election-timeout[%vms] should be at least as 5 times as --heartbeat-interval[%vms]",
			c.ElectionTimeout.Milliseconds(), c.HeartbeatInterval.Milliseconds())
	}
	if c.ElectionTimeout > cfgMaxElectionTimeout {
		return fmt.Errorf("--election-timeout[%vms] is too long, and should be set less than %vms",
			c.ElectionTimeout.Milliseconds(), cfgMaxElectionTimeout.Milliseconds())
	}

	if len(c.AdvertiseClientURLs) == 0 {
		return errUnsetAdvertiseClientURLs
	}

	if c.MaxRequestBytes <= 0 {
		return fmt.Errorf("--max-request-bytes must be >0 (set to %d)", c.MaxRequestBytes)
	}
	if c.MaxTxnOps <= 0 {
		return fmt.Errorf("--max-txn-ops must be >0 (set to %d)", c.MaxTxnOps)
	}
	if c.RangeMaxBytes < 0 {
		return errors.New("--range-max-bytes must be >= 0")
	}
	if c.RangeSplitQPS < 0 {
		return errors.New("--range-split-qps must be >= 0")
	}
	if c.SnapshotCount == 0 {
		return errors.New("--snapshot-count must be >0")
	}
	if c.MaxClockOffset <= 0 {
		return fmt.Errorf("--max-clock-offset must be >0 (set to %v)", c.MaxClockOffset)
	}
	if c.ClosedTimestampInterval < 0 {
		return fmt.Errorf("--closed-timestamp-interval must be >=0 (set to %v)", c.ClosedTimestampInterval)
	}
	if c.WatchProgressNotifyInterval <= 0 {
		return fmt.Errorf("--watch-progress-notify-interval must be >0 (set to %v)", c.WatchProgressNotifyInterval)
	}

	return c.verifyInitialCluster()
}

// verifyInitialCluster applies etcd's bootstrap checks: the local name is in
// the initial cluster, no peer URL is listed twice, and, for a new cluster,
// the local member's URLs equal --initial-advertise-peer-urls.
func (c *Config) verifyInitialCluster() error {
	var local *InitialMember
	names := make(map[string]bool)
	urls := make(map[string]bool)
	for i := range c.InitialCluster {
		m := &c.InitialCluster[i]
		if err := checkNodeName(m.Name); err != nil {
			return fmt.Errorf("invalid --initial-cluster: %w", err)
		}
		if names[m.Name] {
			return fmt.Errorf("--initial-cluster lists member %q twice", m.Name)
		}
		names[m.Name] = true
		if len(m.PeerURLs) == 0 {
			return fmt.Errorf("--initial-cluster member %q has no peer URLs", m.Name)
		}
		if err := recheckConfigURLs(m.PeerURLs); err != nil {
			return fmt.Errorf("--initial-cluster member %q: %w", m.Name, err)
		}
		if err := checkAdvertisedURLs(m.PeerURLs); err != nil {
			return fmt.Errorf("--initial-cluster member %q: %w", m.Name, err)
		}
		for _, u := range m.PeerURLs {
			if urls[u.String()] {
				return fmt.Errorf("initial cluster %s has duplicate url", FormatInitialCluster(c.InitialCluster))
			}
			urls[u.String()] = true
		}
		if m.Name == c.Name {
			local = m
		}
	}
	if local == nil {
		return fmt.Errorf("couldn't find local name %q in the initial cluster configuration", c.Name)
	}
	if c.InitialClusterState != cfgClusterStateNew {
		return nil
	}

	adv := make(map[string]bool)
	for _, u := range c.InitialAdvertisePeerURLs {
		adv[u.String()] = true
	}
	mine := make(map[string]bool)
	for _, u := range local.PeerURLs {
		mine[u.String()] = true
	}
	var missing []string
	for _, u := range local.PeerURLs {
		if !adv[u.String()] {
			missing = append(missing, c.Name+"="+u.String())
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("--initial-cluster has %s but missing from --initial-advertise-peer-urls=%s",
			strings.Join(missing, ","), joinConfigURLs(sortConfigURLs(c.InitialAdvertisePeerURLs)))
	}
	for _, u := range c.InitialAdvertisePeerURLs {
		if !mine[u.String()] {
			missing = append(missing, u.String())
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("--initial-advertise-peer-urls has %s but missing from --initial-cluster=%s",
			strings.Join(missing, ","), FormatInitialCluster([]InitialMember{{Name: c.Name, PeerURLs: sortConfigURLs(c.InitialAdvertisePeerURLs)}}))
	}
	return nil
}

// recheckConfigURLs re-checks URLs built without ParseURLs (for example by tests or
// embedders), so that Validate alone guarantees what ParseURLs does.
func recheckConfigURLs(urls []url.URL) error {
	for _, u := range urls {
		if _, err := parseConfigURL(u.String()); err != nil {
			return err
		}
	}
	return nil
}

// checkBindConfigURLs requires listen URLs to name an IP address or "localhost",
// as etcd does.
func checkBindConfigURLs(urls []url.URL) error {
	for _, u := range urls {
		host, _, err := net.SplitHostPort(u.Host)
		if err != nil {
			return err
		}
		if host == "localhost" {
			continue
		}
		if net.ParseIP(host) == nil {
			return fmt.Errorf("expected IP in URL for binding (%s)", u.String())
		}
	}
	return nil
}

// checkAdvertisedURLs requires advertised URLs to name a host, as etcd does.
func checkAdvertisedURLs(urls []url.URL) error {
	for _, u := range urls {
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil {
			return err
		}
		if host == "" {
			return fmt.Errorf("unexpected empty host (%s)", u.String())
		}
		if port == "0" {
			return fmt.Errorf("unexpected port 0 in advertised URL (%s)", u.String())
		}
	}
	return nil
}

func joinConfigURLs(urls []url.URL) string {
	ss := make([]string, len(urls))
	for i := range urls {
		ss[i] = urls[i].String()
	}
	return strings.Join(ss, ",")
}

func sortConfigURLs(urls []url.URL) []url.URL {
	out := slices.Clone(urls)
	slices.SortFunc(out, func(a, b url.URL) int { return strings.Compare(a.String(), b.String()) })
	return out
}
