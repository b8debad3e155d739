package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestEtcdCompatibility covers etcd client-port behaviour beyond the core
// KV commands; each subtest guards a deviation from etcd found and fixed
// earlier ("regression:").
func TestEtcdCompatibility(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	c.mustCtl("put", "compat/a", "1")
	c.mustCtl("put", "compat/b", "2")

	t.Run("GRPCContentSubtype", func(t *testing.T) {
		// etcd serves every HTTP/2 connection on an insecure client URL as
		// gRPC, whatever the content-type; clients that name the codec send
		// "application/grpc+proto".
		conn := dialRaw(t, c, 0)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := pb.NewKVClient(conn).Range(ctx, &pb.RangeRequest{Key: []byte("compat/a")},
			grpc.CallContentSubtype("proto"))
		if status.Code(err) == codes.Unavailable {
			t.Fatalf("regression: gRPC requests with content-type application/grpc+proto are routed to the HTTP/1 server: %v", err)
		}
		require.NoError(t, err)
		require.Len(t, resp.Kvs, 1)
		require.Equal(t, "1", string(resp.Kvs[0].Value))
	})

	t.Run("GRPCGateway", func(t *testing.T) {
		// etcd's JSON gateway (on by default): bytes are base64,
		// "Y29tcGF0L2E=" is "compat/a".
		resp, err := http.Post(c.nodes[0].clientURL+"/v3/kv/range", "application/json",
			strings.NewReader(`{"key":"Y29tcGF0L2E="}`))
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		if resp.StatusCode == http.StatusNotFound {
			t.Fatalf("regression: the etcd gRPC-gateway JSON API is not served: POST /v3/kv/range answers 404 %q", body)
		}
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
		var rr struct {
			Kvs []struct {
				Key   []byte `json:"key"`
				Value []byte `json:"value"`
			} `json:"kvs"`
		}
		require.NoError(t, json.Unmarshal(body, &rr), "%s", body)
		require.Len(t, rr.Kvs, 1, "%s", body)
		require.Equal(t, "1", string(rr.Kvs[0].Value))
	})

	t.Run("GetStream", func(t *testing.T) {
		c := c.on(t)
		res := c.ctl("get", "--prefix", "compat/", "--stream")
		if strings.Contains(res.stderr, "method RangeStream not implemented") {
			t.Fatalf("regression: KV.RangeStream (etcd 3.7, `etcdctl get --stream`) is not implemented: %s", res.errLine())
		}
		require.Zero(t, res.code, "%s", res)
		require.Equal(t, "compat/a\n1\ncompat/b\n2\n", res.stdout)
	})

	t.Run("EndpointHashKV", func(t *testing.T) {
		c := c.on(t)
		res := c.ctl("endpoint", "hashkv")
		if strings.Contains(res.stderr, "method HashKV not implemented") {
			t.Fatalf("regression: Maintenance.HashKV (`etcdctl endpoint hashkv`) is not implemented: %s", res.errLine())
		}
		require.Zero(t, res.code, "%s", res)
		require.True(t, strings.HasPrefix(res.stdout, c.nodes[0].endpoint()+", "), "%s", res)
	})
}
