package bench

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes cmd die with the benchmark process, so a killed
// comparison leaves no server behind.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
