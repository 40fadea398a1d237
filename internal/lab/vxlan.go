package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vmnet/vmnet/internal/nlretry"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/owner"
	"github.com/vmnet/vmnet/vmconfig"
	"golang.org/x/sys/unix"
)

// CheckUnderlay makes sure that the underlay address of the host whose
// part cfg is (vmconfig.Lab.Part) belongs to an interface of the calling
// thread's network namespace: VXLAN packets from another address would
// be sent with a source the peers do not expect, or not at all. `vmnet
// up` checks it before it starts anything; Up checks it again.
func CheckUnderlay(cfg *vmconfig.Lab) error { return checkUnderlay(&netlink.Handle{}, cfg) }

func (l *Lab) checkUnderlay() error { return checkUnderlay(l.br.Handle(), l.cfg) }

func checkUnderlay(nh *netlink.Handle, cfg *vmconfig.Lab) error {
	h := cfg.Host
	if h == nil {
		return nil
	}
	addrs, err := nlretry.Do(func() ([]netlink.Addr, error) { return nh.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("lab %s: host %s: list addresses: %w", cfg.Name, h.Name, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == h.Address {
			return nil
		}
	}
	return fmt.Errorf("lab %s: host %s: underlay address %s is not on this host (no interface in this network namespace has it): "+
		"run `vmnet up --host` with the name of this host, or fix address of [[host]] %q in the lab file", cfg.Name, h.Name, h.Address, h.Name)
}

// CheckVNIs makes sure that no VXLAN device in the calling thread's
// network namespace already carries the VNI (on the same port) or the
// device name of a network that the part cfg would span: on one host a
// VNI and port carry one layer-2 network, so another lab's device would
// join the two labs' networks, and the kernel refuses a second one
// anyway. `vmnet up` checks it before it claims anything (devices of cfg's
// own lab are then left to its check of an earlier run); Up checks it
// again before each VXLAN device.
func CheckVNIs(cfg *vmconfig.Lab) error { return checkVNIs(&netlink.Handle{}, cfg, nil) }

// checkVNIs checks every spanning network of cfg, or only the network
// only (then a device of cfg's own lab is an error too).
func checkVNIs(nh *netlink.Handle, cfg *vmconfig.Lab, only *vmconfig.Network) error {
	links, err := nlretry.Do(nh.LinkList)
	if err != nil {
		return fmt.Errorf("lab %s: list interfaces: %w", cfg.Name, err)
	}
	for _, n := range cfg.Networks {
		if n.VXLAN == nil || only != nil && n != only {
			continue
		}
		name := vmconfig.VXLANName(n.VXLAN.VNI)
		for _, ln := range links {
			vx, isVX := ln.(*netlink.Vxlan)
			sameVNI := isVX && vx.VxlanId == n.VXLAN.VNI && vx.Port == n.VXLAN.Port
			if ln.Attrs().Name != name && !sameVNI {
				continue
			}
			what := fmt.Sprintf("interface %s", ln.Attrs().Name)
			if isVX {
				what = fmt.Sprintf("VXLAN device %s (VNI %d, port %d)", ln.Attrs().Name, vx.VxlanId, vx.Port)
			}
			if m := ln.Attrs().MasterIndex; m > 0 {
				for _, br := range links {
					if br.Attrs().Index == m {
						what += " on bridge " + br.Attrs().Name
					}
				}
			}
			tag, _ := owner.Of(ln)
			other, isLab := owner.LabName(tag)
			switch {
			case isLab && other == cfg.Name && only == nil:
				continue
			case isLab && other == cfg.Name:
				return fmt.Errorf("lab %s: network %s (VNI %d, port %d): %s is left from an earlier run of this lab: run `vmnet down %s` first",
					cfg.Name, n.Name, n.VXLAN.VNI, n.VXLAN.Port, what, cfg.Name)
			case isLab:
				return fmt.Errorf("lab %s: network %s (VNI %d, port %d) clashes with lab %s, which is up on this host with %s: "+
					"on one host a VNI and port carry one network, so the two labs' networks would join; set vni = N on network %s to a VNI no other lab here uses, or bring lab %s down",
					cfg.Name, n.Name, n.VXLAN.VNI, n.VXLAN.Port, other, what, n.Name, other)
			default:
				return fmt.Errorf("lab %s: network %s (VNI %d, port %d): this host already has %s, which vmnet did not create for a lab: "+
					"set vni = N on network %s to another value, or remove that device",
					cfg.Name, n.Name, n.VXLAN.VNI, n.VXLAN.Port, what, n.Name)
			}
		}
	}
	return nil
}

// createVXLAN gives the bridge of n, which has VMs on other hosts too, a
// VXLAN device: tagged as the lab's, without learning (the peers are
// known), with one all-zeros FDB entry per peer, so that broadcast,
// unknown unicast and multicast frames are sent to each peer (head-end
// replication: the underlay needs no multicast). Called with l.mu held.
func (l *Lab) createVXLAN(n *vmconfig.Network) (err error) {
	v := n.VXLAN
	name := vmconfig.VXLANName(v.VNI)
	done := l.step("network " + n.Name + ": vxlan " + name)
	defer func() { done(err) }()
	if err := l.checkUnderlay(); err != nil {
		return err
	}
	h := l.br.Handle()
	if err := checkVNIs(h, l.cfg, n); err != nil {
		return err
	}
	br, err := h.LinkByName(n.Bridge)
	if err != nil {
		return fmt.Errorf("lab %s: network %s: bridge %s: %w", l.cfg.Name, n.Name, n.Bridge, err)
	}
	dev := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: n.MTU}, VxlanId: v.VNI,
		SrcAddr: net.IP(v.Local.AsSlice()), Port: v.Port, Learning: false}
	link, err := owner.Add(h, dev, owner.Lab(l.cfg.Name))
	if err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("lab %s: network %s: vxlan %s (VNI %d, port %d): %w: an interface of that name or a VXLAN device with that VNI and port exists already; "+
				"set vni = N on the network to another value, or remove the other device", l.cfg.Name, n.Name, name, v.VNI, v.Port, syscall.EEXIST)
		}
		return fmt.Errorf("lab %s: network %s: vxlan (VNI %d, port %d): %w", l.cfg.Name, n.Name, v.VNI, v.Port, err)
	}
	l.vxlans = append(l.vxlans, name)
	if err := l.saveLocked(); err != nil {
		return err
	}
	for _, peer := range v.Peers {
		if err := l.appendFlood(link.Attrs().Index, peer); err != nil {
			return fmt.Errorf("lab %s: network %s: vxlan %s: add flood entry for host %s (%s port %d): %w",
				l.cfg.Name, n.Name, name, peer.Host, peer.Address, peer.Port, err)
		}
	}
	if err := h.LinkSetMaster(link, br); err != nil {
		return fmt.Errorf("lab %s: network %s: attach vxlan %s to bridge %s: %w", l.cfg.Name, n.Name, name, n.Bridge, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("lab %s: network %s: vxlan %s: set up: %w", l.cfg.Name, n.Name, name, err)
	}
	return nil
}

// appendFlood adds the all-zeros FDB entry that sends a copy of every
// broadcast, multicast and unknown-unicast frame to peer: `bridge fdb
// append 00:00:00:00:00:00 dev DEV dst ADDR port PORT self permanent`.
// netlink.NeighAppend cannot carry the port (NDA_PORT), which a peer
// with another vxlan_port than this host's needs, so the request is built
// here, in the lab's namespace.
func (l *Lab) appendFlood(ifindex int, peer vmconfig.Peer) error {
	return netns.Do(l.ns, func() error {
		req := nl.NewNetlinkRequest(unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_APPEND|unix.NLM_F_ACK)
		req.AddData(&netlink.Ndmsg{Family: unix.AF_BRIDGE, Index: uint32(ifindex),
			State: uint16(netlink.NUD_PERMANENT | netlink.NUD_NOARP), Flags: uint8(netlink.NTF_SELF)})
		req.AddData(nl.NewRtAttr(unix.NDA_LLADDR, make([]byte, 6)))
		req.AddData(nl.NewRtAttr(unix.NDA_DST, peer.Address.AsSlice()))
		port := make([]byte, 2)
		binary.BigEndian.PutUint16(port, uint16(peer.Port))
		req.AddData(nl.NewRtAttr(unix.NDA_PORT, port))
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	})
}

// deleteVXLANs deletes the VXLAN devices this Lab created, if they still
// carry its tag. Called with l.mu held.
func (l *Lab) deleteVXLANs() error {
	var errs []error
	h := l.br.Handle()
	for i := len(l.vxlans) - 1; i >= 0; i-- {
		name := l.vxlans[i]
		link, err := h.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if !errors.As(err, &nf) {
				errs = append(errs, fmt.Errorf("vxlan %s: %w", name, err))
			}
			continue
		}
		if err := owner.Check(link, owner.Lab(l.cfg.Name)); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := h.LinkDel(link); err != nil && !errors.Is(err, syscall.ENODEV) {
			errs = append(errs, fmt.Errorf("vxlan %s: delete: %w", name, err))
		}
	}
	l.vxlans = nil
	return errors.Join(errs...)
}
