//go:build linux

package robustness

import (
	"net"
	"sync"
	"time"
)

// Proxy forwards TCP connections to a node's peer listener; every other
// node reaches the node's peer port through it (the node advertises the
// proxy's address), so it can drop or delay all traffic into the node.
type Proxy struct {
	l      net.Listener
	target string

	mu    sync.Mutex
	drop  bool
	delay time.Duration
	conns map[net.Conn]struct{}
}

// NewProxy listens on listen and forwards to target.
func NewProxy(listen, target string) (*Proxy, error) {
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &Proxy{l: l, target: target, conns: map[net.Conn]struct{}{}}
	go p.serve()
	return p, nil
}

// Drop makes the proxy refuse new connections and cut open ones (on),
// or forward again (off).
func (p *Proxy) Drop(on bool) {
	p.mu.Lock()
	p.drop = on
	var open []net.Conn
	if on {
		for c := range p.conns {
			open = append(open, c)
		}
	}
	p.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
}

// Delay holds every chunk forwarded into the node for d (0: none).
func (p *Proxy) Delay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// Close stops the proxy and cuts every connection.
func (p *Proxy) Close() {
	p.l.Close()
	p.Drop(true)
}

func (p *Proxy) serve() {
	for {
		in, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		drop := p.drop
		if !drop {
			p.conns[in] = struct{}{}
		}
		p.mu.Unlock()
		if drop {
			in.Close()
			continue
		}
		go p.forward(in)
	}
}

func (p *Proxy) forward(in net.Conn) {
	defer func() {
		p.mu.Lock()
		delete(p.conns, in)
		p.mu.Unlock()
		in.Close()
	}()
	out, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.conns[out] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, out)
		p.mu.Unlock()
		out.Close()
	}()
	done := make(chan struct{}, 2)
	go func() { p.copy(out, in, true); done <- struct{}{} }()
	go func() { p.copy(in, out, false); done <- struct{}{} }()
	<-done
}

// copy moves bytes from src to dst; inbound chunks (towards the node)
// wait out the configured delay.
func (p *Proxy) copy(dst, src net.Conn, inbound bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if inbound {
				p.mu.Lock()
				d := p.delay
				p.mu.Unlock()
				if d > 0 {
					time.Sleep(d)
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a cut connection: the other direction ends too
		}
	}
}
