package e2e

import (
	"os/exec"
	"syscall"
)

// setProcessAttrs makes the kernel SIGKILL a child process when the test
// binary dies, so that a test killed by `go test -timeout` leaves no nodes
// behind.
func setProcessAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
