package peer

import "unsafe"

// tailscale's software GRO (handleGRO, which NativeTun.Write runs on every
// batch before writing to a tun with IFF_VNET_HDR) is unexported, and
// NativeTun.Write would add one write(2) per output. The benchmark calls the
// function itself through linkname; its table types are opaque pointers
// here, which is what they are to the calling convention.

//go:linkname tsHandleGRO github.com/tailscale/wireguard-go/tun.handleGRO
func tsHandleGRO(bufs [][]byte, offset int, tcpTable, udpTable unsafe.Pointer, gro int, toWrite *[]int) error

//go:linkname tsNewTCPGROTable github.com/tailscale/wireguard-go/tun.newTCPGROTable
func tsNewTCPGROTable() unsafe.Pointer

//go:linkname tsNewUDPGROTable github.com/tailscale/wireguard-go/tun.newUDPGROTable
func tsNewUDPGROTable() unsafe.Pointer

//go:linkname tsResetTCP github.com/tailscale/wireguard-go/tun.(*tcpGROTable).reset
func tsResetTCP(unsafe.Pointer)

//go:linkname tsResetUDP github.com/tailscale/wireguard-go/tun.(*udpGROTable).reset
func tsResetUDP(unsafe.Pointer)

// tsVnetHdrLen is the room handleGRO wants in front of each packet for the
// virtio header it writes (virtioNetHdrLen).
const tsVnetHdrLen = 10

// tsGRO is one NativeTun.Write's worth of GRO state.
type tsGRO struct {
	tcp, udp unsafe.Pointer
	toWrite  []int
}

func newTSGRO() *tsGRO {
	return &tsGRO{tcp: tsNewTCPGROTable(), udp: tsNewUDPGROTable(), toWrite: make([]int, 0, 128)}
}

// run coalesces bufs (each packet at offset, with tsVnetHdrLen bytes before
// it) as NativeTun.Write does, and returns the indices of the packets to write.
func (g *tsGRO) run(bufs [][]byte, offset int) ([]int, error) {
	g.toWrite = g.toWrite[:0]
	err := tsHandleGRO(bufs, offset, g.tcp, g.udp, 0, &g.toWrite)
	tsResetTCP(g.tcp)
	tsResetUDP(g.udp)
	return g.toWrite, err
}
