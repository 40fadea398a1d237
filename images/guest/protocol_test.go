package guest

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseExit(t *testing.T) {
	for _, bad := range []string{"VMNET-EXIT=", "VMNET-EXIT=x", "VMNET-EXIT=1 2", "VMNET-EXIT=-1", "VMNET-EXIT=1234"} {
		if _, ok := ParseExit(bad, ""); ok {
			t.Errorf("ParseExit accepted %q", bad)
		}
	}
}

// With a nonce only the marker carrying it counts; a filter holds back
// exactly the line starts that may still become it.
func TestMayBeExit(t *testing.T) {
	const nonce = "0123456789abcdef"
	for l, want := range map[string]bool{
		"": true, "VMNET": true, "VMNET-EXIT=": true, "VMNET-EXIT=12": true, "VMNET-EXIT=123": true,
		"VMNET-EXIT=1 ": true, "VMNET-EXIT=1 0123": true, "VMNET-EXIT=1 " + nonce: true, "VMNET-EXIT=1 " + nonce + "\r": true,
		"VMNET-EXIT=1234": false, "VMNET-EXIT= ": false, "VMNET-EXIT=1 01234x": false, "VMNET-EXIT=1 " + nonce + "0": false,
		"VMNET-EXIT=1\r": false, "xVMNET": false,
	} {
		if got := MayBeExit(l, nonce); got != want {
			t.Errorf("MayBeExit(%q) = %v, want %v", l, got, want)
		}
	}
	if !MayBeExit("VMNET-EXIT=7\r", "") || MayBeExit("VMNET-EXIT=7 ", "") {
		t.Error("MayBeExit without a nonce")
	}
	if n, ok := ParseExit("VMNET-EXIT=7 "+nonce+"\r", nonce); !ok || n != 7 {
		t.Errorf("ParseExit with nonce: %d %v", n, ok)
	}
	for _, st := range []int{0, 3, 143, 255} {
		for _, n := range []string{"", nonce} {
			if got, ok := ParseExit(ExitLine(st, n), n); !ok || got != st {
				t.Errorf("ParseExit(ExitLine(%d, %q)) = %d %v", st, n, got, ok)
			}
		}
	}
}

func TestGuestArgsNonce(t *testing.T) {
	n := NewNonce()
	if !validNonce(n) || n == NewNonce() {
		t.Fatalf("NewNonce %q", n)
	}
	app, err := Args{Cmd: "true", Nonce: n}.Append("")
	if err != nil || NonceOf(app) != n {
		t.Fatalf("append %q (%v): nonce %q, want %q", app, err, NonceOf(app), n)
	}
	for _, bad := range []string{"abc", "0123456789ABCDEF", "01234567 89", strings.Repeat("a", 65)} {
		if _, err := (Args{Nonce: bad}).Params(); err == nil {
			t.Errorf("nonce %q accepted", bad)
		}
	}
	if NonceOf(DefaultCmdline) != "" {
		t.Error("nonce found where none was given")
	}
}

func TestGuestArgs(t *testing.T) {
	g := Args{
		IPs:     []IP{{Iface: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24"), netip.MustParsePrefix("fd00::2/64")}}},
		Routes:  []Route{{GW: netip.MustParseAddr("10.0.0.1")}, {Dest: netip.MustParsePrefix("10.1.2.3/16"), GW: netip.MustParseAddr("10.0.0.1")}, {Dest: netip.MustParsePrefix("fd01::/64"), GW: netip.MustParseAddr("fd00::1")}},
		MTUs:    []MTU{{Iface: "eth0", MTU: 9000}},
		Modules: []string{"8021q", "bridge"},
		Cmd:     "echo hi",
	}
	got, err := g.Append("")
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultCmdline + " vmnet.ip=eth0:10.0.0.2/24+fd00::2/64 vmnet.mtu=eth0:9000 " +
		"vmnet.route=default:10.0.0.1 vmnet.route=10.1.0.0/16:10.0.0.1 vmnet.route=fd01::/64:fd00::1 " +
		"vmnet.modules=8021q,bridge vmnet.cmd=ZWNobyBoaQ=="
	if got != want {
		t.Errorf("append\n got %s\nwant %s", got, want)
	}
	for _, bad := range []Args{
		{IPs: []IP{{Iface: "eth 0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}}}},
		{IPs: []IP{{Iface: "eth0"}}},
		{Routes: []Route{{Dest: netip.MustParsePrefix("10.0.0.0/8"), GW: netip.MustParseAddr("fd00::1")}}},
		{Routes: []Route{{Dest: netip.MustParsePrefix("10.0.0.0/8")}}},
		{MTUs: []MTU{{Iface: "eth0", MTU: 10}}},
		{Cmd: strings.Repeat("x", 2000)},
	} {
		if s, err := bad.Append(""); err == nil {
			t.Errorf("accepted %+v: %s", bad, s)
		}
	}
}

// The parameters must stay what the image's /init reads.
func TestGuestArgsMatchImageContract(t *testing.T) {
	cmd := "echo 'a b'; exit 3"
	p, err := Args{Cmd: cmd}.Params()
	if err != nil || len(p) != 1 || p[0] != "vmnet.cmd=ZWNobyAnYSBiJzsgZXhpdCAz" {
		t.Errorf("cmd param %q (%v)", p, err)
	}
}
