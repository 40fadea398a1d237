package qemu

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/images"
)

func TestConsoleMarkersAndRing(t *testing.T) {
	var log bytes.Buffer
	c := newConsole(3, &log, nil)
	input := "boot\r\nVMNET-READY\r\nsaying VMNET-EXIT=5 is not a marker\r\n\r\nVMNET-EXIT=42\r\ntail-without-newline"
	// Feed in awkward chunks: markers split across writes.
	for i := 0; i < len(input); i += 4 {
		c.Write([]byte(input[i:min(i+4, len(input))]))
	}
	select {
	case <-c.ready:
	default:
		t.Fatal("VMNET-READY not seen")
	}
	select {
	case <-c.exited:
	default:
		t.Fatal("VMNET-EXIT not seen")
	}
	if c.status != 42 {
		t.Errorf("status %d, want 42 (a marker inside other text must not count)", c.status)
	}
	if log.String() != input {
		t.Errorf("log is not the raw console")
	}
	c.flush()
	if got, want := c.tail(10), []string{"", "VMNET-EXIT=42", "tail-without-newline"}; !slices.Equal(got, want) {
		t.Errorf("tail %q, want %q", got, want)
	}
	if got := c.tail(1); !slices.Equal(got, []string{"tail-without-newline"}) {
		t.Errorf("tail(1) %q", got)
	}
}

func TestConsoleErrorsAndLongLines(t *testing.T) {
	c := newConsole(5)
	fmt.Fprintf(c, "VMNET-ERROR: vmnet.ip: no interface eth9\nVMNET-ERROR: second\n%s\n", strings.Repeat("x", 3*maxLine))
	select {
	case <-c.failed:
	default:
		t.Fatal("VMNET-ERROR not seen")
	}
	if got := c.guestErrors(); len(got) != 2 || !strings.Contains(got[0], "eth9") {
		t.Errorf("errors %q", got)
	}
	if l := c.tail(1)[0]; len(l) != maxLine {
		t.Errorf("long line kept %d bytes, want %d", len(l), maxLine)
	}
	for _, bad := range []string{"VMNET-EXIT=", "VMNET-EXIT=x", "VMNET-EXIT=1 2", "VMNET-EXIT=-1", "VMNET-EXIT=1234"} {
		if _, ok := ParseExit(bad, ""); ok {
			t.Errorf("ParseExit accepted %q", bad)
		}
	}
}

// With a nonce only the marker carrying it counts, and the last one wins:
// a command that prints a marker line and then fails reports its failure.
func TestConsoleExitNonceLastWins(t *testing.T) {
	const nonce = "0123456789abcdef"
	c := newConsole(10)
	c.nonce = nonce
	fmt.Fprintf(c, "VMNET-READY\r\nVMNET-EXIT=0\r\nVMNET-EXIT=0 fedcba9876543210\r\n")
	select {
	case <-c.exited:
		t.Fatal("a marker without the nonce counted")
	default:
	}
	fmt.Fprintf(c, "VMNET-EXIT=0 %s\r\nstill running, then failing\r\n\r\nVMNET-EXIT=3 %s\r\n[   12.3] reboot: Power down\r\n", nonce, nonce)
	select {
	case <-c.exited:
	default:
		t.Fatal("marker with the nonce not seen")
	}
	if st := c.exitStatus(); st != 3 {
		t.Errorf("status %d, want 3 (the last marker)", st)
	}

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
}

func TestGuestArgsNonce(t *testing.T) {
	n := NewNonce()
	if !validNonce(n) || n == NewNonce() {
		t.Fatalf("NewNonce %q", n)
	}
	app, err := GuestArgs{Cmd: "true", Nonce: n}.Append("")
	if err != nil || nonceOf(app) != n {
		t.Fatalf("append %q (%v): nonce %q, want %q", app, err, nonceOf(app), n)
	}
	for _, bad := range []string{"abc", "0123456789ABCDEF", "01234567 89", strings.Repeat("a", 65)} {
		if _, err := (GuestArgs{Nonce: bad}).Params(); err == nil {
			t.Errorf("nonce %q accepted", bad)
		}
	}
	if nonceOf(images.DefaultCmdline) != "" {
		t.Error("nonce found where none was given")
	}
}

func TestGuestArgs(t *testing.T) {
	g := GuestArgs{
		IPs:     []GuestIP{{Iface: "eth0", Addrs: []netipPrefix{mustPrefix("10.0.0.2/24"), mustPrefix("fd00::2/64")}}},
		Routes:  []GuestRoute{{GW: mustAddr("10.0.0.1")}, {Dest: mustPrefix("10.1.2.3/16"), GW: mustAddr("10.0.0.1")}, {Dest: mustPrefix("fd01::/64"), GW: mustAddr("fd00::1")}},
		MTUs:    []GuestMTU{{Iface: "eth0", MTU: 9000}},
		Modules: []string{"8021q", "bridge"},
		Cmd:     "echo hi",
	}
	got, err := g.Append("")
	if err != nil {
		t.Fatal(err)
	}
	want := images.DefaultCmdline + " vmnet.ip=eth0:10.0.0.2/24+fd00::2/64 vmnet.mtu=eth0:9000 " +
		"vmnet.route=default:10.0.0.1 vmnet.route=10.1.0.0/16:10.0.0.1 vmnet.route=fd01::/64:fd00::1 " +
		"vmnet.modules=8021q,bridge vmnet.cmd=ZWNobyBoaQ=="
	if got != want {
		t.Errorf("append\n got %s\nwant %s", got, want)
	}
	for _, bad := range []GuestArgs{
		{IPs: []GuestIP{{Iface: "eth 0", Addrs: []netipPrefix{mustPrefix("10.0.0.2/24")}}}},
		{IPs: []GuestIP{{Iface: "eth0"}}},
		{Routes: []GuestRoute{{Dest: mustPrefix("10.0.0.0/8"), GW: mustAddr("fd00::1")}}},
		{Routes: []GuestRoute{{Dest: mustPrefix("10.0.0.0/8")}}},
		{MTUs: []GuestMTU{{Iface: "eth0", MTU: 10}}},
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
	p, err := GuestArgs{Cmd: cmd}.Params()
	if err != nil || len(p) != 1 || p[0] != images.CmdArg(cmd) {
		t.Errorf("cmd param %q, images.CmdArg gives %q (%v)", p, images.CmdArg(cmd), err)
	}
}
