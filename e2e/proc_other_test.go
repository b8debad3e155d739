//go:build !linux

package e2e

import "os/exec"

// setProcessAttrs does nothing outside Linux; t.Cleanup still kills every
// process a test started.
func setProcessAttrs(*exec.Cmd) {}
