//go:build tools

// Package etcd pins the etcd server that rangekv-bench compare runs beside
// rangekv, in a module of its own so that neither the main module nor the
// other tools module takes etcd's dependencies. Build it with (from the
// repository root):
//
//	go build -C tools/etcd -o ../../bin/etcd go.etcd.io/etcd/server/v3
//
// rangekv-bench compare does this itself when bin/etcd is missing.
package etcd

import _ "go.etcd.io/etcd/server/v3"
