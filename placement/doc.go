// Package placement owns where ranges are and how requests find them: the
// range directory kept in the meta range (descriptor records and their
// ordering rule), the range cache that routing clients keep, and the
// route hint by which a node tells a client its cache is stale.
//
// It depends only on txnproto, so that the range-aware Go client (package
// client) can use it without pulling in the storage engine.
package placement
