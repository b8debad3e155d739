// Package txnproto holds the protobuf definitions of rangekv's replicated
// commands, persistent records and internal RPCs. The generated Go code is
// committed; regenerate it with `go generate ./txnproto` (needs protoc 3.21+,
// and `go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
// google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2`).
package txnproto

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative rangekv.proto
