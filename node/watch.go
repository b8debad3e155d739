package node

import pb "go.etcd.io/etcd/api/v3/etcdserverpb"

func newWatchServer(n *Node) pb.WatchServer { return &pb.UnimplementedWatchServer{} }
