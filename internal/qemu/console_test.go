package qemu

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
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
	case <-c.acks:
		t.Fatal("a marker without the nonce is answered")
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
	select {
	case <-c.acks: // one token for both: the answer is the same
	default:
		t.Fatal("markers with the nonce not answered")
	}
}
