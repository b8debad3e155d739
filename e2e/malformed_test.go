package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"
)

// rawMessage returns a message that the standard gRPC proto codec encodes
// as exactly b: its only content is b as unknown fields, which protobuf
// writes out verbatim. It lets a test send arbitrary bytes as a request
// body with an ordinary client (content-type application/grpc).
func rawMessage(b []byte) *emptypb.Empty {
	m := &emptypb.Empty{}
	m.ProtoReflect().SetUnknown(protoreflect.RawFields(b))
	return m
}

// dialRaw opens a plain gRPC connection to node i's client URL.
func dialRaw(t *testing.T, c *cluster, i int) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(c.nodes[i].endpoint(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20), grpc.MaxCallRecvMsgSize(64<<20)))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// requireServing checks that node i still answers /readyz and serves a
// put and a linearizable get.
func requireServing(t *testing.T, c *cluster, i int, key string) {
	t.Helper()
	c.nodes[i].waitReady(t)
	require.Equal(t, "OK\n", c.mustCtlOn(i, "put", key, "still-serving"))
	require.Equal(t, key+"\nstill-serving\n", c.mustCtlOn(i, "get", key))
}

// TestMalformedRequests sends undecodable request bodies, oversized
// messages and garbage connections to a node's client port and checks that
// each is refused with an error while the node keeps serving.
func TestMalformedRequests(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	conn := dialRaw(t, c, 0)

	t.Run("GarbageBodies", func(t *testing.T) {
		c := c.on(t)
		bodies := map[string][]byte{
			"invalid field number 0":      {0x00, 0x01, 0x02},
			"varint longer than 10 bytes": {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
			"length beyond the message":   {0x0a, 0x64, 'k', 'e', 'y'},
			"end group without start":     {0x0c},
			"truncated fixed64":           {0x09, 0x01, 0x02},
		}
		methods := []string{
			"/etcdserverpb.KV/Put",
			"/etcdserverpb.KV/Range",
			"/etcdserverpb.KV/DeleteRange",
			"/etcdserverpb.KV/Txn",
			"/etcdserverpb.KV/Compact",
			"/etcdserverpb.Maintenance/Status",
			"/etcdserverpb.Cluster/MemberList",
		}
		for _, m := range methods {
			for name, body := range bodies {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := conn.Invoke(ctx, m, rawMessage(body), &emptypb.Empty{})
				cancel()
				require.Error(t, err, "%s with %s", m, name)
				require.Equal(t, codes.Internal, status.Code(err), "%s with %s: %v", m, name, err)
				require.Contains(t, err.Error(), "unmarshal", "%s with %s", m, name)
			}
		}
		requireServing(t, c, 0, "after-garbage-bodies")
	})

	t.Run("GarbageWatchRequest", func(t *testing.T) {
		c := c.on(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/etcdserverpb.Watch/Watch")
		require.NoError(t, err)
		require.NoError(t, stream.SendMsg(rawMessage([]byte{0x0a, 0x64, 0x0a})))
		err = stream.RecvMsg(&emptypb.Empty{})
		require.Error(t, err)
		require.Equal(t, codes.Internal, status.Code(err), "%v", err)
		requireServing(t, c, 0, "after-garbage-watch")
	})

	t.Run("Oversized", func(t *testing.T) {
		c := c.on(t)
		kv := pb.NewKVClient(conn)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Above --max-request-bytes (1.5 MiB by default): etcd's error.
		_, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("big"), Value: make([]byte, 1600*1024)})
		require.Equal(t, rpctypes.ErrGRPCRequestTooLarge, err)
		// Beyond the transport's limit too: gRPC refuses the message.
		_, err = kv.Put(ctx, &pb.PutRequest{Key: []byte("big"), Value: make([]byte, 4<<20)})
		require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
		// A garbage body of that size.
		err = conn.Invoke(ctx, "/etcdserverpb.KV/Put", rawMessage([]byte(strings.Repeat("\xff", 4<<20))), &emptypb.Empty{})
		require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
		require.Equal(t, "", c.mustCtl("get", "big"))
		requireServing(t, c, 0, "after-oversized")
	})

	t.Run("GarbageConnections", func(t *testing.T) {
		c := c.on(t)
		// Garbage that is not HTTP/2 reaches the HTTP server, which answers
		// 400 and closes the connection.
		for _, p := range []string{
			"\x00\x01\x02\x03garbage\r\n\r\n",
			"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
		} {
			nc, err := net.DialTimeout("tcp", c.nodes[0].endpoint(), 5*time.Second)
			require.NoError(t, err)
			require.NoError(t, nc.SetDeadline(time.Now().Add(10*time.Second)))
			_, err = nc.Write([]byte(p))
			require.NoError(t, err)
			answer, _ := io.ReadAll(nc)
			nc.Close()
			require.True(t, strings.HasPrefix(string(answer), "HTTP/1.1 400 Bad Request\r\n"), "answer to %q: %q", p, answer)
		}
		// An HTTP/2 preface followed by a frame header that lies about its
		// length and type; the server waits for the rest, so do not read.
		nc, err := net.DialTimeout("tcp", c.nodes[0].endpoint(), 5*time.Second)
		require.NoError(t, err)
		_, err = nc.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff" + strings.Repeat("\x00", 64)))
		require.NoError(t, err)
		t.Cleanup(func() { nc.Close() })
		// Half-open connections that never send anything do not block others.
		for range 5 {
			nc, err := net.DialTimeout("tcp", c.nodes[0].endpoint(), 5*time.Second)
			require.NoError(t, err)
			t.Cleanup(func() { nc.Close() })
		}
		resp, err := http.Get(c.nodes[0].clientURL + "/health")
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		requireServing(t, c, 0, "after-garbage-connections")
	})
}
