package link

import (
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/owner"
	"github.com/vmnet/vmnet/vmconfig"
)

// The VXLAN tunnel (vxlan:REMOTE,vni=N,...). The udp: tunnel copies every
// super-frame through vmnet's process four times (tap read, UDP send,
// UDP receive, tap write); a kernel vxlan device encapsulates in the
// kernel, keeps GSO super-frames whole across the underlay (UDP tunnel
// GSO) and decapsulates them whole. The endpoint is that device, made
// for the link and deleted with it: between it and a local interface the
// kernel data path (kernel.go) redirects frames both ways, as
// containerlab's vxlan-stitch does; where the kernel lacks clsact, u32 or
// mirred, the link reads and writes the device with AF_PACKET, like a
// packet: endpoint.
//
// The wire format is VXLAN (RFC 7348), which Linux, Open vSwitch,
// containerlab and hardware switches speak; QEMU's -netdev dgram and
// ubridge speak raw Ethernet over UDP: the udp: endpoint.

// vxlanOwner tags the devices a link makes. Link devices live as long as
// their link: `vmnet tap delete`/`bridge delete` refuse them (not a tap,
// not a bridge), and a device left by a killed vmnet is named in the
// error of the next link that wants its VNI.
const vxlanOwner = owner.AdHoc

// vxlanInfo is what an MTU error needs to say about a vxlan endpoint.
type vxlanInfo struct {
	mtu      int    // the device's
	under    string // the underlay interface
	underMTU int    // its MTU (or the route's)
	overhead int    // vmconfig.VXLANOverhead or VXLANOverhead6
}

// openVXLAN creates the vxlan device of ep in the calling thread's
// namespace, tagged as vmnet's, and opens it like a packet: endpoint.
// Its MTU is the underlay's less VXLAN's overhead, so that a full-sized
// inner frame leaves as one unfragmented outer packet. Close deletes the
// device, if it is still the one vmnet made.
func openVXLAN(ep vmconfig.Endpoint, opts OpenOptions) (_ *Endpoint, err error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE) // only ROUTE: xfrm_user may be missing (guest kernels)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	remote := ep.Remote.Addr()
	info := vxlanInfo{overhead: vmconfig.VXLANOverhead}
	if remote.Is6() {
		info.overhead = vmconfig.VXLANOverhead6
	}
	var under netlink.Link
	if ep.Dev != "" {
		if under, err = h.LinkByName(ep.Dev); err != nil {
			return nil, fmt.Errorf("underlay interface %s (dev=): %w: give an interface of this network namespace", ep.Dev, err)
		}
		info.under, info.underMTU = ep.Dev, under.Attrs().MTU
	} else {
		routes, err := h.RouteGet(net.IP(remote.AsSlice()))
		if err != nil || len(routes) == 0 {
			return nil, fmt.Errorf("no route to %s in this network namespace (%v): give the underlay an address and route to the peer, or name its interface with dev=IFACE", remote, err)
		}
		r := routes[0]
		l, err := h.LinkByIndex(r.LinkIndex)
		if err != nil {
			return nil, fmt.Errorf("underlay interface %d of the route to %s: %w", r.LinkIndex, remote, err)
		}
		info.under, info.underMTU = l.Attrs().Name, l.Attrs().MTU
		if r.MTU > 0 && r.MTU < info.underMTU {
			info.underMTU = r.MTU
		}
	}
	if ep.Local.IsValid() && !ep.Local.Addr().IsUnspecified() {
		// The kernel takes any local address, and then sends nothing
		// the peer accepts.
		addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("list addresses: %w", err)
		}
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IP.Equal(net.IP(ep.Local.Addr().AsSlice())) }) {
			return nil, fmt.Errorf("local %s is not an address of this host (no interface in this network namespace has it): give one of its addresses, or leave local= out", ep.Local.Addr())
		}
	}
	info.mtu = info.underMTU - info.overhead
	if info.mtu < 68 {
		return nil, fmt.Errorf("underlay interface %s has MTU %d: VXLAN adds %d bytes, which leaves no room for a frame; raise its MTU", info.under, info.underMTU, info.overhead)
	}
	name := vmconfig.VXLANName(ep.VNI) // a lab's network of that VNI would clash anyway
	dev := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: info.mtu}, VxlanId: ep.VNI,
		Group: net.IP(remote.AsSlice()), Port: int(ep.Remote.Port()), Learning: false}
	if ep.Local.IsValid() {
		dev.SrcAddr = net.IP(ep.Local.Addr().AsSlice())
	}
	if under != nil {
		dev.VtepDevIndex = under.Attrs().Index
	}
	link, err := owner.Add(h, dev, vxlanOwner)
	switch {
	case errors.Is(err, unix.EEXIST):
		what, dev := clash(h, name, ep.VNI, int(ep.Remote.Port()))
		return nil, fmt.Errorf("vxlan device %s (VNI %d, port %d): %w: %s exists already: "+
			"use another vni, or remove it (`ip link del %s`) if a vmnet that was killed left it", name, ep.VNI, ep.Remote.Port(), unix.EEXIST, what, dev)
	case errors.Is(err, unix.EOPNOTSUPP): // rtnetlink: no such link kind
		return nil, fmt.Errorf("vxlan device %s: %w: this kernel has no VXLAN (CONFIG_VXLAN, module vxlan): load it with `modprobe vxlan`, or use a udp endpoint", name, err)
	case err != nil:
		return nil, fmt.Errorf("vxlan device %w", err)
	}
	index := link.Attrs().Index
	del := func() error { return deleteVXLAN(h, name, index) }
	defer func() {
		if err != nil {
			del()
		}
	}()
	// No IPv6 link-local address: the host would send its router
	// solicitations and MLD reports down the tunnel into the far segment.
	// A kernel without IPv6 refuses the setting and sends nothing anyway.
	if err := h.LinkSetIP6AddrGenMode(link, nl.IN6_ADDR_GEN_MODE_NONE); err != nil && !errors.Is(err, unix.EAFNOSUPPORT) {
		return nil, fmt.Errorf("vxlan device %s: turn off its IPv6 link-local address: %w", name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("vxlan device %s: set up: %w", name, err)
	}
	e, err := openPacket(vmconfig.Endpoint{Kind: vmconfig.KindPacket, Name: name}, opts)
	if err != nil {
		return nil, err
	}
	e.created, e.vxlan = true, &info
	closeSockets := e.closeFn
	e.closeFn = func() error {
		// The sockets first: the device then goes without readers.
		err := closeSockets()
		dh, herr := netlink.NewHandleAt(e.ns, unix.NETLINK_ROUTE)
		if herr != nil {
			return errors.Join(err, fmt.Errorf("vxlan device %s: netlink: %w", name, herr))
		}
		defer dh.Close()
		return errors.Join(err, deleteVXLAN(dh, name, index))
	}
	return e, nil
}

// clash describes the device that kept a vxlan device from being made:
// an interface of its name, or a VXLAN device with its VNI and port.
func clash(h *netlink.Handle, name string, vni, port int) (what, dev string) {
	links, _ := h.LinkList()
	for _, l := range links {
		vx, isVX := l.(*netlink.Vxlan)
		switch {
		case l.Attrs().Name == name && isVX:
			return fmt.Sprintf("a VXLAN device named %s (tag %q)", name, l.Attrs().Alias), name
		case l.Attrs().Name == name:
			return fmt.Sprintf("an interface named %s (a %s)", name, l.Type()), name
		case isVX && vx.VxlanId == vni && vx.Port == port:
			return fmt.Sprintf("VXLAN device %s, with that VNI and port,", l.Attrs().Name), l.Attrs().Name
		}
	}
	return "an interface of that name, or a VXLAN device with that VNI and port,", "DEVICE"
}

// deleteVXLAN deletes the device vmnet made (name at index), if it is
// still there and still tagged as vmnet's: a device someone made since
// under that name or index is not vmnet's to delete.
func deleteVXLAN(h *netlink.Handle, name string, index int) error {
	link, err := h.LinkByIndex(index)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil // gone already (its namespace too)
		}
		return fmt.Errorf("vxlan device %s: %w", name, err)
	}
	if link.Attrs().Name != name || link.Type() != "vxlan" {
		return nil
	}
	if err := owner.Check(link, vxlanOwner); err != nil {
		return fmt.Errorf("vxlan device %w: left in place", err)
	}
	if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("vxlan device %s: delete: %w", name, err)
	}
	return nil
}

// fitVXLANMTU makes sure the vxlan end of a link can carry what the
// other end sends, whole: otherwise the kernel would fragment the outer
// packets (VXLAN sends them without DF) or drop them, and the guests would
// see a black hole for full-sized frames. A tap the link created itself
// (nothing else has set it up yet) takes the tunnel's MTU, as the
// interfaces of overlay networks do (the guests behind it then need that
// MTU too: logf says so); any other interface keeps its MTU, and a link
// whose interface does not fit is refused with both MTUs and both ways
// out.
func fitVXLANMTU(a, b *Endpoint, logf func(string, ...any)) error {
	for _, p := range [][2]*Endpoint{{a, b}, {b, a}} {
		v, o := p[0], p[1]
		if v.vxlan == nil || o.ifindex == 0 {
			continue // a tunnel's far end has no MTU of its own
		}
		mtu := o.maxFrame - ethOverhead
		if mtu <= v.vxlan.mtu {
			continue
		}
		why := fmt.Sprintf("%s carries frames of at most %d bytes (underlay interface %s has MTU %d, and VXLAN adds %d)",
			v, v.vxlan.mtu, v.vxlan.under, v.vxlan.underMTU, v.vxlan.overhead)
		if o.kind == vmconfig.KindTap && o.created {
			if err := setMTU(o, v.vxlan.mtu); err != nil {
				return fmt.Errorf("tap %s: set MTU %d to fit the tunnel: %w", o.ifname, v.vxlan.mtu, err)
			}
			o.maxFrame = v.vxlan.mtu + ethOverhead
			logf("tap %s: MTU %d, not %d: %s; give the guests and bridge ports behind it MTU %d, or raise the underlay's MTU to %d for %d-byte frames",
				o.ifname, v.vxlan.mtu, mtu, why, v.vxlan.mtu, mtu+v.vxlan.overhead, mtu)
			continue
		}
		return fmt.Errorf("interface %s has MTU %d, but %s: lower the MTU of %s to %d (`ip link set %s mtu %d`), or raise the underlay's MTU to %d",
			o.ifname, mtu, why, o.ifname, v.vxlan.mtu, o.ifname, v.vxlan.mtu, mtu+v.vxlan.overhead)
	}
	return nil
}

// setMTU sets the MTU of e's interface, in its namespace.
func setMTU(e *Endpoint, mtu int) error {
	h, err := netlink.NewHandleAt(e.ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	return h.LinkSetMTU(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: e.ifindex}}, mtu)
}
