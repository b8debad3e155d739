package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestFlagErrors checks that bad flag values are refused before any
// connection is made, each with a message naming the flag.
func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"put", "--clients", "0"}, "--clients must be at least 1, got 0"},
		{[]string{"put", "--conns", "-1"}, "--conns must be at least 1, got -1"},
		{[]string{"put", "--total", "0"}, "set --total or --duration"},
		{[]string{"put", "--rate", "-5"}, "--total, --duration and --rate cannot be negative"},
		{[]string{"put", "--key-space-size", "0"}, "--key-space-size must be at least 1, got 0"},
		{[]string{"put", "--val-size", "-1"}, "--val-size cannot be negative"},
		{[]string{"put", "--endpoints", ""}, "--endpoints is empty"},
		{[]string{"put", "extra"}, `unknown command "extra" for "rangekv-bench put"`},
		{[]string{"watch-latency", "--duration", "nope"}, `invalid argument "nope" for "--duration" flag`},
		{[]string{"range", "--consistency", "x"}, `--consistency must be "l" (linearizable) or "s" (serializable), got "x"`},
		{[]string{"range", "--limit", "-2"}, "--limit cannot be negative, got -2"},
		{[]string{"tenants", "--mix", "50,50"}, "--mix needs 5 percentages (create,update,delete,get,list), got 2"},
		{[]string{"compare", "put", "--nodes", "0"}, "--nodes must be at least 1, got 0"},
		{[]string{"compare", "put", "--rounds", "0"}, "--rounds must be at least 1, got 0"},
		{[]string{"compare", "tenants", "--endpoints", "127.0.0.1:1"}, "--endpoints does not apply to compare"},
		{[]string{"compare", "put", "--clients", "0"}, "--clients must be at least 1, got 0"},
		{[]string{"compare", "nosuch"}, `unknown command "nosuch" for "rangekv-bench compare"`},
	} {
		var out, errOut bytes.Buffer
		cmd := newRootCommand(&out, &errOut)
		cmd.SetArgs(tc.args)
		cmd.SetOut(&out)
		cmd.SetErr(&errOut)
		err := cmd.Execute()
		require.Error(t, err, "%v", tc.args)
		require.Contains(t, err.Error(), tc.want, "%v", tc.args)
		require.Empty(t, out.String(), "%v", tc.args)
	}
}
