//go:build tools

// Package tools pins the third-party programs used to load and compare
// rangekv, in a module of their own so that the main module's
// dependencies stay clean. Build them with (from the repository root):
//
//	go build -C tools -o ../bin/benchmark go.etcd.io/etcd/v3/tools/benchmark
//
// etcd's benchmark tool lives in etcd's root module, whose newest release
// on the module proxy is v3.6.8; it speaks the same v3 API as 3.7.
package tools

import _ "go.etcd.io/etcd/v3/tools/benchmark"
