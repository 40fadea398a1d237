package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/vmnet/vmnet/bridge"
	"github.com/vmnet/vmnet/owner"
)

func bridgeCommand() *command {
	return &command{name: "bridge", summary: "create, show, list and delete bridges and their ports", subs: []*command{
		{name: "create", args: "NAME [flags] [--force]", summary: "create a bridge (or configure one vmnet made; others only with --force)", run: bridgeCreate},
		{name: "show", args: "NAME [-o table|json]", summary: "describe a bridge and its ports", run: bridgeShow},
		{name: "list", args: "[-o table|json] [--tag OWNER]", summary: "list the bridges vmnet created", run: bridgeList},
		{name: "delete", args: "NAME [--force]", summary: "delete a bridge that vmnet created", run: bridgeDelete},
		{name: "port", summary: "attach and detach bridge ports", subs: []*command{
			{name: "add", args: "BRIDGE PORT [flags]", summary: "attach an interface to a bridge", run: bridgePortAdd},
			{name: "del", args: "BRIDGE PORT", summary: "detach an interface from a bridge", run: bridgePortDel},
		}},
	}}
}

// onOff is a tri-state flag: unset, on or off.
type onOff struct{ v *bool }

func (o *onOff) String() string {
	if o.v == nil {
		return ""
	}
	return map[bool]string{true: "on", false: "off"}[*o.v]
}

func (o *onOff) Set(s string) error {
	switch s {
	case "on", "true", "1":
		t := true
		o.v = &t
	case "off", "false", "0":
		f := false
		o.v = &f
	default:
		return fmt.Errorf("want on or off, not %q", s)
	}
	return nil
}

// vlanList parses "10,20,30-32".
func vlanList(s string) ([]uint16, error) {
	var out []uint16
	for _, f := range strings.Split(s, ",") {
		lo, hi, rng := strings.Cut(strings.TrimSpace(f), "-")
		a, err := vlanID(lo)
		if err != nil {
			return nil, err
		}
		b := a
		if rng {
			if b, err = vlanID(hi); err != nil {
				return nil, err
			}
		}
		for v := a; v <= b && v >= a; v++ {
			out = append(out, v)
		}
	}
	return out, nil
}

func vlanID(s string) (uint16, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 4094 {
		return 0, fmt.Errorf("VLAN id %q: want a number from 1 to 4094", s)
	}
	return uint16(n), nil
}

type prefixList []netip.Prefix

func (p *prefixList) String() string { return fmt.Sprint(*p) }
func (p *prefixList) Set(s string) error {
	pf, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("%q: want an address with prefix length such as 10.0.0.1/24 or fd00::1/64", s)
	}
	*p = append(*p, pf)
	return nil
}

func bridgeCreate(e *env, args []string) error {
	fs := e.flags("vmnet bridge create", "NAME [--mtu N] [--address CIDR]... [--stp] [--vlan-filtering [--default-pvid N]] [--transparent | --group-fwd-mask MASK] [--mcast-snooping on|off] [--force]")
	mtu := fs.Int("mtu", 0, "MTU (default: 1500 on a new bridge)")
	var addrs prefixList
	fs.Var(&addrs, "address", "add an IPv4/IPv6 address with prefix length (repeatable)")
	stp := fs.Bool("stp", false, "run the spanning tree protocol")
	vf := fs.Bool("vlan-filtering", false, "turn on 802.1Q VLAN filtering")
	pvid := fs.Int("default-pvid", 0, "VLAN of untagged frames on ports without their own PVID (1..4094)")
	transparent := fs.Bool("transparent", false, "forward link-local frames (LLDP, 802.1X, ...) as far as the kernel allows, for network labs")
	mask := fs.String("group-fwd-mask", "", "group_fwd_mask as a number (e.g. 0x4000 for LLDP); overrides --transparent")
	var snoop onOff
	fs.Var(&snoop, "mcast-snooping", "multicast snooping on or off (default: the kernel's, on)")
	tag := fs.String("tag", "", "owner tag recorded on the bridge: vmnet:adhoc (the default) or vmnet:lab:LAB")
	force := fs.Bool("force", false, "configure an existing bridge that vmnet did not create (it is never tagged or deleted)")
	pos, err := fs.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if err := checkIfArg("bridge", pos[0]); err != nil {
		return err
	}
	own, err := tagArg(*tag)
	if err != nil {
		return err
	}
	if *pvid < 0 || *pvid > 4094 {
		return usagef("--default-pvid %d: want 1..4094", *pvid)
	}
	cfg := bridge.Config{Name: pos[0], MTU: *mtu, Addresses: addrs, STP: *stp, VLANFiltering: *vf,
		DefaultPVID: uint16(*pvid), MulticastSnooping: snoop.v, Owner: own, Reuse: *force}
	if *transparent {
		cfg.GroupFwdMask = bridge.TransparentMask
	}
	if *mask != "" {
		m, err := strconv.ParseUint(*mask, 0, 16)
		if err != nil {
			return usagef("--group-fwd-mask %s: want a 16-bit number such as 0x4000", *mask)
		}
		cfg.GroupFwdMask = uint16(m)
	}
	m, err := bridge.NewCurrent()
	if err != nil {
		return err
	}
	defer m.Close()
	created, err := m.Ensure(cfg)
	var iu *bridge.InUseError
	if errors.As(err, &iu) {
		return fmt.Errorf("%w; nothing was changed: use --force to configure it anyway (vmnet then changes only the settings given and never deletes it)", err)
	}
	if err != nil {
		return err
	}
	verb := "configured existing"
	if created {
		verb = "created"
	}
	fmt.Fprintf(e.stdout, "%s bridge %s\n", verb, cfg.Name)
	return nil
}

func bridgeShow(e *env, args []string) error {
	fs := e.flags("vmnet bridge show", "NAME [-o table|json]")
	var o output
	o.register(fs, "table", "json")
	pos, err := fs.parse(args, 1, 1)
	if err != nil {
		return err
	}
	m, err := bridge.NewCurrent()
	if err != nil {
		return err
	}
	defer m.Close()
	info, err := m.Show(pos[0])
	if err != nil {
		return err
	}
	if o.format == "json" {
		return writeJSON(e.stdout, info)
	}
	return bridgeTable(e, []bridge.Info{info}, true)
}

func bridgeList(e *env, args []string) error {
	fs := e.flags("vmnet bridge list", "[-o table|json] [--tag OWNER]")
	var o output
	o.register(fs, "table", "json")
	tag := fs.String("tag", "", "only bridges of this owner tag, e.g. vmnet:adhoc or vmnet:lab:LAB (default: every bridge vmnet created)")
	if _, err := fs.parse(args, 0, 0); err != nil {
		return err
	}
	m, err := bridge.NewCurrent()
	if err != nil {
		return err
	}
	defer m.Close()
	var infos []bridge.Info
	if *tag == "" {
		infos, err = m.ListAll()
	} else if err = owner.Valid(*tag); err != nil {
		return usagef("--tag: %v", err)
	} else {
		infos, err = m.List(*tag)
	}
	if err != nil {
		return err
	}
	if infos == nil {
		infos = []bridge.Info{}
	}
	if o.format == "json" {
		return writeJSON(e.stdout, infos)
	}
	return bridgeTable(e, infos, false)
}

func bridgeTable(e *env, infos []bridge.Info, ports bool) error {
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tSTATE\tMTU\tADDRESSES\tSTP\tVLAN_FILTERING\tGROUP_FWD_MASK\tPORTS\tOWNER")
	for _, i := range infos {
		var names, addrs []string
		for _, p := range i.Ports {
			names = append(names, p.Name)
		}
		for _, a := range i.Addresses {
			addrs = append(addrs, a.String())
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%v\t%v\t%#04x\t%s\t%s\n", i.Name, i.OperState, i.MTU, dash(strings.Join(addrs, ",")),
			i.STP, i.VLANFiltering, i.GroupFwdMask, dash(strings.Join(names, ",")), dash(i.Owner))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if !ports || len(infos) != 1 || len(infos[0].Ports) == 0 {
		return nil
	}
	fmt.Fprintln(e.stdout)
	w = tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PORT\tTYPE\tSTATE\tSTP_STATE\tMTU\tPVID\tVLANS\tHAIRPIN\tISOLATED\tLEARNING\tFLOOD\tOWNER")
	for _, p := range infos[0].Ports {
		var vl []string
		for _, v := range p.VLANs {
			s := strconv.Itoa(int(v.ID))
			if v.Untagged {
				s += "u"
			}
			vl = append(vl, s)
		}
		pvid := "-"
		if p.PVID != 0 {
			pvid = strconv.Itoa(int(p.PVID))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%v\t%v\t%v\t%v\t%s\n", p.Name, p.Type, p.OperState, p.STPState, p.MTU,
			pvid, dash(strings.Join(vl, ",")), p.Hairpin, p.Isolated, p.Learning, p.Flood, dash(p.Owner))
	}
	return w.Flush()
}

func bridgeDelete(e *env, args []string) error {
	fs := e.flags("vmnet bridge delete", "NAME [--force] [--tag OWNER]")
	force := fs.Bool("force", false, "delete the bridge even if vmnet did not create it")
	tag := fs.String("tag", "", "owner tag the bridge must carry: vmnet:adhoc (the default) or vmnet:lab:LAB")
	pos, err := fs.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if err := checkIfArg("bridge", pos[0]); err != nil {
		return err
	}
	own, err := tagArg(*tag)
	if err != nil {
		return err
	}
	m, err := bridge.NewCurrent()
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.Delete(pos[0], own, *force); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "deleted bridge %s\n", pos[0])
	return nil
}

func bridgePortAdd(e *env, args []string) error {
	fs := e.flags("vmnet bridge port add", "BRIDGE PORT [--pvid N] [--tagged 10,20-30] [--isolated] [--hairpin] [--learning on|off] [--flood on|off] [--transparent]")
	pvid := fs.Int("pvid", 0, "VLAN of untagged frames on this port (needs VLAN filtering)")
	tagged := fs.String("tagged", "", "VLANs carried tagged on this port, e.g. 10,20-30 (needs VLAN filtering)")
	iso := fs.Bool("isolated", false, "isolated ports do not talk to each other")
	hair := fs.Bool("hairpin", false, "send frames back out of the port they came in on")
	var learn, flood onOff
	fs.Var(&learn, "learning", "source MAC learning on or off (default on)")
	fs.Var(&flood, "flood", "unknown unicast flooding on or off (default on)")
	transparent := fs.Bool("transparent", false, "forward link-local frames arriving on this port, LACP and STP included")
	pos, err := fs.parse(args, 2, 2)
	if err != nil {
		return err
	}
	p := bridge.PortConfig{Name: pos[1], Isolated: *iso, Hairpin: *hair, Learning: learn.v, Flood: flood.v}
	if *pvid != 0 {
		if p.PVID, err = vlanID(strconv.Itoa(*pvid)); err != nil {
			return usagef("--pvid: %v", err)
		}
	}
	if *tagged != "" {
		if p.Tagged, err = vlanList(*tagged); err != nil {
			return usagef("--tagged: %v", err)
		}
	}
	if *transparent {
		p.GroupFwdMask = bridge.PortTransparentMask
	}
	m, err := bridge.NewCurrent()
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.AddPort(pos[0], p); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "attached %s to bridge %s\n", pos[1], pos[0])
	return nil
}

func bridgePortDel(e *env, args []string) error {
	fs := e.flags("vmnet bridge port del", "BRIDGE PORT")
	pos, err := fs.parse(args, 2, 2)
	if err != nil {
		return err
	}
	m, err := bridge.NewCurrent()
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.RemovePort(pos[0], pos[1]); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "detached %s from bridge %s\n", pos[1], pos[0])
	return nil
}
