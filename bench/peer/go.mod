module github.com/vmnet/vmnet/bench/peer

go 1.26.8

require (
	github.com/tailscale/wireguard-go v0.0.0-20250716170648-1d0488a3d7da
	github.com/vmnet/vmnet v0.0.0
	golang.org/x/sys v0.49.0
)

require (
	golang.org/x/net v0.55.0 // indirect
	golang.zx2c4.com/wintun v0.0.0-20230126152724-0fa3db229ce2 // indirect
)

replace github.com/vmnet/vmnet => ../..
