package tap

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/netns"
)

// Features is what the running kernel offers for taps.
type Features struct {
	Kernel     string `json:"kernel"`
	DevNetTun  bool   `json:"dev_net_tun"`
	VhostNet   bool   `json:"vhost_net"` // /dev/vhost-net exists
	MultiQueue bool   `json:"multi_queue"`
	VnetHdr    bool   `json:"vnet_hdr"`
	MaxQueues  int    `json:"max_queues"`
	// Flags lists the IFF_* flags TUNGETFEATURES reports, lower case
	// without the prefix (tun, tap, no_pi, vnet_hdr, multi_queue, ...).
	Flags []string `json:"flags"`
	// Offloads are the offloads TUNSETOFFLOAD accepted on a throwaway tap.
	Offloads Offload `json:"offloads"`
}

var featureFlags = []struct {
	bit  uint32
	name string
}{
	{unix.IFF_TUN, "tun"},
	{unix.IFF_TAP, "tap"},
	{unix.IFF_NAPI, "napi"},
	{unix.IFF_NAPI_FRAGS, "napi_frags"},
	{unix.IFF_NO_CARRIER, "no_carrier"},
	{unix.IFF_NO_PI, "no_pi"},
	{unix.IFF_ONE_QUEUE, "one_queue"},
	{unix.IFF_VNET_HDR, "vnet_hdr"},
	{unix.IFF_MULTI_QUEUE, "multi_queue"},
}

// Probe reports what the kernel supports. The throwaway tap it needs for
// the offload probe lives in a private namespace (or, without the right
// to make one, in the caller's thread's namespace under a vmnetprobe name)
// and is gone when Probe returns. On error the Features filled so far are
// returned too.
func Probe() (Features, error) {
	f := Features{MaxQueues: MaxQueues, Flags: []string{}}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		f.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	_, err := os.Stat("/dev/vhost-net")
	f.VhostNet = err == nil
	if _, err := os.Stat(devTun); err != nil {
		return f, fmt.Errorf("probe: %w", explain(err, "open"))
	}
	f.DevNetTun = true

	probe := func() error {
		fd, err := unix.Open(devTun, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("probe: open %s: %w", devTun, explain(err, "open"))
		}
		defer unix.Close(fd)
		flags, err := unix.IoctlGetUint32(fd, unix.TUNGETFEATURES)
		if err != nil {
			return fmt.Errorf("probe: TUNGETFEATURES: %w", err)
		}
		for _, ff := range featureFlags {
			if flags&ff.bit != 0 {
				f.Flags = append(f.Flags, ff.name)
			}
		}
		f.MultiQueue = flags&unix.IFF_MULTI_QUEUE != 0
		f.VnetHdr = flags&unix.IFF_VNET_HDR != 0
		ifr, _ := unix.NewIfreq("vmnetprobe%d")
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return fmt.Errorf("probe: create throwaway tap: %w", explain(err, "create"))
		}
		f.Offloads, err = probeOffloads(fd)
		return err
	}
	err = netns.DoPrivate(probe)
	if err != nil && strings.HasPrefix(err.Error(), "netns:") && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)) {
		err = probe()
	}
	return f, err
}
