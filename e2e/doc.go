// Package e2e holds rangekv's end-to-end tests. They build the real
// bin/rangekv server and etcd's etcdctl (the version pinned in go.mod)
// once per `go test` run, start clusters of rangekv processes on free
// loopback ports with data directories under t.TempDir(), and talk to them
// the way users do: through etcdctl, through clientv3, through raw gRPC and
// over HTTP. Failures print the tail of every node's log.
//
// The tests check etcd compatibility (exact etcdctl output and error
// messages), replication across a three-node cluster, survival of a
// SIGKILLed leader without losing acknowledged writes, crash recovery of a
// single node, clear start-up errors for foreign or corrupt data
// directories, and that malformed requests do not take a node down.
//
// Every process a test starts is killed with SIGKILL and waited for when
// the test ends. Single-node tests run in parallel; multi-node tests run
// one at a time. The package runs with plain `go test ./e2e`.
package e2e
