package main

import (
	"errors"
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// runFunc runs a node with resolved settings. main uses runNode; tests
// substitute a function that records the settings.
type runFunc func(cmd *cobra.Command, s settings) error

const longHelp = `rangekv runs one node of a rangekv cluster. rangekv speaks the etcd v3 API,
so etcdctl and clientv3 work against it unchanged, but it partitions the
keyspace into ranges, each replicated by its own raft group.

Flags have etcd's names, meanings and defaults. Every flag can also be set
through an environment variable named RANGEKV_ followed by the flag name in
upper case with dashes turned into underscores, for example
RANGEKV_LISTEN_CLIENT_URLS. A flag given on the command line wins over its
variable. Only http:// URLs are accepted: TLS is not supported yet.`

const examples = `  # A single node serving clients on http://localhost:2379:
  rangekv

  # Member infra1 of a three-node cluster on one machine (start infra2 and
  # infra3 the same way with their own name and ports; deploy/Procfile has
  # all three):
  rangekv --name infra1 \
    --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:12380 \
    --initial-advertise-peer-urls http://127.0.0.1:12380 \
    --initial-cluster-token etcd-cluster-1 \
    --initial-cluster 'infra1=http://127.0.0.1:12380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380' \
    --initial-cluster-state new

  # Print the version:
  rangekv version`

// newRootCommand builds the rangekv command. environ is the process
// environment (os.Environ() in main); run starts the node.
func newRootCommand(environ []string, run runFunc) *cobra.Command {
	o := newOptions()
	var printVersion bool
	cmd := &cobra.Command{
		Use:           "rangekv [flags]",
		Short:         "Run a rangekv node: an etcd v3 API key-value store partitioned into raft-replicated ranges",
		Long:          longHelp,
		Example:       examples,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unexpected argument %s: rangekv takes only flags", quoteShort(args[0]))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if printVersion {
				writeVersion(cmd.OutOrStdout())
				return nil
			}
			s, err := resolve(o, environ)
			if err != nil {
				return err
			}
			return run(cmd, s)
		},
	}
	cmd.CompletionOptions.DisableDefaultCmd = true
	cmd.Flags().SortFlags = false
	cmd.Flags().AddFlagSet(o.fs)
	cmd.Flags().BoolVar(&printVersion, "version", false, "Print the version and exit.")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		var ive *pflag.InvalidValueError
		if errors.As(err, &ive) {
			err = fmt.Errorf("invalid value %s for --%s: %w", quoteShort(ive.GetValue()), ive.GetFlag().Name, ive.Unwrap())
		}
		return usageError{err}
	})

	cmd.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the rangekv version, the etcd API version it implements, and the Go version",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unexpected argument %s: version takes no arguments", quoteShort(args[0]))}
			}
			return nil
		},
		Run: func(cmd *cobra.Command, _ []string) {
			writeVersion(cmd.OutOrStdout())
		},
	})
	return cmd
}

// writeVersion prints the versions the way etcd --version does.
func writeVersion(w io.Writer) {
	fmt.Fprintf(w, "rangekv Version: %s\n", Version)
	fmt.Fprintf(w, "etcd API Version: %s\n", etcdAPIVersion)
	fmt.Fprintf(w, "Go Version: %s\n", runtime.Version())
	fmt.Fprintf(w, "Go OS/Arch: %s/%s\n", runtime.GOOS, runtime.GOARCH)
}
