package lab

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/bridge"
	"github.com/vmnet/vmnet/internal/link"
	"github.com/vmnet/vmnet/tap"
	"github.com/vmnet/vmnet/vmconfig"
	"golang.org/x/sys/unix"
)

// Report is `vmnet status` for one lab: its recorded state checked
// against what the kernel and the supervisor say now.
type Report struct {
	Lab        string          `json:"lab"`
	Config     string          `json:"config"`
	StateDir   string          `json:"state_dir"`
	Phase      string          `json:"phase"`
	Supervisor int             `json:"supervisor_pid"`
	Running    bool            `json:"supervisor_running"`
	Started    time.Time       `json:"started"`
	Networks   []NetworkReport `json:"networks"`
	VMs        []VMReport      `json:"vms"`
	Links      []LinkReport    `json:"links"`
	// Host and VXLANs: this host's part of a multi-host lab.
	Host   string        `json:"host,omitempty"`
	VXLANs []VXLANReport `json:"vxlans,omitempty"`
}

// VXLANReport is one VXLAN device of a network that spans hosts, as the
// kernel sees it now.
type VXLANReport struct {
	Name      string   `json:"name"`
	Network   string   `json:"network,omitempty"`
	VNI       int      `json:"vni"`
	Local     string   `json:"local,omitempty"`
	Port      int      `json:"port"`
	Peers     []string `json:"peers"` // destinations of the all-zeros (flood) FDB entries
	State     string   `json:"state,omitempty"`
	RxPackets uint64   `json:"rx_packets"`
	TxPackets uint64   `json:"tx_packets"`
	RxBytes   uint64   `json:"rx_bytes"`
	TxBytes   uint64   `json:"tx_bytes"`
	Error     string   `json:"error,omitempty"`
}

// NetworkReport is one bridge.
type NetworkReport struct {
	Name      string         `json:"name"`
	Bridge    string         `json:"bridge"`
	Created   bool           `json:"created"`         // false: the bridge existed before and stays
	State     string         `json:"state,omitempty"` // absent (table: -) when netlink could not be asked
	MTU       int            `json:"mtu,omitempty"`   // absent (table: -) when the bridge could not be read
	Addresses []netip.Prefix `json:"addresses"`
	Ports     []string       `json:"ports"`
	Error     string         `json:"error,omitempty"`
}

// VMReport is one guest.
type VMReport struct {
	Name    string      `json:"name"`
	State   string      `json:"state"`         // QMP run state, or why it is unknown
	PID     int         `json:"pid,omitempty"` // absent (table: -) before the guest was started
	Uptime  string      `json:"uptime,omitempty"`
	Console string      `json:"console,omitempty"`
	NICs    []NICReport `json:"nics"`
}

// NICReport is one NIC and its tap as the kernel sees it now.
type NICReport struct {
	NICState
	Present           bool     `json:"present"`
	VnetHdr           bool     `json:"vnet_hdr"`
	MultiQueue        bool     `json:"multi_queue"`
	NumQueues         int      `json:"num_queues"` // enabled queues; 1 on a single-queue tap
	NumDisabledQueues int      `json:"num_disabled_queues"`
	Offloads          []string `json:"offloads"`
	RxPackets         uint64   `json:"rx_packets"`
	TxPackets         uint64   `json:"tx_packets"`
	RxBytes           uint64   `json:"rx_bytes"`
	TxBytes           uint64   `json:"tx_bytes"`
	// Impairment is what the tap's netem/tbf qdiscs do to frames going
	// to the guest, read from the kernel, in tc-netem's words; absent
	// without.
	Impairment string `json:"impairment,omitempty"`
	Error      string `json:"error,omitempty"`
}

// LinkReport is one [[link]] of the lab file, with its counters while the
// supervisor runs it.
type LinkReport struct {
	A string `json:"a"`
	B string `json:"b"`
	// Impairments per direction as the lab file sets them, in tc-netem's
	// words ("delay 20ms loss 5%"); absent for a direction without.
	AtoB  string      `json:"a_to_b_impairment,omitempty"`
	BtoA  string      `json:"b_to_a_impairment,omitempty"`
	Stats *link.Stats `json:"stats,omitempty"`
}

// Describe builds the report of a lab from its state, the lab file (for
// the topology, when it can still be read) and the kernel. live is the
// supervisor's answer to vm-status (nil when it is not running).
func Describe(st *State, cfg *vmconfig.Lab, live *Response) Report {
	if cfg != nil && st.Host != "" {
		if p, err := cfg.Part(st.Host); err == nil {
			cfg = p // this host's share only
		}
	}
	var vmStatus map[string]string
	if live != nil {
		vmStatus = live.VMStatus
	}
	r := Report{Lab: st.Lab, Config: st.Config, StateDir: st.StateDir, Phase: st.Phase, Supervisor: st.Supervisor,
		Running: st.SupervisorAlive(), Started: st.Started, Networks: []NetworkReport{}, VMs: []VMReport{}, Links: []LinkReport{}}
	created := map[string]bool{}
	for _, b := range st.Bridges {
		created[b] = true
	}
	var bm *bridge.Manager
	if m, err := bridge.NewCurrent(); err == nil {
		bm = m
		defer m.Close()
	}
	addNet := func(name, br string) {
		nr := NetworkReport{Name: name, Bridge: br, Created: created[br], Addresses: []netip.Prefix{}, Ports: []string{}}
		if bm == nil {
			nr.Error = "netlink unavailable"
		} else if info, err := bm.Show(br); err != nil {
			nr.Error = err.Error()
			nr.State = "missing"
		} else {
			nr.State, nr.MTU = info.OperState, info.MTU
			for _, a := range info.Addresses {
				if !a.Addr().IsLinkLocalUnicast() {
					nr.Addresses = append(nr.Addresses, a)
				}
			}
			for _, p := range info.Ports {
				nr.Ports = append(nr.Ports, p.Name)
			}
		}
		r.Networks = append(r.Networks, nr)
	}
	if cfg != nil {
		for _, n := range cfg.Networks {
			addNet(n.Name, n.Bridge)
		}
		for i, l := range cfg.Links {
			lr := LinkReport{A: l.A.String(), B: l.B.String()}
			if l.AtoB != nil {
				lr.AtoB = l.AtoB.String()
			}
			if l.BtoA != nil {
				lr.BtoA = l.BtoA.String()
			}
			if live != nil && i < len(live.Links) {
				lr.Stats = &live.Links[i]
				// What runs now: `vmnet link set` may have changed it.
				lr.AtoB, lr.BtoA = lr.Stats.AtoB.Impairment, lr.Stats.BtoA.Impairment
			}
			r.Links = append(r.Links, lr)
		}
	} else {
		for _, b := range append(append([]string{}, st.Bridges...), st.Reused...) {
			addNet(b, b)
		}
	}
	r.Host = st.Host
	for _, name := range st.VXLANs {
		r.VXLANs = append(r.VXLANs, describeVXLAN(name, cfg))
	}
	for _, vs := range st.VMs {
		vr := VMReport{Name: vs.Name, PID: vs.PID, Console: vs.Console, NICs: []NICReport{}}
		switch {
		case vmStatus != nil && vmStatus[vs.Name] != "":
			vr.State = vmStatus[vs.Name]
		case vs.PID != 0 && Alive(vs.PID):
			vr.State = "running (supervisor not answering)"
		case vs.PID != 0:
			vr.State = "gone"
		default:
			vr.State = "not started"
		}
		if !vs.Started.IsZero() && vs.PID != 0 && Alive(vs.PID) {
			vr.Uptime = time.Since(vs.Started).Round(time.Second).String()
		}
		for _, n := range vs.NICs {
			vr.NICs = append(vr.NICs, describeNIC(n))
		}
		r.VMs = append(r.VMs, vr)
	}
	return r
}

func describeVXLAN(name string, cfg *vmconfig.Lab) VXLANReport {
	vr := VXLANReport{Name: name, Peers: []string{}}
	if cfg != nil {
		for _, n := range cfg.Networks {
			if n.VXLAN != nil && vmconfig.VXLANName(n.VXLAN.VNI) == name {
				vr.Network = n.Name
			}
		}
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		vr.Error, vr.State = err.Error(), "missing"
		return vr
	}
	vr.State = l.Attrs().OperState.String()
	if v, ok := l.(*netlink.Vxlan); ok {
		vr.VNI, vr.Port = v.VxlanId, v.Port
		if v.SrcAddr != nil {
			vr.Local = v.SrcAddr.String()
		}
	}
	if s := l.Attrs().Statistics; s != nil {
		vr.RxPackets, vr.TxPackets, vr.RxBytes, vr.TxBytes = s.RxPackets, s.TxPackets, s.RxBytes, s.TxBytes
	}
	fdb, err := netlink.NeighList(l.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		vr.Error = fmt.Sprintf("list flood entries: %v", err)
	}
	for _, e := range fdb {
		if e.IP != nil && bytes.Equal(e.HardwareAddr, make([]byte, 6)) {
			vr.Peers = append(vr.Peers, e.IP.String())
		}
	}
	return vr
}

func describeNIC(n NICState) NICReport {
	nr := NICReport{NICState: n, Offloads: []string{}}
	info, err := tap.Describe(n.Tap)
	if err != nil {
		nr.Error = err.Error()
		return nr
	}
	nr.Present, nr.VnetHdr, nr.MultiQueue = true, info.VnetHdr, info.MultiQueue
	nr.NumQueues, nr.NumDisabledQueues = info.NumQueues, info.NumDisabledQueues
	if !info.MultiQueue || info.NumQueues < 0 {
		// The kernel counts queues only on multi_queue taps; a
		// single-queue tap has its one queue (the table says "1 queue"),
		// not -1.
		nr.NumQueues, nr.NumDisabledQueues = 1, 0
	}
	if info.Offloads != nil {
		nr.Offloads = info.Offloads.Names()
	}
	if info.Impairment != nil {
		nr.Impairment = ConfigImpairment(*info.Impairment).String()
	}
	if l, err := netlink.LinkByName(n.Tap); err == nil && l.Attrs().Statistics != nil {
		s := l.Attrs().Statistics
		nr.RxPackets, nr.TxPackets, nr.RxBytes, nr.TxBytes = s.RxPackets, s.TxPackets, s.RxBytes, s.TxBytes
	}
	return nr
}

// WriteTable prints the report for people.
func (r Report) WriteTable(w io.Writer) {
	sup := fmt.Sprintf("supervisor %d", r.Supervisor)
	if !r.Running {
		sup += " (not running: run `vmnet down " + r.Lab + "` to clean up)"
	}
	host := ""
	if r.Host != "" {
		host = " host " + r.Host + ","
	}
	fmt.Fprintf(w, "lab %s (%s),%s %s, %s, since %s\n", r.Lab, r.Config, host, r.Phase, sup, r.Started.Format(time.RFC3339))
	for _, n := range r.Networks {
		var as []string
		for _, a := range n.Addresses {
			as = append(as, a.String())
		}
		how := "created"
		if !n.Created {
			how = "reused"
		}
		mtu := ""
		if n.MTU > 0 {
			mtu = strconv.Itoa(n.MTU)
		}
		fmt.Fprintf(w, "  network %-10s bridge %-15s %-8s mtu %-5s %s  addresses %s  ports %s\n", n.Name, n.Bridge, dash(n.State),
			dash(mtu), how, dash(strings.Join(as, ",")), dash(strings.Join(n.Ports, ",")))
	}
	for _, v := range r.VMs {
		pid := ""
		if v.PID != 0 {
			pid = strconv.Itoa(v.PID)
		}
		fmt.Fprintf(w, "  vm %-12s %-10s pid %-7s uptime %-8s console %s\n", v.Name, v.State, dash(pid), dash(v.Uptime), dash(v.Console))
		for _, n := range v.NICs {
			q := fmt.Sprintf("%d/%d queues enabled", n.NumQueues, n.Queues)
			if !n.MultiQueue {
				q = "1 queue"
			}
			extra := ""
			if n.Hotplugged {
				extra = " (hot-plugged)"
			}
			if n.Error != "" {
				fmt.Fprintf(w, "    %s tap %s: %s\n", n.ID, n.Tap, n.Error)
				continue
			}
			fmt.Fprintf(w, "    %-5s tap %-15s mac %s net %-8s %s vnet_hdr %v offloads %s rx %d/%dB tx %d/%dB%s\n", n.ID, n.Tap, n.MAC,
				dash(n.Network), q, n.VnetHdr, dash(strings.Join(n.Offloads, ",")), n.RxPackets, n.RxBytes, n.TxPackets, n.TxBytes, extra)
			if n.Impairment != "" {
				fmt.Fprintf(w, "          impaired to the guest: %s\n", n.Impairment)
			}
		}
	}
	for _, v := range r.VXLANs {
		if v.Error != "" && v.State == "missing" {
			fmt.Fprintf(w, "  vxlan %s: %s\n", v.Name, v.Error)
			continue
		}
		fmt.Fprintf(w, "  vxlan %-10s net %-8s vni %-8d %-8s local %s port %d peers %s rx %d/%dB tx %d/%dB\n", v.Name, dash(v.Network), v.VNI,
			dash(v.State), dash(v.Local), v.Port, dash(strings.Join(v.Peers, ",")), v.RxPackets, v.RxBytes, v.TxPackets, v.TxBytes)
	}
	for _, l := range r.Links {
		fmt.Fprintf(w, "  link %s <-> %s\n", l.A, l.B)
		if l.AtoB != "" {
			fmt.Fprintf(w, "    impaired %s -> %s: %s\n", l.A, l.B, l.AtoB)
		}
		if l.BtoA != "" {
			fmt.Fprintf(w, "    impaired %s -> %s: %s\n", l.B, l.A, l.BtoA)
		}
		if l.Stats != nil {
			for _, line := range strings.Split(l.Stats.String(), "\n") {
				fmt.Fprintf(w, "    %s\n", line)
			}
		}
	}
}

// endpointNode names a link endpoint's graph node: a VM for vm:NAME:N.
func endpointNode(ep string) string {
	if rest, ok := strings.CutPrefix(ep, "vm:"); ok {
		name, _, _ := strings.Cut(rest, ":")
		return "vm:" + name
	}
	return ep
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
