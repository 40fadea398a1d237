package main

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vmnet/vmnet/bridge"
	"github.com/vmnet/vmnet/owner"
)

func bridgeCommand(e *env) *cobra.Command {
	return group("bridge", "create, show, list and delete bridges and their ports", `  vmnet bridge create br0 --address 10.0.0.1/24
  vmnet bridge port add br0 t0
  vmnet bridge delete br0`,
		bridgeCreateCommand(e), bridgeShowCommand(e), bridgeListCommand(e), bridgeDeleteCommand(e),
		group("port", "attach and detach bridge ports", `  vmnet bridge port add br0 t0 --pvid 10 --tagged 20,30-32
  vmnet bridge port del br0 t0`, bridgePortAddCommand(e), bridgePortDelCommand(e)))
}

// onOff is a tri-state flag: unset, on or off.
type onOff struct{ v *bool }

func (o *onOff) String() string {
	if o.v == nil {
		return ""
	}
	return map[bool]string{true: "on", false: "off"}[*o.v]
}

func (o *onOff) Type() string { return "on|off" }

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
			if b < a {
				return nil, fmt.Errorf("VLAN range %q runs backwards: write %d-%d", strings.TrimSpace(f), b, a)
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
func (p *prefixList) Type() string   { return "CIDR" }
func (p *prefixList) Set(s string) error {
	pf, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("%q: want an address with prefix length such as 10.0.0.1/24 or fd00::1/64", s)
	}
	*p = append(*p, pf)
	return nil
}

type bridgeCreateFlags struct {
	mtu, pvid            int
	addrs                prefixList
	stp, vf, transparent bool
	mask, tag            string
	snoop                onOff
	force                bool
}

func bridgeCreateCommand(e *env) *cobra.Command {
	var f bridgeCreateFlags
	c := root(&cobra.Command{
		Use:   "create NAME",
		Short: "create a bridge (or configure one vmnet made; others only with --force)",
		Example: `  vmnet bridge create br0
  vmnet bridge create br0 --mtu 9000 --address 10.0.0.1/24 --address fd00::1/64
  vmnet bridge create lab0 --vlan-filtering --default-pvid 10 --transparent
  vmnet bridge create virbr0 --stp --force   # a bridge vmnet did not create`,
		Args: nargs(1, 1),
		RunE: func(_ *cobra.Command, args []string) error { return bridgeCreate(e, args[0], &f) },
	})
	fs := c.Flags()
	fs.IntVar(&f.mtu, "mtu", 0, "MTU (default: 1500 on a new bridge)")
	fs.Var(&f.addrs, "address", "add an IPv4/IPv6 address with prefix length (repeatable)")
	fs.BoolVar(&f.stp, "stp", false, "run the spanning tree protocol")
	fs.BoolVar(&f.vf, "vlan-filtering", false, "turn on 802.1Q VLAN filtering")
	fs.IntVar(&f.pvid, "default-pvid", 0, "VLAN of untagged frames on ports without their own PVID (1..4094)")
	fs.BoolVar(&f.transparent, "transparent", false, "forward link-local frames (LLDP, 802.1X, ...) as far as the kernel allows, for network labs")
	fs.StringVar(&f.mask, "group-fwd-mask", "", "group_fwd_mask as a number (e.g. 0x4000 for LLDP); overrides --transparent")
	fs.Var(&f.snoop, "mcast-snooping", "multicast snooping on or off (default: the kernel's, on)")
	fs.StringVar(&f.tag, "tag", "", "owner `TAG` recorded on the bridge: vmnet:adhoc (the default) or vmnet:lab:LAB")
	fs.BoolVar(&f.force, "force", false, "configure an existing bridge that vmnet did not create (it is never tagged or deleted)")
	c.RegisterFlagCompletionFunc("mcast-snooping", cobra.FixedCompletions([]string{"on", "off"}, cobra.ShellCompDirectiveNoFileComp))
	return c
}

func bridgeCreate(e *env, name string, f *bridgeCreateFlags) error {
	if err := checkIfArg("bridge", name); err != nil {
		return err
	}
	switch {
	case f.mtu != 0 && (f.mtu < 68 || f.mtu > 65535):
		return usagef("bridge %s: --mtu %d: want 68..65535 (or leave it out for the default)", name, f.mtu)
	case f.pvid < 0 || f.pvid > 4094:
		return usagef("bridge %s: --default-pvid %d: want 1..4094", name, f.pvid)
	}
	own, err := tagArg(f.tag)
	if err != nil {
		return err
	}
	cfg := bridge.Config{Name: name, MTU: f.mtu, Addresses: f.addrs, STP: f.stp, VLANFiltering: f.vf,
		DefaultPVID: uint16(f.pvid), MulticastSnooping: f.snoop.v, Owner: own, Reuse: f.force}
	if f.transparent {
		cfg.GroupFwdMask = bridge.TransparentMask
	}
	if f.mask != "" {
		m, err := strconv.ParseUint(f.mask, 0, 16)
		if err != nil {
			return usagef("bridge %s: --group-fwd-mask %s: want a 16-bit number such as 0x4000", name, f.mask)
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

func bridgeShowCommand(e *env) *cobra.Command {
	var o output
	c := &cobra.Command{
		Use:   "show NAME",
		Short: "describe a bridge and its ports",
		Example: `  vmnet bridge show br0
  vmnet bridge show br0 -o json`,
		Args: nargs(1, 1),
		RunE: func(_ *cobra.Command, args []string) error { return bridgeShow(e, args[0], o) },
	}
	o.register(c, "table", "json")
	return c
}

func bridgeShow(e *env, name string, o output) error {
	if err := checkIfArg("bridge", name); err != nil {
		return err
	}
	m, err := bridge.NewCurrent()
	if err != nil {
		return err
	}
	defer m.Close()
	info, err := m.Show(name)
	if err != nil {
		return err
	}
	if o.format == "json" {
		return writeJSON(e.stdout, info)
	}
	return bridgeTable(e, []bridge.Info{info}, true)
}

func bridgeListCommand(e *env) *cobra.Command {
	var o output
	var tag string
	c := &cobra.Command{
		Use:   "list",
		Short: "list the bridges vmnet created",
		Example: `  vmnet bridge list
  vmnet bridge list --tag vmnet:lab:demo -o json`,
		Args: nargs(0, 0),
		RunE: func(*cobra.Command, []string) error { return bridgeList(e, o, tag) },
	}
	o.register(c, "table", "json")
	c.Flags().StringVar(&tag, "tag", "", "only bridges of this owner `TAG`, e.g. vmnet:adhoc or vmnet:lab:LAB (default: every bridge vmnet created)")
	return c
}

func bridgeList(e *env, o output, tag string) error {
	if tag != "" {
		if err := owner.Valid(tag); err != nil {
			return usagef("--tag: %v", err)
		}
	}
	m, err := bridge.NewCurrent()
	if err != nil {
		return err
	}
	defer m.Close()
	var infos []bridge.Info
	if tag == "" {
		infos, err = m.ListAll()
	} else {
		infos, err = m.List(tag)
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

func bridgeDeleteCommand(e *env) *cobra.Command {
	var force bool
	var tag string
	c := root(&cobra.Command{
		Use:   "delete NAME",
		Short: "delete a bridge that vmnet created",
		Example: `  vmnet bridge delete br0
  vmnet bridge delete demo-lan --tag vmnet:lab:demo`,
		Args: nargs(1, 1),
		RunE: func(_ *cobra.Command, args []string) error { return bridgeDelete(e, args[0], force, tag) },
	})
	c.Flags().BoolVar(&force, "force", false, "delete the bridge even if vmnet did not create it")
	c.Flags().StringVar(&tag, "tag", "", "owner `TAG` the bridge must carry: vmnet:adhoc (the default) or vmnet:lab:LAB")
	return c
}

func bridgeDelete(e *env, name string, force bool, tag string) error {
	if err := checkIfArg("bridge", name); err != nil {
		return err
	}
	own, err := tagArg(tag)
	if err != nil {
		return err
	}
	m, err := bridge.NewCurrent()
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.Delete(name, own, force); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "deleted bridge %s\n", name)
	return nil
}

type portAddFlags struct {
	pvid                   int
	tagged                 string
	iso, hair, transparent bool
	learn, flood           onOff
}

func bridgePortAddCommand(e *env) *cobra.Command {
	var f portAddFlags
	c := root(&cobra.Command{
		Use:   "add BRIDGE PORT",
		Short: "attach an interface to a bridge",
		Example: `  vmnet bridge port add br0 t0
  vmnet bridge port add br0 t1 --pvid 10 --tagged 20,30-32
  vmnet bridge port add br0 t2 --isolated --learning off`,
		Args: nargs(2, 2),
		RunE: func(_ *cobra.Command, args []string) error { return bridgePortAdd(e, args, &f) },
	})
	fs := c.Flags()
	fs.IntVar(&f.pvid, "pvid", 0, "VLAN of untagged frames on this port (needs VLAN filtering)")
	fs.StringVar(&f.tagged, "tagged", "", "VLANs carried tagged on this port, e.g. 10,20-30 (needs VLAN filtering)")
	fs.BoolVar(&f.iso, "isolated", false, "isolated ports do not talk to each other")
	fs.BoolVar(&f.hair, "hairpin", false, "send frames back out of the port they came in on")
	fs.Var(&f.learn, "learning", "source MAC learning on or off (default on)")
	fs.Var(&f.flood, "flood", "unknown unicast flooding on or off (default on)")
	fs.BoolVar(&f.transparent, "transparent", false, "forward link-local frames arriving on this port, LACP and STP included")
	for _, n := range []string{"learning", "flood"} {
		c.RegisterFlagCompletionFunc(n, cobra.FixedCompletions([]string{"on", "off"}, cobra.ShellCompDirectiveNoFileComp))
	}
	return c
}

func bridgePortAdd(e *env, pos []string, f *portAddFlags) (err error) {
	br, port := pos[0], pos[1]
	if err := checkIfArg("bridge", br); err != nil {
		return err
	}
	if err := checkIfArg("port", port); err != nil {
		return err
	}
	p := bridge.PortConfig{Name: port, Isolated: f.iso, Hairpin: f.hair, Learning: f.learn.v, Flood: f.flood.v}
	if f.pvid != 0 {
		if p.PVID, err = vlanID(strconv.Itoa(f.pvid)); err != nil {
			return usagef("bridge %s: port %s: --pvid: %v", br, port, err)
		}
	}
	if f.tagged != "" {
		if p.Tagged, err = vlanList(f.tagged); err != nil {
			return usagef("bridge %s: port %s: --tagged: %v", br, port, err)
		}
	}
	if f.transparent {
		p.GroupFwdMask = bridge.PortTransparentMask
	}
	m, err := bridge.NewCurrent()
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.AddPort(br, p); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "attached %s to bridge %s\n", port, br)
	return nil
}

func bridgePortDelCommand(e *env) *cobra.Command {
	return root(&cobra.Command{
		Use:     "del BRIDGE PORT",
		Short:   "detach an interface from a bridge",
		Example: `  vmnet bridge port del br0 t0`,
		Args:    nargs(2, 2),
		RunE:    func(_ *cobra.Command, args []string) error { return bridgePortDel(e, args) },
	})
}

func bridgePortDel(e *env, pos []string) error {
	if err := checkIfArg("bridge", pos[0]); err != nil {
		return err
	}
	if err := checkIfArg("port", pos[1]); err != nil {
		return err
	}
	m, err := bridge.NewCurrent()
	if err != nil {
		return err
	}
	defer m.Close()
	// RemovePort leaves an interface that is not a port alone and says
	// nothing (a lab's teardown relies on that); from the command line it
	// is a mistake worth naming.
	info, err := m.Show(pos[0])
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(info.Ports, func(p bridge.PortInfo) bool { return p.Name == pos[1] }) {
		return fmt.Errorf("bridge %s: %s is not a port of bridge %s; nothing was changed", pos[0], pos[1], pos[0])
	}
	if err := m.RemovePort(pos[0], pos[1]); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "detached %s from bridge %s\n", pos[1], pos[0])
	return nil
}
