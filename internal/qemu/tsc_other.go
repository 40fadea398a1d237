//go:build !amd64

package qemu

func hostTSCkHz() int { return 0 }
