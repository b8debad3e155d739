// Command rangekv runs one rangekv node: a key-value store that speaks the
// etcd v3 API and partitions its keyspace into raft-replicated ranges.
//
// Flags use etcd's names, meanings and defaults; every flag can also be set
// through the environment variable RANGEKV_<FLAG_IN_UPPER_SNAKE_CASE>.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// Version is rangekv's own version. Release builds set it with
//
//	go build -ldflags "-X main.Version=v0.1.0" ./cmd/rangekv
var Version = "0.1.0-dev"

// etcdAPIVersion is the etcd API level rangekv implements; it is what
// Status.version reports to clients such as kube-apiserver.
const etcdAPIVersion = "3.7.0"

// envPrefix prefixes the environment variable of every flag.
const envPrefix = "RANGEKV"

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the node failed to start or failed while running
	exitUsage = 2 // bad flags, arguments or environment
)

func main() {
	cmd := newRootCommand(os.Environ(), runNode)
	os.Exit(execute(cmd, os.Args[1:], os.Stderr))
}

// usageError marks errors caused by how rangekv was invoked.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// execute runs cmd with args and returns the process exit code. Errors are
// printed to stderr as a single line.
func execute(cmd *cobra.Command, args []string, stderr io.Writer) int {
	cmd.SetArgs(args)
	err := cmd.Execute()
	if err == nil {
		return exitOK
	}
	msg := oneLine(err.Error())
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "rangekv: %s (see 'rangekv --help')\n", msg)
		return exitUsage
	}
	fmt.Fprintf(stderr, "rangekv: %s\n", msg)
	return exitError
}

// oneLine flattens msg to one line of bounded length so that hostile
// input cannot flood the terminal.
func oneLine(msg string) string {
	const maxLen = 1024
	msg = strings.Join(strings.Fields(msg), " ")
	if len(msg) > maxLen {
		msg = msg[:maxLen] + "..."
	}
	return msg
}
