package netns_test

import (
	"net"
	"testing"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
)

func loopbackOnly(t *testing.T) {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	if len(ifs) != 1 || ifs[0].Name != "lo" {
		t.Fatalf("fresh namespace should hold only lo, has %v", ifs)
	}
}

func TestNewAndDo(t *testing.T) {
	ns := testenv.NetNS(t)
	before, _ := netns.Current()
	defer before.Close()
	testenv.Do(t, ns, func() error {
		cur, err := netns.Current()
		if err != nil {
			return err
		}
		defer cur.Close()
		if !cur.Equal(ns) {
			t.Error("Do did not enter the namespace")
		}
		loopbackOnly(t)
		return nil
	})
	after, _ := netns.Current()
	defer after.Close()
	if !after.Equal(before) {
		t.Fatal("namespace not restored after Do")
	}
}

func TestDoPrivate(t *testing.T) {
	testenv.RequireRoot(t)
	if err := netns.DoPrivate(func() error { loopbackOnly(t); return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestOpenMissing(t *testing.T) {
	_, err := netns.Open("vmnet-test-does-not-exist")
	if err == nil {
		t.Fatal("expected an error for a missing namespace")
	}
	t.Log(err)
}
