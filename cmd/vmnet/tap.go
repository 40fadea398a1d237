package main

import (
	"fmt"
	"net"
	"os/user"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vmnet/vmnet/bridge"
	"github.com/vmnet/vmnet/tap"
)

func tapCommand(e *env) *cobra.Command {
	return group("tap", "create, show, list and delete tap devices", `  vmnet tap create t0 --queues 4
  vmnet tap list --vmnet
  vmnet tap delete t0`,
		tapCreateCommand(e), tapShowCommand(e), tapListCommand(e), tapDeleteCommand(e))
}

type tapCreateFlags struct {
	queues, hdr, mtu, txq            int
	offl, own, grp, mac, br, qd, tag string
	best, persist                    bool
}

func tapCreateCommand(e *env) *cobra.Command {
	var f tapCreateFlags
	c := root(&cobra.Command{
		Use:   "create NAME",
		Short: "create a persistent multi-queue tap",
		Long: "Creates a persistent tap NAME with a virtio-net header, up and without a qdisc, ready for\n" +
			"QEMU (-netdev tap,ifname=NAME,script=no,downscript=no,vhost=on,queues=N). The tap carries\n" +
			"vmnet's owner tag, so `vmnet tap delete` removes it and nothing else.",
		Example: `  vmnet tap create t0
  vmnet tap create t0 --queues 4 --offload csum,tso4,tso6 --owner 1000
  vmnet tap create t1 --bridge br0 --mtu 9000   # the bridge's MTU must be 9000 too`,
		Args: nargs(1, 1),
		RunE: func(_ *cobra.Command, args []string) error { return tapCreate(e, args[0], &f) },
	})
	fs := c.Flags()
	fs.IntVar(&f.queues, "queues", 1, "number of queues (1..256); more than one makes a multi_queue tap")
	fs.IntVar(&f.hdr, "vnet-hdr-size", 12, "virtio-net header size: 12 (virtio 1.0, what QEMU uses), 10, or 0 for no header")
	fs.StringVar(&f.offl, "offload", "", "offloads to enable: csum,tso4,tso6,tso_ecn,ufo,uso (needs a vnet header)")
	fs.BoolVar(&f.best, "best-effort", false, "enable the largest subset of --offload the kernel supports instead of failing")
	fs.StringVar(&f.own, "owner", "", "`USER` (name or uid) allowed to attach queues without CAP_NET_ADMIN")
	fs.StringVar(&f.grp, "group", "", "`GROUP` (name or gid) allowed to attach queues without CAP_NET_ADMIN")
	fs.IntVar(&f.mtu, "mtu", 0, "MTU (default: the kernel's 1500, or the bridge's with --bridge; with --bridge it must equal the bridge's)")
	fs.StringVar(&f.mac, "mac", "", "MAC address of the host side (default: random)")
	fs.IntVar(&f.txq, "txqueuelen", 0, "transmit queue length (default: the kernel's)")
	fs.StringVar(&f.br, "bridge", "", "attach the tap to this existing `BRIDGE`")
	fs.StringVar(&f.qd, "qdisc", "noqueue", "root qdisc: noqueue (no buffering in front of the reader, as libvirt does) or default (the kernel's, one pfifo_fast per queue)")
	fs.BoolVar(&f.persist, "persist", true, "taps made from the command line are always persistent (they must outlive vmnet); --persist=false is refused")
	hide(fs, "persist")
	fs.StringVar(&f.tag, "tag", "", "owner `TAG` recorded on the tap: vmnet:adhoc (the default) or vmnet:lab:LAB; `vmnet tap delete` refuses taps of other owners")
	c.RegisterFlagCompletionFunc("qdisc", cobra.FixedCompletions([]string{"noqueue", "default"}, cobra.ShellCompDirectiveNoFileComp))
	c.RegisterFlagCompletionFunc("vnet-hdr-size", cobra.FixedCompletions([]string{"12", "10", "0"}, cobra.ShellCompDirectiveNoFileComp))
	return c
}

// checkTapCreate refuses flag values the kernel would take and change,
// or vmnet would ignore, as usage errors: nothing is guessed.
func checkTapCreate(name string, f *tapCreateFlags) error {
	switch {
	case name == "":
		return usagef("tap create: the tap name is empty (the kernel would pick one); give a name such as t0")
	case f.queues < 1 || f.queues > tap.MaxQueues:
		return usagef("tap %s: --queues %d: want 1..%d", name, f.queues, tap.MaxQueues)
	case f.hdr != 0 && f.hdr != 10 && f.hdr != 12:
		return usagef("tap %s: --vnet-hdr-size %d: want 12, 10 or 0", name, f.hdr)
	case f.mtu != 0 && (f.mtu < 68 || f.mtu > 65535):
		return usagef("tap %s: --mtu %d: want 68..65535 (or leave it out for the default)", name, f.mtu)
	case f.txq < 0:
		return usagef("tap %s: --txqueuelen %d: want 0 or more", name, f.txq)
	case !f.persist:
		return usagef("tap %s: --persist=false: taps made from the command line are always persistent (a non-persistent tap would vanish when vmnet exits)", name)
	}
	return nil
}

func tapCreate(e *env, name string, f *tapCreateFlags) error {
	if err := checkTapCreate(name, f); err != nil {
		return err
	}
	if err := checkIfArg("tap", name); err != nil {
		return err
	}
	tagged, err := tagArg(f.tag)
	if err != nil {
		return err
	}
	cfg := tap.NewConfig(name, f.queues)
	cfg.VnetHdrSize, cfg.BestEffort, cfg.Persist, cfg.MTU, cfg.TxQueueLen, cfg.Tag, cfg.Up = f.hdr, f.best, true, f.mtu, f.txq, tagged, true
	if cfg.Qdisc, err = tap.ParseQdisc(f.qd); err != nil {
		return usagef("tap %s: --qdisc: %v", name, err)
	}
	if f.offl != "" {
		if cfg.Offloads, err = tap.ParseOffloads(f.offl); err != nil {
			return usagef("tap %s: --offload %s: %v", name, f.offl, err)
		}
	}
	if f.own != "" {
		if cfg.Owner, err = lookupID(f.own, false); err != nil {
			return err
		}
	}
	if f.grp != "" {
		if cfg.Group, err = lookupID(f.grp, true); err != nil {
			return err
		}
	}
	if f.mac != "" {
		if cfg.MAC, err = net.ParseMAC(f.mac); err != nil {
			return usagef("tap %s: --mac %q: want a MAC address such as 52:54:00:12:34:56", name, f.mac)
		}
	}
	var m *bridge.Manager
	if f.br != "" {
		if m, err = bridge.NewCurrent(); err != nil {
			return err
		}
		defer m.Close()
		// Check the bridge first so a missing one leaves no tap behind.
		bi, err := m.Show(f.br)
		if err != nil {
			return fmt.Errorf("tap %s: --bridge %s: %w", name, f.br, err)
		}
		// A port takes its bridge's MTU; a different --mtu would silently
		// become the bridge's.
		if f.mtu != 0 && f.mtu != bi.MTU {
			return fmt.Errorf("tap %s: --mtu %d differs from the MTU %d of bridge %s: give --mtu %d, or leave --mtu out, or change the bridge's MTU first",
				name, f.mtu, bi.MTU, f.br, bi.MTU)
		}
	}
	// A bridge port's own addresses are never reached (the bridge takes
	// its frames); a tap on its own keeps the kernel's link-local address.
	cfg.NoLinkLocal = m != nil
	t, err := tap.Create(cfg)
	if err != nil {
		return err
	}
	defer t.Close()
	if m != nil {
		if err := m.AddPort(f.br, bridge.PortConfig{Name: t.Name()}); err != nil {
			if derr := tap.Delete(t.Name(), cfg.Tag, false); derr != nil {
				err = fmt.Errorf("%w (and removing the tap again failed: %v)", err, derr)
			}
			return err
		}
	}
	info, err := t.Describe()
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "created tap %s: %d queue(s), vnet_hdr %d, offloads %s\n", info.Name, len(t.Queues()), t.VnetHdrSize(), offloadText(info))
	return nil
}

func offloadText(i tap.Info) string {
	switch {
	case i.Offloads == nil:
		return "unknown (" + i.OffloadsError + ")"
	case *i.Offloads == 0:
		return "none"
	}
	return i.Offloads.String()
}

// lookupID resolves a user or group name, or a number, to an id.
func lookupID(s string, group bool) (int, error) {
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return n, nil
	}
	var id string
	if group {
		g, err := user.LookupGroup(s)
		if err != nil {
			return 0, fmt.Errorf("--group %s: no such group: give a group name from /etc/group or a numeric gid", s)
		}
		id = g.Gid
	} else {
		u, err := user.Lookup(s)
		if err != nil {
			return 0, fmt.Errorf("--owner %s: no such user: give a user name from /etc/passwd or a numeric uid", s)
		}
		id = u.Uid
	}
	return strconv.Atoi(id)
}

func tapShowCommand(e *env) *cobra.Command {
	var o output
	c := &cobra.Command{
		Use:   "show NAME",
		Short: "describe a tap as the kernel reports it",
		Example: `  vmnet tap show t0
  vmnet tap show t0 -o json`,
		Args: nargs(1, 1),
		RunE: func(_ *cobra.Command, args []string) error { return tapShow(e, args[0], o) },
	}
	o.register(c, "table", "json")
	return c
}

func tapShow(e *env, name string, o output) error {
	if err := checkIfArg("tap", name); err != nil {
		return err
	}
	info, err := tap.Describe(name)
	if err != nil {
		return err
	}
	if o.format == "json" {
		return writeJSON(e.stdout, info)
	}
	return tapTable(e, []tap.Info{info})
}

func tapListCommand(e *env) *cobra.Command {
	var o output
	var only bool
	c := &cobra.Command{
		Use:   "list",
		Short: "list the taps in this network namespace",
		Example: `  vmnet tap list
  vmnet tap list --vmnet -o json`,
		Args: nargs(0, 0),
		RunE: func(*cobra.Command, []string) error { return tapList(e, o, only) },
	}
	o.register(c, "table", "json")
	c.Flags().BoolVar(&only, "vmnet", false, "only taps that vmnet created")
	return c
}

func tapList(e *env, o output, only bool) error {
	all, err := tap.List()
	if err != nil {
		return err
	}
	infos := []tap.Info{}
	for _, i := range all {
		if !only || i.Tagged {
			infos = append(infos, i)
		}
	}
	if o.format == "json" {
		return writeJSON(e.stdout, infos)
	}
	return tapTable(e, infos)
}

func tapTable(e *env, infos []tap.Info) error {
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tSTATE\tQUEUES\tVNET_HDR\tOFFLOADS\tQDISC\tMTU\tMAC\tMASTER\tOWNER\tTAG")
	for _, i := range infos {
		queues := "1"
		if i.MultiQueue {
			queues = fmt.Sprintf("%d (%d disabled)", i.NumQueues, i.NumDisabledQueues)
		}
		own := "-"
		if i.Owner >= 0 {
			own = strconv.Itoa(i.Owner)
		}
		tag := "-"
		if i.Tagged {
			tag = i.Tag
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", i.Name, i.OperState, queues, i.VnetHdr,
			offloadText(i), dash(i.Qdisc), i.MTU, i.MAC, dash(i.Master), own, tag)
	}
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func tapDeleteCommand(e *env) *cobra.Command {
	var force bool
	var tagv string
	c := root(&cobra.Command{
		Use:   "delete NAME",
		Short: "delete a tap that vmnet created",
		Example: `  vmnet tap delete t0
  vmnet tap delete t-web-0 --tag vmnet:lab:web
  vmnet tap delete tap0 --force   # a tap vmnet did not create`,
		Args: nargs(1, 1),
		RunE: func(_ *cobra.Command, args []string) error { return tapDelete(e, args[0], force, tagv) },
	})
	c.Flags().BoolVar(&force, "force", false, "delete the tap even if vmnet did not create it")
	c.Flags().StringVar(&tagv, "tag", "", "owner `TAG` the tap must carry: vmnet:adhoc (the default) or vmnet:lab:LAB")
	return c
}

func tapDelete(e *env, name string, force bool, tag string) error {
	if err := checkIfArg("tap", name); err != nil {
		return err
	}
	own, err := tagArg(tag)
	if err != nil {
		return err
	}
	if err := tap.Delete(name, own, force); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "deleted tap %s\n", name)
	return nil
}
