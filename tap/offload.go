package tap

import (
	"encoding/json"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Offload is a set of TUNSETOFFLOAD bits: the segmentation and checksum
// work the kernel may leave to whoever reads the tap (it then hands over
// large, partially checksummed frames described by the vnet header).
type Offload uint

// The values are the kernel's TUN_F_* bits. USO is two bits because the
// kernel only accepts USO4 and USO6 together.
const (
	OffloadCsum   Offload = unix.TUN_F_CSUM
	OffloadTSO4   Offload = unix.TUN_F_TSO4
	OffloadTSO6   Offload = unix.TUN_F_TSO6
	OffloadTSOECN Offload = unix.TUN_F_TSO_ECN
	OffloadUFO    Offload = unix.TUN_F_UFO
	OffloadUSO    Offload = unix.TUN_F_USO4 | unix.TUN_F_USO6

	// OffloadAll is every offload this package knows.
	OffloadAll = OffloadCsum | OffloadTSO4 | OffloadTSO6 | OffloadTSOECN | OffloadUFO | OffloadUSO
)

var offloadNames = []struct {
	bit  Offload
	name string
}{
	{OffloadCsum, "csum"},
	{OffloadTSO4, "tso4"},
	{OffloadTSO6, "tso6"},
	{OffloadTSOECN, "tso_ecn"},
	{OffloadUFO, "ufo"},
	{OffloadUSO, "uso"},
}

// Names lists the offloads in o in a fixed order; bits this package does
// not know are shown in hex.
func (o Offload) Names() []string {
	names := []string{}
	for _, n := range offloadNames {
		if o&n.bit == n.bit {
			names = append(names, n.name)
			o &^= n.bit
		}
	}
	if o != 0 {
		names = append(names, fmt.Sprintf("%#x", uint(o)))
	}
	return names
}

// String is the comma-separated form ParseOffloads reads; "none" for 0.
func (o Offload) String() string {
	if o == 0 {
		return "none"
	}
	return strings.Join(o.Names(), ",")
}

// ParseOffloads reads a comma-separated list such as "csum,tso4,tso6".
// "" and "none" are the empty set, "all" is OffloadAll.
func ParseOffloads(s string) (Offload, error) {
	var o Offload
	for _, f := range strings.Split(s, ",") {
		f = strings.ToLower(strings.TrimSpace(f))
		switch f {
		case "", "none":
			continue
		case "all":
			o |= OffloadAll
			continue
		}
		found := false
		for _, n := range offloadNames {
			if n.name == f {
				o |= n.bit
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown offload %q (known: csum, tso4, tso6, tso_ecn, ufo, uso, all, none)", f)
		}
	}
	return o, nil
}

// check applies the kernel's rules (drivers/net/tun.c set_offload) before
// asking, so the error can say which rule was broken.
func (o Offload) check() error {
	switch {
	case o&^OffloadAll != 0:
		return fmt.Errorf("offloads %s: unknown bits: %w", o, unix.EINVAL)
	case o != 0 && o&OffloadCsum == 0:
		return fmt.Errorf("offloads %s: every offload needs csum: %w", o, unix.EINVAL)
	case o&OffloadTSOECN != 0 && o&(OffloadTSO4|OffloadTSO6) == 0:
		return fmt.Errorf("offloads %s: tso_ecn needs tso4 or tso6: %w", o, unix.EINVAL)
	case o&OffloadUSO != 0 && o&OffloadUSO != OffloadUSO:
		return fmt.Errorf("offloads %s: uso4 and uso6 only together (uso): %w", o, unix.EINVAL)
	}
	return nil
}

// MarshalJSON writes the offloads as a list of names.
func (o Offload) MarshalJSON() ([]byte, error) { return json.Marshal(o.Names()) }

// UnmarshalJSON reads a list of names or a comma-separated string.
func (o *Offload) UnmarshalJSON(b []byte) error {
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		var s string
		if err2 := json.Unmarshal(b, &s); err2 != nil {
			return err
		}
		list = []string{s}
	}
	v, err := ParseOffloads(strings.Join(list, ","))
	if err != nil {
		return err
	}
	*o = v
	return nil
}
