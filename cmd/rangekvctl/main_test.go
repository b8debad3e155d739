package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rangekv/rangekv/txnproto"
)

// Two ranges as a three-node cluster reports them after one split: the
// left one led by node abc with a learner on node 123, the right one
// without a known leader yet.
func sampleRanges() []*txnproto.RangeInfo {
	replicas := []*txnproto.ReplicaDescriptor{
		{NodeId: 0xabc, ReplicaId: 1, Type: txnproto.ReplicaType_VOTER},
		{NodeId: 0xdef0, ReplicaId: 2, Type: txnproto.ReplicaType_VOTER},
		{NodeId: 0x123, ReplicaId: 3, Type: txnproto.ReplicaType_LEARNER},
	}
	return []*txnproto.RangeInfo{
		{RangeId: 2, StartKey: nil, EndKey: []byte("k050"), Replicas: replicas, LeaderNodeId: 0xabc,
			Bytes: 1680, Keys: 50, Qps: 27.26, Generation: 1},
		{RangeId: 13, StartKey: []byte("k050"), EndKey: nil, Replicas: replicas, LeaderNodeId: 0,
			Bytes: 4950, Keys: 150, Qps: 0, Generation: 1},
	}
}

func sampleNodes() []*txnproto.NodeInfo {
	return []*txnproto.NodeInfo{
		{Member: &txnproto.Member{Id: 0xabc, Name: "infra1", PeerUrls: []string{"http://127.0.0.1:12380"},
			ClientUrls: []string{"http://127.0.0.1:2379"}}, Replicas: 3, Leaders: 2},
		{Member: &txnproto.Member{Id: 0xdef0, Name: "infra2", PeerUrls: []string{"http://127.0.0.1:22380", "http://10.0.0.2:22380"},
			ClientUrls: []string{"http://127.0.0.1:22379"}}, Replicas: 3, Leaders: 0},
	}
}

func TestPrintRangesTable(t *testing.T) {
	var out bytes.Buffer
	g := &globals{writeOut: "table"}
	require.NoError(t, g.printRanges(&out, sampleRanges()))
	// Keys are quoted, an empty end key is <end>, IDs are hex, QPS has
	// one decimal; tabwriter pads each column to its widest cell plus 2.
	require.Equal(t, ""+
		"RANGE ID  START KEY  END KEY  REPLICAS                             LEADER  BYTES  KEYS  QPS\n"+
		"2         \"\"         \"k050\"   abc(voter),def0(voter),123(learner)  abc     1680   50    27.3\n"+
		"13        \"k050\"     <end>    abc(voter),def0(voter),123(learner)  0       4950   150   0.0\n",
		out.String())
}

func TestPrintRangesTableQuotesBinaryKeys(t *testing.T) {
	var out bytes.Buffer
	g := &globals{writeOut: "table"}
	require.NoError(t, g.printRanges(&out, []*txnproto.RangeInfo{
		{RangeId: 5, StartKey: []byte("a\x00\xff"), EndKey: []byte("tab\tkey"), LeaderNodeId: 1},
	}))
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	require.Len(t, lines, 2, out.String())
	require.Equal(t, []string{"5", `"a\x00\xff"`, `"tab\tkey"`, "1", "0", "0", "0.0"}, strings.Fields(lines[1]),
		"no replicas leave the column empty; keys are Go-quoted")
}

func TestPrintRangesJSON(t *testing.T) {
	var out bytes.Buffer
	g := &globals{writeOut: "json"}
	require.NoError(t, g.printRanges(&out, sampleRanges()[:1]))
	require.Equal(t, `[
  {
    "range_id": 2,
    "start_key": "",
    "end_key": "k050",
    "replicas": [
      {
        "node_id": "abc",
        "replica_id": 1,
        "type": "voter"
      },
      {
        "node_id": "def0",
        "replica_id": 2,
        "type": "voter"
      },
      {
        "node_id": "123",
        "replica_id": 3,
        "type": "learner"
      }
    ],
    "leader_node_id": "abc",
    "bytes": 1680,
    "keys": 50,
    "qps": 27.26
  }
]
`, out.String())

	// An unknown leader is "0", the last range ends at "".
	out.Reset()
	require.NoError(t, g.printRanges(&out, sampleRanges()[1:]))
	require.Contains(t, out.String(), `"start_key": "k050",`)
	require.Contains(t, out.String(), `"end_key": "",`)
	require.Contains(t, out.String(), `"leader_node_id": "0",`)
	require.Contains(t, out.String(), `"qps": 0`)

	// No ranges is an empty list, not null.
	out.Reset()
	require.NoError(t, g.printRanges(&out, nil))
	require.Equal(t, "[]\n", out.String())
}

func TestPrintNodesTable(t *testing.T) {
	var out bytes.Buffer
	g := &globals{writeOut: "table"}
	require.NoError(t, g.printNodes(&out, sampleNodes()))
	require.Equal(t, ""+
		"NODE ID  NAME    PEER URLS                                     CLIENT URLS             REPLICAS  LEADERS\n"+
		"abc      infra1  http://127.0.0.1:12380                        http://127.0.0.1:2379   3         2\n"+
		"def0     infra2  http://127.0.0.1:22380,http://10.0.0.2:22380  http://127.0.0.1:22379  3         0\n",
		out.String())
}

func TestPrintNodesJSON(t *testing.T) {
	var out bytes.Buffer
	g := &globals{writeOut: "json"}
	require.NoError(t, g.printNodes(&out, sampleNodes()[1:]))
	require.Equal(t, `[
  {
    "node_id": "def0",
    "name": "infra2",
    "peer_urls": [
      "http://127.0.0.1:22380",
      "http://10.0.0.2:22380"
    ],
    "client_urls": [
      "http://127.0.0.1:22379"
    ],
    "replicas": 3,
    "leaders": 0
  }
]
`, out.String())
}

// fakeRanges is a Ranges service that records the requests it serves.
type fakeRanges struct {
	txnproto.UnimplementedRangesServer
	mu       sync.Mutex
	calls    []string
	splitErr error
}

func (f *fakeRanges) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

func (f *fakeRanges) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeRanges) ListRanges(context.Context, *txnproto.ListRangesRequest) (*txnproto.ListRangesResponse, error) {
	f.record("ListRanges")
	return &txnproto.ListRangesResponse{Ranges: sampleRanges()}, nil
}

func (f *fakeRanges) RangeForKey(_ context.Context, req *txnproto.RangeForKeyRequest) (*txnproto.RangeInfo, error) {
	f.record("RangeForKey " + string(req.Key))
	return sampleRanges()[1], nil
}

func (f *fakeRanges) SplitRange(_ context.Context, req *txnproto.SplitRangeRequest) (*txnproto.SplitRangeResponse, error) {
	f.record("SplitRange " + string(req.Key))
	if f.splitErr != nil {
		return nil, f.splitErr
	}
	rs := sampleRanges()
	return &txnproto.SplitRangeResponse{Left: rs[0], Right: rs[1]}, nil
}

func (f *fakeRanges) ListNodes(context.Context, *txnproto.ListNodesRequest) (*txnproto.ListNodesResponse, error) {
	f.record("ListNodes")
	return &txnproto.ListNodesResponse{Nodes: sampleNodes()}, nil
}

// serveFake serves f on a free loopback port until the test ends and
// returns its address.
func serveFake(t *testing.T, f *fakeRanges) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := grpc.NewServer()
	txnproto.RegisterRangesServer(s, f)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return l.Addr().String()
}

// deadEndpoint returns a loopback address nothing listens on.
func deadEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// run executes rangekvctl with args and returns its output and error.
func run(args ...string) (string, error) {
	var out bytes.Buffer
	root := newRootCommand(&out)
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.Execute()
	return out.String(), err
}

func TestCommandsAgainstFakeServer(t *testing.T) {
	f := &fakeRanges{}
	ep := serveFake(t, f)

	out, err := run("--endpoints", ep, "range", "list")
	require.NoError(t, err)
	want := &bytes.Buffer{}
	require.NoError(t, (&globals{writeOut: "table"}).printRanges(want, sampleRanges()))
	require.Equal(t, want.String(), out)

	out, err = run("--endpoints", "http://"+ep, "range", "list", "-w", "json")
	require.NoError(t, err, "an http:// endpoint works too")
	want.Reset()
	require.NoError(t, (&globals{writeOut: "json"}).printRanges(want, sampleRanges()))
	require.Equal(t, want.String(), out)

	out, err = run("--endpoints", ep, "range", "show", "k077", "--write-out=json")
	require.NoError(t, err)
	want.Reset()
	require.NoError(t, (&globals{writeOut: "json"}).printRanges(want, sampleRanges()[1:]))
	require.Equal(t, want.String(), out)

	out, err = run("--endpoints", ep, "range", "split", "k050")
	require.NoError(t, err)
	want.Reset()
	require.NoError(t, (&globals{writeOut: "table"}).printRanges(want, sampleRanges()))
	require.Equal(t, want.String(), out, "a split prints the left and the right range")

	out, err = run("--endpoints", ep, "node", "list")
	require.NoError(t, err)
	want.Reset()
	require.NoError(t, (&globals{writeOut: "table"}).printNodes(want, sampleNodes()))
	require.Equal(t, want.String(), out)

	require.Equal(t, []string{"ListRanges", "ListRanges", "RangeForKey k077", "SplitRange k050", "ListNodes"}, f.Calls())
}

func TestUnavailableEndpointIsSkipped(t *testing.T) {
	f := &fakeRanges{}
	ep := serveFake(t, f)
	out, err := run("--endpoints", deadEndpoint(t)+","+ep, "range", "list", "-w", "json")
	require.NoError(t, err)
	require.Contains(t, out, `"range_id": 13`)
	require.Equal(t, []string{"ListRanges"}, f.Calls())

	// With no endpoint reachable, the last error is returned.
	_, err = run("--endpoints", deadEndpoint(t)+","+deadEndpoint(t), "range", "list", "--dial-timeout", "100ms", "--command-timeout", "1s")
	require.Error(t, err)
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
}

func TestServerErrorIsNotRetriedElsewhere(t *testing.T) {
	// A refusal from the server (not Unavailable) ends the command: the
	// split is not sent to the next endpoint.
	first := &fakeRanges{splitErr: status.Error(codes.FailedPrecondition, `rangekv: "k050" is already the start of range 13`)}
	second := &fakeRanges{}
	out, err := run("--endpoints", serveFake(t, first)+","+serveFake(t, second), "range", "split", "k050")
	require.Error(t, err)
	require.Empty(t, out)
	require.Equal(t, `rangekv: "k050" is already the start of range 13`, errorMessage(err), "main prints the status message")
	require.Equal(t, []string{"SplitRange k050"}, first.Calls())
	require.Empty(t, second.Calls())
}

func TestErrorMessage(t *testing.T) {
	require.Equal(t, "rangekv: no leader", errorMessage(status.Error(codes.Unavailable, "rangekv: no leader")))
	require.Equal(t, "split key is not provided", errorMessage(errors.New("split key is not provided")))
}

func TestArgumentErrors(t *testing.T) {
	f := &fakeRanges{}
	ep := serveFake(t, f)
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"range", "list", "-w", "yaml"}, `unsupported output format "yaml" (use table or json)`},
		{[]string{"range", "show", "k", "-w", "yaml"}, `unsupported output format "yaml" (use table or json)`},
		{[]string{"range", "split", "k", "--write-out", "yaml"}, `unsupported output format "yaml" (use table or json)`},
		{[]string{"node", "list", "-w", "protobuf"}, `unsupported output format "protobuf" (use table or json)`},
		{[]string{"range", "split"}, "accepts 1 arg(s), received 0"},
		{[]string{"range", "split", "a", "b"}, "accepts 1 arg(s), received 2"},
		{[]string{"range", "split", ""}, "split key is not provided"},
		{[]string{"range", "show"}, "accepts 1 arg(s), received 0"},
		{[]string{"range", "list", "extra"}, `unknown command "extra" for "rangekvctl range list"`},
		{[]string{"node", "list", "extra"}, `unknown command "extra" for "rangekvctl node list"`},
		{[]string{"range", "list", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"range", "list", "--command-timeout", "soon"}, `invalid argument "soon" for "--command-timeout" flag: time: invalid duration "soon"`},
	} {
		out, err := run(append([]string{"--endpoints", ep}, tc.args...)...)
		require.EqualError(t, err, tc.err, "rangekvctl %s", strings.Join(tc.args, " "))
		require.NotContains(t, out, "RANGE ID", "rangekvctl %s printed a result", strings.Join(tc.args, " "))
	}
	require.Empty(t, f.Calls(), "no request reaches the server when the arguments are wrong")
}
