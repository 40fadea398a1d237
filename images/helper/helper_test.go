package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/vmnet/vmnet/internal/testenv"
)

// A batch runs every line; each line that fails is reported with its
// line number, as ip -batch does, and the lines after it still run. The
// kernel judges, in a private network namespace (on lo: its index is the
// same in every namespace, so /sys/class/net agrees).
func TestBatchReportsEachFailure(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NetNS(t)
	f := filepath.Join(t.TempDir(), "net")
	lines := []string{
		"link set dev lo up",
		"addr add 10.9.9.9/32 dev lo",
		"route add 10.0.0.0/8 via 10.99.99.99", // 3: no such gateway
		"link set dev nope up",                 // 4: no such device
		"link set dev lo mtu x",                // 5: not a number
		"link set dev lo mtu 9000",
		"addr add fd00::5/64 dev lo",
		"route add default via 10.9.9.9",
	}
	if err := os.WriteFile(f, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	var st int
	testenv.Do(t, ns, func() error {
		st = batchFile(f, &out)
		return nil
	})
	if st != 1 {
		t.Errorf("status %d, want 1", st)
	}
	var failed []string
	for _, l := range strings.Split(out.String(), "\n") {
		if n, ok := strings.CutPrefix(l, "Command failed "+f+":"); ok {
			failed = append(failed, n)
		}
	}
	if strings.Join(failed, ",") != "3,4,5" {
		t.Errorf("failed lines %q, want 3,4,5; output:\n%s", failed, out.String())
	}
	testenv.Do(t, ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if lo.Attrs().MTU != 9000 || lo.Attrs().Flags&1 == 0 {
			t.Errorf("lo: mtu %d flags %v, want 9000 and up", lo.Attrs().MTU, lo.Attrs().Flags)
		}
		addrs, err := netlink.AddrList(lo, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		have := fmt.Sprint(addrs)
		for _, want := range []string{"10.9.9.9/32", "fd00::5/64"} {
			if !strings.Contains(have, want) {
				t.Errorf("lo lacks %s: %s", want, have)
			}
		}
		routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		have = fmt.Sprint(routes)
		for _, want := range []string{"Gw: 10.9.9.9"} {
			if !strings.Contains(have, want) {
				t.Errorf("routes lack %q: %s", want, have)
			}
		}
		return nil
	})
}

func identity(text string) string {
	b64 := base64.StdEncoding.EncodeToString([]byte(text))
	return b64[:4] + "\n" + b64[4:] + "\n" + fmt.Sprintf("END %x\n", sha256.Sum256([]byte(text))) + "after\n"
}

// The identity is checked against its SHA-256; the reader stops at the
// END line.
func TestReadIdentity(t *testing.T) {
	got, err := readIdentity(strings.NewReader(identity("vmnet.ip=eth0:10.0.0.2/24 vmnet.time=5")))
	if err != nil || got != "vmnet.ip=eth0:10.0.0.2/24 vmnet.time=5" {
		t.Errorf("got %q, %v", got, err)
	}
	bad := strings.Replace(identity("vmnet.ip=eth0:10.0.0.2/24"), "dm1u", "dm1v", 1)
	if _, err := readIdentity(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "garbled") {
		t.Errorf("a garbled identity: %v", err)
	}
	if _, err := readIdentity(strings.NewReader("abcd\n")); err == nil || !strings.Contains(err.Error(), "did not arrive") {
		t.Errorf("no END line: %v", err)
	}
}

// A command file is written only when its text matches its SHA-256.
func TestDecodeFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "cmd")
	cmd := "echo 'hi' $x"
	os.WriteFile(f+".b64", []byte(base64.StdEncoding.EncodeToString([]byte(cmd))+"\n"), 0o600)
	if err := decodeFile(f, fmt.Sprintf("%x", sha256.Sum256([]byte(cmd)))); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f); string(b) != cmd {
		t.Errorf("decoded %q", b)
	}
	if err := decodeFile(f, fmt.Sprintf("%x", sha256.Sum256([]byte("other")))); err == nil {
		t.Error("a wrong SHA-256 was accepted")
	}
	if _, err := os.Stat(f); err == nil {
		t.Error("the file of a garbled command is still there")
	}
}
