// Package identity finds who is calling from a plain view of the request. It
// knows no Envoy types: the caller adapts its request to the Request interface.
//
// An Extractor list is tried in order and the first credential found wins.
// API keys leave this package only as SHA-256 digests; the raw key is never
// stored, returned or logged.
package identity
