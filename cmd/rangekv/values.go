package main

import (
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/rangekv/rangekv/node"
)

// urlsValue is a pflag.Value holding a comma-separated URL list, checked
// with node.ParseURLs when set.
type urlsValue struct {
	urls []url.URL
}

func newURLsValue(urls []url.URL) *urlsValue { return &urlsValue{urls: slices.Clone(urls)} }

func (v *urlsValue) Set(s string) error {
	urls, err := node.ParseURLs(s)
	if err != nil {
		return err
	}
	v.urls = urls
	return nil
}

func (v *urlsValue) String() string {
	ss := make([]string, len(v.urls))
	for i := range v.urls {
		ss[i] = v.urls[i].String()
	}
	return strings.Join(ss, ",")
}

func (v *urlsValue) Type() string { return "urls" }

// clusterValue is a pflag.Value holding --initial-cluster, checked with
// node.ParseInitialCluster when set.
type clusterValue struct {
	members []node.InitialMember
}

func (v *clusterValue) Set(s string) error {
	m, err := node.ParseInitialCluster(s)
	if err != nil {
		return err
	}
	v.members = m
	return nil
}

func (v *clusterValue) String() string { return node.FormatInitialCluster(v.members) }

func (v *clusterValue) Type() string { return "name=url,..." }

// choiceValue is a pflag.Value accepting one of a fixed set of strings.
type choiceValue struct {
	val     string
	choices []string
}

func newChoiceValue(def string, choices ...string) *choiceValue {
	return &choiceValue{val: def, choices: choices}
}

func (v *choiceValue) Set(s string) error {
	if !slices.Contains(v.choices, s) {
		return fmt.Errorf("valid values are %s", quoteList(v.choices))
	}
	v.val = s
	return nil
}

func (v *choiceValue) String() string { return v.val }

func (v *choiceValue) Type() string { return "string" }

// quoteList renders ["a","b","c"] as `"a", "b" or "c"`.
func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	if len(q) <= 1 {
		return strings.Join(q, "")
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}
