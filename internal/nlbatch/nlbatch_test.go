package nlbatch

import (
	"errors"
	"testing"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
)

func getLink(name string) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	return req
}

func setUp(index int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index, msg.Flags, msg.Change = int32(index), unix.IFF_UP, unix.IFF_UP
	req.AddData(msg)
	return req
}

// inFreshNS runs fn with a route socket in a namespace of its own.
func inFreshNS(t *testing.T, fn func(fd int) error) {
	testenv.Do(t, testenv.NetNS(t), func() error {
		fd, err := Socket()
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return fn(fd)
	})
}

// TestBatch sends three requests in one batch to a fresh namespace: a
// lookup that answers with data, one that fails, and a change after the
// failure, which the kernel still runs. Exec reports the failing one by
// index and errno, hands over the data, and the batch is empty and
// reusable afterwards.
func TestBatch(t *testing.T) {
	inFreshNS(t, func(fd int) error {
		lo, err := Ifindex(fd, "lo")
		if err != nil || lo != 1 {
			t.Fatalf("Ifindex(lo) = %d, %v; want 1", lo, err)
		}
		if _, err := Ifindex(fd, "nosuch0"); !errors.Is(err, unix.ENODEV) {
			t.Errorf("Ifindex(nosuch0): %v, want ENODEV", err)
		}
		var b Batch
		b.Add(getLink("lo"))
		b.Add(getLink("nosuch0"))
		b.Add(setUp(lo))
		var names []string
		var from []int
		i, err := b.Exec(fd, func(i int, typ uint16, body []byte) {
			if typ != unix.RTM_NEWLINK || len(body) < unix.SizeofIfInfomsg {
				t.Errorf("answer %d: type %d, %d bytes", i, typ, len(body))
				return
			}
			Attrs(body[unix.SizeofIfInfomsg:], func(typ uint16, v []byte) {
				if typ == unix.IFLA_IFNAME {
					names = append(names, nl.BytesToString(v))
					from = append(from, i)
				}
			})
		})
		if i != 1 || !errors.Is(err, unix.ENODEV) {
			t.Errorf("Exec = %d, %v; want 1, ENODEV", i, err)
		}
		if len(names) != 1 || names[0] != "lo" || from[0] != 0 {
			t.Errorf("data: names %q from requests %v; want [lo] from [0]", names, from)
		}
		if b.Len() != 0 {
			t.Errorf("Len after Exec = %d, want 0", b.Len())
		}
		// The request after the failed one ran: lo is up.
		up := false
		b.Add(getLink("lo"))
		if i, err := b.Exec(fd, func(_ int, _ uint16, body []byte) {
			up = nl.DeserializeIfInfomsg(body).Flags&unix.IFF_UP != 0
		}); i != -1 || err != nil {
			t.Fatalf("second Exec = %d, %v", i, err)
		}
		if !up {
			t.Error("lo is down: the request after the failed one did not run")
		}
		return nil
	})
}

// TestAddTolerating: a refusal with the tolerated errno counts as
// success, with any other errno it does not, and a later request's
// failure is still reported with its own index.
func TestAddTolerating(t *testing.T) {
	inFreshNS(t, func(fd int) error {
		var b Batch
		b.AddTolerating(getLink("nosuch0"), unix.ENODEV)
		b.Add(getLink("lo"))
		if i, err := b.Exec(fd, nil); i != -1 || err != nil {
			t.Errorf("tolerated ENODEV: Exec = %d, %v; want -1, nil", i, err)
		}
		b.AddTolerating(getLink("nosuch0"), unix.EINVAL)
		if i, err := b.Exec(fd, nil); i != 0 || !errors.Is(err, unix.ENODEV) {
			t.Errorf("tolerated EINVAL: Exec = %d, %v; want 0, ENODEV", i, err)
		}
		b.AddTolerating(getLink("nosuch0"), unix.ENODEV)
		b.Add(getLink("nosuch1"))
		if i, err := b.Exec(fd, nil); i != 1 || !errors.Is(err, unix.ENODEV) {
			t.Errorf("tolerated then refused: Exec = %d, %v; want 1, ENODEV", i, err)
		}
		return nil
	})
}

// TestAttrsMalformed: a length that points past the buffer or below the
// header size ends the walk instead of reading out of bounds.
func TestAttrsMalformed(t *testing.T) {
	for _, b := range [][]byte{
		{8, 0, 1, 0, 'a', 'b', 'c', 'd', 200, 0, 2, 0},
		{2, 0, 1, 0},
		{8, 0, 1},
		{},
	} {
		n := 0
		Attrs(b, func(uint16, []byte) { n++ })
		if n > 1 {
			t.Errorf("Attrs(%v) called fn %d times", b, n)
		}
	}
}

// TestBegin: a request built in place is byte for byte what
// vishvananda/netlink serializes for the same request (header, fixed
// part, padded attributes, a nested attribute), and the kernel answers
// requests built that way.
func TestBegin(t *testing.T) {
	var b Batch
	ifi := IfInfomsg(unix.AF_UNSPEC, 7, unix.IFF_UP, unix.IFF_UP)
	b.Begin(unix.RTM_SETLINK, 0, ifi[:], 0)
	b.AttrU32(unix.IFLA_MTU, 9000)
	b.AttrString(unix.IFLA_IFNAME, "ab")
	n := b.Nest(unix.IFLA_AF_SPEC)
	in := b.Nest(unix.AF_INET6)
	b.Attr(unix.IFLA_INET6_ADDR_GEN_MODE, []byte{1})
	b.EndNest(in)
	b.EndNest(n)
	b.Attr(unix.IFLA_IFALIAS, []byte("xyz"))
	b.end()

	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	req.Seq = b.seqs[0]
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index, msg.Flags, msg.Change = 7, unix.IFF_UP, unix.IFF_UP
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(9000)))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated("ab")))
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	spec.AddRtAttr(unix.AF_INET6, nil).AddRtAttr(unix.IFLA_INET6_ADDR_GEN_MODE, []byte{1})
	req.AddData(spec)
	req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte("xyz")))
	want := req.Serialize()
	if string(b.buf) != string(want) {
		t.Errorf("Begin built\n%v\nvishvananda/netlink serializes\n%v", b.buf, want)
	}
	b.buf, b.seqs, b.ok = b.buf[:0], b.seqs[:0], b.ok[:0]

	inFreshNS(t, func(fd int) error {
		up := IfInfomsg(unix.AF_UNSPEC, 1, unix.IFF_UP, unix.IFF_UP)
		b.Begin(unix.RTM_SETLINK, 0, up[:], 0)
		any := IfInfomsg(unix.AF_UNSPEC, 0, 0, 0)
		b.Begin(unix.RTM_GETLINK, 0, any[:], 0)
		b.AttrString(unix.IFLA_IFNAME, "lo")
		b.Begin(unix.RTM_GETLINK, 0, any[:], unix.ENODEV)
		b.AttrString(unix.IFLA_IFNAME, "nosuch0")
		var flags uint32
		if i, err := b.Exec(fd, func(i int, _ uint16, body []byte) {
			flags = nl.DeserializeIfInfomsg(body).Flags
		}); i != -1 || err != nil {
			t.Fatalf("Exec = %d, %v", i, err)
		}
		if flags&unix.IFF_UP == 0 {
			t.Errorf("lo flags %#x after a built RTM_SETLINK up", flags)
		}
		return nil
	})
}
