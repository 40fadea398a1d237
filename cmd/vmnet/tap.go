package main

import (
	"fmt"
	"net"
	"os/user"
	"strconv"
	"text/tabwriter"

	"github.com/vmnet/vmnet/bridge"
	"github.com/vmnet/vmnet/tap"
)

func tapCommand() *command {
	return &command{name: "tap", summary: "create, show, list and delete tap devices", subs: []*command{
		{name: "create", args: "NAME [flags]", summary: "create a persistent multi-queue tap", run: tapCreate},
		{name: "show", args: "NAME [-o table|json]", summary: "describe a tap as the kernel reports it", run: tapShow},
		{name: "list", args: "[-o table|json] [--vmnet]", summary: "list the taps in this network namespace", run: tapList},
		{name: "delete", args: "NAME [--force]", summary: "delete a tap that vmnet created", run: tapDelete},
	}}
}

func tapCreate(e *env, args []string) error {
	fs := e.flags("vmnet tap create", "NAME [--queues N] [--vnet-hdr-size 10|12|0] [--offload csum,tso4,tso6,tso_ecn,ufo,uso] [--owner USER|UID] [--group GROUP|GID] [--mtu N] [--mac MAC] [--bridge BR] [--qdisc noqueue|default] [--persist]")
	queues := fs.Int("queues", 1, "number of queues (1..256); more than one makes a multi_queue tap")
	hdr := fs.Int("vnet-hdr-size", 12, "virtio-net header size: 12 (virtio 1.0, what QEMU uses), 10, or 0 for no header")
	offl := fs.String("offload", "", "offloads to enable: csum,tso4,tso6,tso_ecn,ufo,uso (needs a vnet header)")
	best := fs.Bool("best-effort", false, "enable the largest subset of --offload the kernel supports instead of failing")
	own := fs.String("owner", "", "user (name or uid) allowed to attach queues without CAP_NET_ADMIN")
	grp := fs.String("group", "", "group (name or gid) allowed to attach queues without CAP_NET_ADMIN")
	mtu := fs.Int("mtu", 0, "MTU (default: the kernel's 1500, or the bridge's with --bridge)")
	mac := fs.String("mac", "", "MAC address of the host side (default: random)")
	txq := fs.Int("txqueuelen", 0, "transmit queue length (default: the kernel's)")
	br := fs.String("bridge", "", "attach the tap to this existing bridge")
	qd := fs.String("qdisc", "noqueue", "root qdisc: noqueue (no buffering in front of the reader, as libvirt does) or default (the kernel's, one pfifo_fast per queue)")
	fs.Bool("persist", true, "keep the tap after vmnet exits (always on: a tap made from the command line must outlive it)")
	tag := fs.String("tag", "", "owner tag recorded on the tap: vmnet:adhoc (the default) or vmnet:lab:LAB; `vmnet tap delete` refuses taps of other owners")
	pos, err := fs.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if err := checkIfArg("tap", pos[0]); err != nil {
		return err
	}
	tagged, err := tagArg(*tag)
	if err != nil {
		return err
	}
	cfg := tap.NewConfig(pos[0], *queues)
	cfg.VnetHdrSize, cfg.BestEffort, cfg.Persist, cfg.MTU, cfg.TxQueueLen, cfg.Tag, cfg.Up = *hdr, *best, true, *mtu, *txq, tagged, true
	if cfg.Qdisc, err = tap.ParseQdisc(*qd); err != nil {
		return usagef("--qdisc: %v", err)
	}
	if *offl != "" {
		if cfg.Offloads, err = tap.ParseOffloads(*offl); err != nil {
			return usagef("--offload %s: %v", *offl, err)
		}
	}
	if *own != "" {
		if cfg.Owner, err = lookupID(*own, false); err != nil {
			return err
		}
	}
	if *grp != "" {
		if cfg.Group, err = lookupID(*grp, true); err != nil {
			return err
		}
	}
	if *mac != "" {
		if cfg.MAC, err = net.ParseMAC(*mac); err != nil {
			return usagef("--mac %s: %v", *mac, err)
		}
	}
	var m *bridge.Manager
	if *br != "" {
		if m, err = bridge.NewCurrent(); err != nil {
			return err
		}
		defer m.Close()
		// Check the bridge first so a missing one leaves no tap behind.
		if _, err := m.Show(*br); err != nil {
			return fmt.Errorf("tap %s: --bridge %s: %w", pos[0], *br, err)
		}
	}
	t, err := tap.Create(cfg)
	if err != nil {
		return err
	}
	defer t.Close()
	if m != nil {
		if err := m.AddPort(*br, bridge.PortConfig{Name: t.Name()}); err != nil {
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

func tapShow(e *env, args []string) error {
	fs := e.flags("vmnet tap show", "NAME [-o table|json]")
	var o output
	o.register(fs, "table", "json")
	pos, err := fs.parse(args, 1, 1)
	if err != nil {
		return err
	}
	info, err := tap.Describe(pos[0])
	if err != nil {
		return err
	}
	if o.format == "json" {
		return writeJSON(e.stdout, info)
	}
	return tapTable(e, []tap.Info{info})
}

func tapList(e *env, args []string) error {
	fs := e.flags("vmnet tap list", "[-o table|json] [--vmnet]")
	var o output
	o.register(fs, "table", "json")
	only := fs.Bool("vmnet", false, "only taps that vmnet created")
	if _, err := fs.parse(args, 0, 0); err != nil {
		return err
	}
	all, err := tap.List()
	if err != nil {
		return err
	}
	infos := []tap.Info{}
	for _, i := range all {
		if !*only || i.Tagged {
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

func tapDelete(e *env, args []string) error {
	fs := e.flags("vmnet tap delete", "NAME [--force] [--tag OWNER]")
	force := fs.Bool("force", false, "delete the tap even if vmnet did not create it")
	tag := fs.String("tag", "", "owner tag the tap must carry: vmnet:adhoc (the default) or vmnet:lab:LAB")
	pos, err := fs.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if err := checkIfArg("tap", pos[0]); err != nil {
		return err
	}
	own, err := tagArg(*tag)
	if err != nil {
		return err
	}
	if err := tap.Delete(pos[0], own, *force); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "deleted tap %s\n", pos[0])
	return nil
}
