package tap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sort"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/nlretry"
	"github.com/vmnet/vmnet/owner"
)

// Info describes a tap as rtnetlink (IFLA_TUN_*, link attributes) and
// ethtool report it.
type Info struct {
	Name       string `json:"name"`
	Index      int    `json:"index"`
	Type       string `json:"type"` // "tap" or "tun"
	PI         bool   `json:"pi"`   // packet information header in front of frames
	VnetHdr    bool   `json:"vnet_hdr"`
	Persist    bool   `json:"persist"`
	MultiQueue bool   `json:"multi_queue"`
	Owner      int    `json:"owner"` // uid allowed to attach, -1 if unset
	Group      int    `json:"group"` // gid allowed to attach, -1 if unset
	// NumQueues and NumDisabledQueues count attached and disabled queues.
	// The kernel reports them only for multi_queue taps; for a single-queue
	// tap they are -1, and Carrier (on while a queue is attached, unless
	// someone forced it with TUNSETCARRIER) is the best hint.
	NumQueues         int    `json:"num_queues"`
	NumDisabledQueues int    `json:"num_disabled_queues"`
	Carrier           bool   `json:"carrier"`
	MTU               int    `json:"mtu"`
	MAC               string `json:"mac"`
	TxQueueLen        int    `json:"tx_queue_len"`
	Master            string `json:"master,omitempty"`
	OperState         string `json:"oper_state"`
	Up                bool   `json:"up"` // administratively up
	Alias             string `json:"alias,omitempty"`
	// Tag is the vmnet owner from the alias; Tagged is false when vmnet
	// did not create the tap.
	Tag    string `json:"tag,omitempty"`
	Tagged bool   `json:"tagged"`
	// Qdisc is the root qdisc as tc names it ("noqueue", "mq", ...), or
	// QdiscError when it could not be read.
	Qdisc      string `json:"qdisc"`
	QdiscError string `json:"qdisc_error,omitempty"`
	// Impairment is what the tap's netem and tbf qdiscs do to frames
	// going to its reader, read back from the kernel; nil without them.
	Impairment *Impairment `json:"impairment,omitempty"`
	// Offloads active on the device, from ethtool features (the tun driver
	// does not report them over rtnetlink). UFO never shows: the kernel
	// accepts and ignores it. Nil, with OffloadsError, when unreadable.
	Offloads      *Offload `json:"offloads"`
	OffloadsError string   `json:"offloads_error,omitempty"`
}

// Describe reads one tap (or tun) device by name in the calling thread's
// namespace.
func Describe(name string) (Info, error) {
	if err := checkName(name); err != nil {
		return Info{}, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	msgs, err := getLinks(name)
	if err != nil {
		if errors.Is(err, unix.ENODEV) {
			return Info{}, fmt.Errorf("tap %s: %w (no interface of that name in this network namespace)", name, err)
		}
		return Info{}, fmt.Errorf("tap %s: describe: %w", name, err)
	}
	if len(msgs) != 1 {
		return Info{}, fmt.Errorf("tap %s: describe: %d answers from rtnetlink", name, len(msgs))
	}
	link, extra, err := parseLink(msgs[0])
	if err != nil {
		return Info{}, fmt.Errorf("tap %s: describe: %w", name, err)
	}
	tt, ok := link.(*netlink.Tuntap)
	if !ok {
		return Info{}, fmt.Errorf("tap %s: %s: %w", name, notATap(link.Type()), unix.EINVAL)
	}
	info := infoOf(tt, extra)
	if m := link.Attrs().MasterIndex; m > 0 {
		h := &netlink.Handle{}
		if ml, err := h.LinkByIndex(m); err == nil {
			info.Master = ml.Attrs().Name
		} else {
			info.Master = fmt.Sprintf("if%d", m)
		}
	}
	info.addOffloads()
	info.addQdisc(link)
	return info, nil
}

// List describes every tun/tap device in the calling thread's namespace,
// sorted by name.
func List() ([]Info, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	msgs, err := nlretry.Do(func() ([][]byte, error) { return getLinks("") })
	if err != nil {
		return nil, fmt.Errorf("list taps: %w", err)
	}
	names := map[int]string{}
	var out []Info
	var masters []int
	for _, m := range msgs {
		link, extra, err := parseLink(m)
		if err != nil {
			return nil, fmt.Errorf("list taps: %w", err)
		}
		names[link.Attrs().Index] = link.Attrs().Name
		if tt, ok := link.(*netlink.Tuntap); ok {
			out = append(out, infoOf(tt, extra))
			masters = append(masters, link.Attrs().MasterIndex)
		}
	}
	for i := range out {
		if m := masters[i]; m > 0 {
			out[i].Master = names[m]
		}
		out[i].addOffloads()
		out[i].addQdisc(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Index: out[i].Index, Name: out[i].Name}})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Delete removes the tap name from the calling thread's namespace. Unless
// force is set it refuses a tap that is not tagged as tag's (owner.Check;
// "" means owner.AdHoc), so vmnet never deletes what it did not create.
// Queues still open (e.g. in QEMU) see the device go away.
func Delete(name, tag string, force bool) error {
	if err := checkName(name); err != nil {
		return err
	}
	if tag == "" {
		tag = owner.AdHoc
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	msgs, err := getLinks(name)
	if err != nil {
		if errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("tap %s: delete: %w (no interface of that name in this network namespace)", name, err)
		}
		return fmt.Errorf("tap %s: delete: %w", name, err)
	}
	if len(msgs) != 1 {
		return fmt.Errorf("tap %s: delete: %d answers from rtnetlink", name, len(msgs))
	}
	link, _, err := parseLink(msgs[0])
	if err != nil {
		return fmt.Errorf("tap %s: delete: %w", name, err)
	}
	if _, ok := link.(*netlink.Tuntap); !ok {
		return fmt.Errorf("tap %s: delete: %s; vmnet deletes only taps: %w", name, notATap(link.Type()), unix.EINVAL)
	}
	if !force {
		if err := owner.Check(link, tag); err != nil {
			return fmt.Errorf("tap %s: delete: %w", name, err)
		}
	}
	h := &netlink.Handle{}
	if err := h.LinkDel(link); err != nil {
		return fmt.Errorf("tap %s: delete: %w", name, explain(err, ""))
	}
	return nil
}

// tunExtra is what netlink.Tuntap cannot say: it reads a missing
// IFLA_TUN_OWNER/GROUP (unset) as 0 (root).
type tunExtra struct {
	hasOwner, hasGroup bool
	hasQueues          bool
	carrier            bool
}

// getLinks asks rtnetlink for one link by name, or all of them ("").
// It uses a fresh socket in the calling thread's namespace.
func getLinks(name string) ([][]byte, error) {
	flags := unix.NLM_F_ACK
	if name == "" {
		flags = unix.NLM_F_DUMP
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, flags)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_EXT_MASK, nl.Uint32Attr(nl.RTEXT_FILTER_VF)))
	if name != "" {
		req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	}
	return req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
}

func parseLink(m []byte) (netlink.Link, tunExtra, error) {
	var extra tunExtra
	link, err := netlink.LinkDeserialize(nil, m)
	if err != nil {
		return nil, extra, err
	}
	if _, ok := link.(*netlink.Tuntap); !ok {
		return link, extra, nil
	}
	msg := nl.DeserializeIfInfomsg(m)
	attrs, err := nl.ParseRouteAttr(m[msg.Len():])
	if err != nil {
		return nil, extra, err
	}
	for _, a := range attrs {
		if a.Attr.Type == unix.IFLA_CARRIER && len(a.Value) > 0 {
			extra.carrier = a.Value[0] != 0
		}
		if a.Attr.Type != unix.IFLA_LINKINFO {
			continue
		}
		infos, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return nil, extra, err
		}
		for _, i := range infos {
			if i.Attr.Type != nl.IFLA_INFO_DATA {
				continue
			}
			data, err := nl.ParseRouteAttr(i.Value)
			if err != nil {
				return nil, extra, err
			}
			for _, d := range data {
				switch d.Attr.Type {
				case nl.IFLA_TUN_OWNER:
					extra.hasOwner = true
				case nl.IFLA_TUN_GROUP:
					extra.hasGroup = true
				case nl.IFLA_TUN_NUM_QUEUES:
					extra.hasQueues = true
				}
			}
		}
	}
	return link, extra, nil
}

func infoOf(tt *netlink.Tuntap, extra tunExtra) Info {
	a := tt.Attrs()
	info := Info{
		Name:              a.Name,
		Index:             a.Index,
		Type:              "tap",
		PI:                tt.Flags&netlink.TUNTAP_NO_PI == 0,
		VnetHdr:           tt.Flags&netlink.TUNTAP_VNET_HDR != 0,
		Persist:           !tt.NonPersist,
		MultiQueue:        tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0,
		Owner:             -1,
		Group:             -1,
		NumQueues:         tt.Queues,
		NumDisabledQueues: tt.DisabledQueues,
		MTU:               a.MTU,
		MAC:               a.HardwareAddr.String(),
		TxQueueLen:        a.TxQLen,
		OperState:         a.OperState.String(),
		Up:                a.Flags&net.FlagUp != 0,
		Alias:             a.Alias,
	}
	if tt.Mode == netlink.TUNTAP_MODE_TUN {
		info.Type = "tun"
	}
	if extra.hasOwner {
		info.Owner = int(tt.Owner)
	}
	if extra.hasGroup {
		info.Group = int(tt.Group)
	}
	if !extra.hasQueues {
		info.NumQueues, info.NumDisabledQueues = -1, -1
	}
	info.Carrier = extra.carrier
	info.Tag, info.Tagged = owner.Of(tt)
	return info
}

func (info *Info) addOffloads() {
	o, err := readOffloads(info.Name)
	if err != nil {
		info.OffloadsError = err.Error()
		return
	}
	info.Offloads = &o
}

// Names of the netdev features TUNSETOFFLOAD turns on (tun.c set_offload),
// as ethtool's ETH_SS_FEATURES string set spells them.
var featureOffloads = map[string]Offload{
	"tx-checksum-ip-generic":  OffloadCsum,
	"tx-tcp-segmentation":     OffloadTSO4,
	"tx-tcp6-segmentation":    OffloadTSO6,
	"tx-tcp-ecn-segmentation": OffloadTSOECN,
	"tx-udp-segmentation":     OffloadUSO,
}

const (
	ethSSFeatures  = 4 // ETH_SS_FEATURES
	ethGstringLen  = 32
	ethtoolIfrSize = 40 // sizeof(struct ifreq) on 64-bit
)

type ethtoolIfreq struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [ethtoolIfrSize - unix.IFNAMSIZ - 8]byte
}

func ethtool(fd int, name string, data unsafe.Pointer) error {
	var ifr ethtoolIfreq
	copy(ifr.name[:], name)
	ifr.data = data
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(&ifr)
	if e != 0 {
		return e
	}
	return nil
}

// readOffloads reads the device's active features with the ethtool ioctls
// (ETHTOOL_GSSET_INFO, GSTRINGS, GFEATURES) and maps them back to offloads.
func readOffloads(name string) (Offload, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("read offloads: socket: %w", err)
	}
	defer unix.Close(fd)

	var ssi struct {
		cmd, reserved uint32
		mask          uint64
		count         uint32
	}
	ssi.cmd = unix.ETHTOOL_GSSET_INFO
	ssi.mask = 1 << ethSSFeatures
	if err := ethtool(fd, name, unsafe.Pointer(&ssi)); err != nil {
		return 0, fmt.Errorf("read offloads: ETHTOOL_GSSET_INFO: %w", err)
	}
	if ssi.mask == 0 || ssi.count == 0 {
		return 0, errors.New("read offloads: device reports no feature names")
	}
	n := int(ssi.count)
	strs := make([]byte, 12+n*ethGstringLen)
	binary.NativeEndian.PutUint32(strs[0:], unix.ETHTOOL_GSTRINGS)
	binary.NativeEndian.PutUint32(strs[4:], ethSSFeatures)
	binary.NativeEndian.PutUint32(strs[8:], uint32(n))
	if err := ethtool(fd, name, unsafe.Pointer(&strs[0])); err != nil {
		return 0, fmt.Errorf("read offloads: ETHTOOL_GSTRINGS: %w", err)
	}
	blocks := (n + 31) / 32
	feats := make([]byte, 8+blocks*16)
	binary.NativeEndian.PutUint32(feats[0:], unix.ETHTOOL_GFEATURES)
	binary.NativeEndian.PutUint32(feats[4:], uint32(blocks))
	if err := ethtool(fd, name, unsafe.Pointer(&feats[0])); err != nil {
		return 0, fmt.Errorf("read offloads: ETHTOOL_GFEATURES: %w", err)
	}
	var o Offload
	for i := 0; i < n; i++ {
		s := strs[12+i*ethGstringLen : 12+(i+1)*ethGstringLen]
		for j, c := range s {
			if c == 0 {
				s = s[:j]
				break
			}
		}
		bit, ok := featureOffloads[string(s)]
		if !ok {
			continue
		}
		active := binary.NativeEndian.Uint32(feats[8+(i/32)*16+8:])
		if active&(1<<(i%32)) != 0 {
			o |= bit
		}
	}
	return o, nil
}

func (i *Info) addQdisc(link netlink.Link) {
	qs, err := (&netlink.Handle{}).QdiscList(link)
	if err != nil {
		i.QdiscError = err.Error()
		return
	}
	i.Qdisc = rootOf(qs)
	if im, ok := readImpairment(qs); ok {
		i.Impairment = &im
	}
}
