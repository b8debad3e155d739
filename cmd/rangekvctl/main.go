// Command rangekvctl administers a rangekv cluster: it lists and splits
// ranges and lists nodes through the Ranges gRPC service on the client
// URLs (txnproto/rangekv.proto). Global flags follow etcdctl's.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/rangekv/rangekv/txnproto"
)

type globals struct {
	endpoints      []string
	commandTimeout time.Duration
	dialTimeout    time.Duration
	writeOut       string
}

func main() {
	if err := newRootCommand(os.Stdout).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", errorMessage(err))
		os.Exit(1)
	}
}

// errorMessage prints a gRPC status as its message, as etcdctl does.
func errorMessage(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}

func newRootCommand(out io.Writer) *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "rangekvctl",
		Short:         "Administer a rangekv cluster: ranges, splits and nodes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringSliceVar(&g.endpoints, "endpoints", []string{"127.0.0.1:2379"}, "gRPC endpoints")
	pf.DurationVar(&g.commandTimeout, "command-timeout", 5*time.Second, "timeout for short running command (excluding dial timeout)")
	pf.DurationVar(&g.dialTimeout, "dial-timeout", 2*time.Second, "dial timeout for client connections")
	pf.StringVarP(&g.writeOut, "write-out", "w", "table", "set the output format (table, json)")

	rangeCmd := &cobra.Command{Use: "range", Short: "Range commands"}
	rangeCmd.AddCommand(
		&cobra.Command{
			Use:   "list",
			Short: "List ranges: ID, span, replicas, leader, size, keys and QPS",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return g.run(func(ctx context.Context, c txnproto.RangesClient) error {
					resp, err := c.ListRanges(ctx, &txnproto.ListRangesRequest{})
					if err != nil {
						return err
					}
					return g.printRanges(out, resp.Ranges)
				})
			},
		},
		&cobra.Command{
			Use:   "show KEY",
			Short: "Show the range holding KEY",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return g.run(func(ctx context.Context, c txnproto.RangesClient) error {
					info, err := c.RangeForKey(ctx, &txnproto.RangeForKeyRequest{Key: []byte(args[0])})
					if err != nil {
						return err
					}
					return g.printRanges(out, []*txnproto.RangeInfo{info})
				})
			},
		},
		&cobra.Command{
			Use:   "split KEY",
			Short: "Split the range holding KEY so that a new range starts at KEY",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if args[0] == "" {
					return errors.New("split key is not provided")
				}
				return g.run(func(ctx context.Context, c txnproto.RangesClient) error {
					resp, err := c.SplitRange(ctx, &txnproto.SplitRangeRequest{Key: []byte(args[0])})
					if err != nil {
						return err
					}
					return g.printRanges(out, []*txnproto.RangeInfo{resp.Left, resp.Right})
				})
			},
		},
		&cobra.Command{
			Use:   "move-leader KEY NODE_ID",
			Short: "Transfer the leadership of the range holding KEY to NODE_ID (hex, as in node list)",
			Args:  cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				if args[0] == "" {
					return errors.New("key is not provided")
				}
				target, err := strconv.ParseUint(args[1], 16, 64)
				if err != nil || target == 0 {
					return fmt.Errorf("bad node ID %q (want the hex ID that node list prints)", args[1])
				}
				return g.run(func(ctx context.Context, c txnproto.RangesClient) error {
					resp, err := c.MoveLeader(ctx, &txnproto.MoveLeaderRequest{Key: []byte(args[0]), TargetNode: target})
					if err != nil {
						return err
					}
					if resp.Range == nil {
						return nil
					}
					return g.printRanges(out, []*txnproto.RangeInfo{resp.Range})
				})
			},
		},
	)
	nodeCmd := &cobra.Command{Use: "node", Short: "Node commands"}
	nodeCmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List nodes with their URLs, replicas and leaderships",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(func(ctx context.Context, c txnproto.RangesClient) error {
				resp, err := c.ListNodes(ctx, &txnproto.ListNodesRequest{})
				if err != nil {
					return err
				}
				return g.printNodes(out, resp.Nodes)
			})
		},
	})
	root.AddCommand(rangeCmd, nodeCmd)
	return root
}

// run dials the endpoints and calls fn with a Ranges client under
// --command-timeout.
func (g *globals) run(fn func(context.Context, txnproto.RangesClient) error) error {
	if g.writeOut != "table" && g.writeOut != "json" {
		return fmt.Errorf("unsupported output format %q (use table or json)", g.writeOut)
	}
	var lastErr error
	for _, ep := range g.endpoints {
		target := strings.TrimPrefix(strings.TrimPrefix(ep, "http://"), "https://")
		conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			lastErr = err
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), g.dialTimeout+g.commandTimeout)
		err = fn(ctx, txnproto.NewRangesClient(conn))
		cancel()
		conn.Close()
		if err == nil {
			return nil
		}
		lastErr = err
		if st, ok := status.FromError(err); ok && st.Code().String() != "Unavailable" && st.Code().String() != "DeadlineExceeded" {
			return err
		}
	}
	return lastErr
}

// rangeJSON is the -w json shape of a range.
type rangeJSON struct {
	RangeID      uint64        `json:"range_id"`
	StartKey     string        `json:"start_key"`
	EndKey       string        `json:"end_key"`
	Replicas     []replicaJSON `json:"replicas"`
	LeaderNodeID string        `json:"leader_node_id"`
	Bytes        int64         `json:"bytes"`
	Keys         int64         `json:"keys"`
	QPS          float64       `json:"qps"`
}

type replicaJSON struct {
	NodeID    string `json:"node_id"`
	ReplicaID uint64 `json:"replica_id"`
	Type      string `json:"type"`
}

func replicaType(t txnproto.ReplicaType) string {
	if t == txnproto.ReplicaType_LEARNER {
		return "learner"
	}
	return "voter"
}

func (g *globals) printRanges(out io.Writer, infos []*txnproto.RangeInfo) error {
	if g.writeOut == "json" {
		rows := make([]rangeJSON, 0, len(infos))
		for _, in := range infos {
			row := rangeJSON{RangeID: in.RangeId, StartKey: string(in.StartKey), EndKey: string(in.EndKey),
				LeaderNodeID: fmt.Sprintf("%x", in.LeaderNodeId), Bytes: in.Bytes, Keys: in.Keys, QPS: in.Qps}
			for _, r := range in.Replicas {
				row.Replicas = append(row.Replicas, replicaJSON{NodeID: fmt.Sprintf("%x", r.NodeId), ReplicaID: r.ReplicaId, Type: replicaType(r.Type)})
			}
			rows = append(rows, row)
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RANGE ID\tSTART KEY\tEND KEY\tREPLICAS\tLEADER\tBYTES\tKEYS\tQPS")
	for _, in := range infos {
		var reps []string
		for _, r := range in.Replicas {
			reps = append(reps, fmt.Sprintf("%x(%s)", r.NodeId, replicaType(r.Type)))
		}
		end := fmt.Sprintf("%q", in.EndKey)
		if len(in.EndKey) == 0 {
			end = "<end>"
		}
		fmt.Fprintf(tw, "%d\t%q\t%s\t%s\t%x\t%d\t%d\t%.1f\n", in.RangeId, in.StartKey, end, strings.Join(reps, ","),
			in.LeaderNodeId, in.Bytes, in.Keys, in.Qps)
	}
	return tw.Flush()
}

func (g *globals) printNodes(out io.Writer, nodes []*txnproto.NodeInfo) error {
	if g.writeOut == "json" {
		type nodeJSON struct {
			NodeID     string   `json:"node_id"`
			Name       string   `json:"name"`
			PeerURLs   []string `json:"peer_urls"`
			ClientURLs []string `json:"client_urls"`
			Replicas   uint64   `json:"replicas"`
			Leaders    uint64   `json:"leaders"`
		}
		rows := make([]nodeJSON, 0, len(nodes))
		for _, n := range nodes {
			rows = append(rows, nodeJSON{NodeID: fmt.Sprintf("%x", n.Member.Id), Name: n.Member.Name,
				PeerURLs: n.Member.PeerUrls, ClientURLs: n.Member.ClientUrls, Replicas: n.Replicas, Leaders: n.Leaders})
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE ID\tNAME\tPEER URLS\tCLIENT URLS\tREPLICAS\tLEADERS")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%x\t%s\t%s\t%s\t%d\t%d\n", n.Member.Id, n.Member.Name, strings.Join(n.Member.PeerUrls, ","),
			strings.Join(n.Member.ClientUrls, ","), n.Replicas, n.Leaders)
	}
	return tw.Flush()
}
