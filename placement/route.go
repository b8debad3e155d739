package placement

import (
	"fmt"
	"strconv"
	"strings"
)

// RouteHintHeader is the gRPC response header a node sets on a client
// request it had to forward because it does not lead the request's range.
// Its value is formatted by FormatRouteHint. A range-aware client takes it
// as its stale-range signal: the request succeeded, but the client's cache
// sent it to the wrong node.
const RouteHintHeader = "rangekv-route-hint"

// RouteHint is the content of a RouteHintHeader: the range that served
// the request, its descriptor generation on the forwarding node, and the
// node that led it.
type RouteHint struct {
	RangeID    uint64
	Generation uint64
	LeaderNode uint64
}

// FormatRouteHint renders h as "<range id> <generation> <leader node>",
// the first two decimal, the node ID in hex as etcd prints member IDs.
func FormatRouteHint(h RouteHint) string {
	return fmt.Sprintf("%d %d %x", h.RangeID, h.Generation, h.LeaderNode)
}

// ParseRouteHint parses a value written by FormatRouteHint, returning an
// error naming the value when it is malformed.
func ParseRouteHint(v string) (RouteHint, error) {
	f := strings.Fields(v)
	if len(f) != 3 {
		return RouteHint{}, fmt.Errorf("placement: malformed route hint %q", v)
	}
	var h RouteHint
	var err error
	if h.RangeID, err = strconv.ParseUint(f[0], 10, 64); err != nil {
		return RouteHint{}, fmt.Errorf("placement: malformed route hint %q", v)
	}
	if h.Generation, err = strconv.ParseUint(f[1], 10, 64); err != nil {
		return RouteHint{}, fmt.Errorf("placement: malformed route hint %q", v)
	}
	if h.LeaderNode, err = strconv.ParseUint(f[2], 16, 64); err != nil {
		return RouteHint{}, fmt.Errorf("placement: malformed route hint %q", v)
	}
	return h, nil
}
