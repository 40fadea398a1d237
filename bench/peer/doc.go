// Package peer holds benchmarks that run vnethdr's segmenter and coalescer
// against tailscale's fork of wireguard-go (package tun: GSOSplit and the
// GRO behind NativeTun.Write) on identical inputs, in one `go test -bench`
// run, so that the speed goals of issue 13 are ratios measured side by side.
//
// It is a module of its own so that the main module never depends on
// wireguard-go; scripts/bench-gso.sh (make bench-gso) runs it.
package peer
