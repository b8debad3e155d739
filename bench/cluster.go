package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// LocalCluster is a static cluster of an etcd-compatible server (etcd or
// rangekv, which take the same flags) on loopback, for comparisons: every
// member on free ports, its data and log under Dir.
type LocalCluster struct {
	// System names the server ("etcd", "rangekv").
	System string
	// Endpoints are the members' client addresses (host:port).
	Endpoints []string
	// Dir holds the members' data directories and logs.
	Dir   string
	procs []*exec.Cmd
	done  []chan struct{}
}

// StartLocalCluster starts nodes members of binary, founded as etcd's
// documentation founds a static cluster, with extraFlags appended to each,
// and waits until a write through every member succeeds (ctx bounds it).
func StartLocalCluster(ctx context.Context, system, binary, dir string, nodes int, extraFlags ...string) (*LocalCluster, error) {
	if nodes < 1 {
		return nil, fmt.Errorf("bench: a cluster needs at least one node, got %d", nodes)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ports, err := FreePorts(2 * nodes)
	if err != nil {
		return nil, err
	}
	lc := &LocalCluster{System: system, Dir: dir}
	var initial []string
	for i := range nodes {
		initial = append(initial, fmt.Sprintf("infra%d=http://127.0.0.1:%d", i+1, ports[2*i+1]))
	}
	for i := range nodes {
		name := fmt.Sprintf("infra%d", i+1)
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		args := append([]string{
			"--name", name, "--data-dir", filepath.Join(dir, name+".data"),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-token", "bench-" + system, "--initial-cluster-state", "new",
		}, extraFlags...)
		log, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			lc.Stop()
			return nil, err
		}
		cmd := exec.Command(binary, args...)
		cmd.Stdout, cmd.Stderr = log, log
		setDeathSignal(cmd)
		if err := cmd.Start(); err != nil {
			log.Close()
			lc.Stop()
			return nil, fmt.Errorf("bench: starting %s: %w", binary, err)
		}
		done := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			log.Close()
			close(done)
		}()
		lc.procs = append(lc.procs, cmd)
		lc.done = append(lc.done, done)
		lc.Endpoints = append(lc.Endpoints, strings.TrimPrefix(client, "http://"))
	}
	if err := lc.waitWritable(ctx); err != nil {
		lc.Stop()
		return nil, fmt.Errorf("bench: %s cluster in %s did not come up (see its logs): %w", system, dir, err)
	}
	return lc, nil
}

// waitWritable waits until a put through each member succeeds.
func (lc *LocalCluster) waitWritable(ctx context.Context) error {
	for i, ep := range lc.Endpoints {
		for {
			select {
			case <-lc.done[i]:
				return fmt.Errorf("member %d exited", i+1)
			default:
			}
			err := func() error {
				resp, err := http.Get("http://" + ep + "/health")
				if err != nil {
					return err
				}
				resp.Body.Close()
				cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: time.Second, Logger: zap.NewNop()})
				if err != nil {
					return err
				}
				defer cli.Close()
				pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				_, err = cli.Put(pctx, "bench-cluster-ready", ep)
				return err
			}()
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return errors.Join(ctx.Err(), err)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

// Stop SIGTERMs every member, SIGKILLs any still running after 10 s, and
// waits for them to exit. The data directories stay.
func (lc *LocalCluster) Stop() {
	for _, p := range lc.procs {
		_ = p.Process.Signal(syscall.SIGTERM)
	}
	for i, p := range lc.procs {
		select {
		case <-lc.done[i]:
		case <-time.After(10 * time.Second):
			_ = p.Process.Kill()
			<-lc.done[i]
		}
	}
	lc.procs, lc.done = nil, nil
}

// FreePorts returns n distinct free loopback ports at or above 40000: the
// 1xxxx-3xxxx ranges belong to other clusters on shared machines. Each is
// held until all are chosen, so they are distinct; another process may
// still take one before the caller binds it.
func FreePorts(n int) ([]int, error) {
	var ports []int
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, errors.New("bench: no free loopback ports >= 40000")
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		held = append(held, l)
		if p := l.Addr().(*net.TCPAddr).Port; p >= 40000 {
			ports = append(ports, p)
		}
	}
	return ports, nil
}
