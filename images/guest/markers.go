package guest

import (
	"strconv"
	"strings"
)

// Markers the test image's /init prints on its console (ttyS0), each on
// a line of its own (init.sh; package images documents the contract).
// Hosts match them as whole lines after removing surrounding white space,
// so command output that merely mentions one does not count.
const (
	// ReadyMarker: the guest applied its parameters and is usable.
	ReadyMarker = "VMNET-READY"
	// WarmMarker: a guest booted with vmnet.warm has done everything that
	// does not depend on its identity and waits for it on ttyS1.
	WarmMarker = "VMNET-WARM-POINT"
	// ExitMarker starts the line with the guest command's status (see
	// ParseExit and ExitLine).
	ExitMarker = "VMNET-EXIT="
	// ErrorMarker starts a line naming what /init could not set up.
	ErrorMarker = "VMNET-ERROR:"
)

// AckLine is the host's answer to an exit marker with nonce, written to
// the guest's console: /init powers off once it has it (or after three
// markers unanswered), so that no marker is lost in a buffer power-off
// drops. Without its line end.
func AckLine(nonce string) string { return "VMNET-ACK " + nonce }

// maxStatusDigits bounds the status in an exit marker (0 to 255).
const maxStatusDigits = 3

// ExitLine is the exit marker line for status and nonce ("" for none),
// without its line end.
func ExitLine(status int, nonce string) string {
	l := ExitMarker + strconv.Itoa(status)
	if nonce != "" {
		l += " " + nonce
	}
	return l
}

// ParseExit parses the exit marker /init prints after the guest command:
// "VMNET-EXIT=<status>", followed by " <nonce>" when the guest was given
// vmnet.nonce (Args.Nonce). l is one console line without its line
// end; a final "\r" is ignored. A line with another nonce, or without
// one when nonce is set, is not the marker.
func ParseExit(l, nonce string) (int, bool) {
	l = strings.TrimSuffix(l, "\r")
	rest, ok := strings.CutPrefix(l, ExitMarker)
	if !ok {
		return 0, false
	}
	d := leadingDigits(rest)
	if len(d) == 0 || len(d) > maxStatusDigits {
		return 0, false
	}
	tail := rest[len(d):]
	if nonce == "" && tail != "" || nonce != "" && tail != " "+nonce {
		return 0, false
	}
	n, _ := strconv.Atoi(d)
	return n, true
}

// MayBeExit reports whether l, the start of a console line, can still
// become the exit marker for nonce: what a filter holds back while the
// line is incomplete, at most len(ExitMarker)+len(nonce)+5 bytes.
func MayBeExit(l, nonce string) bool {
	if len(l) <= len(ExitMarker) {
		return strings.HasPrefix(ExitMarker, l)
	}
	rest, ok := strings.CutPrefix(l, ExitMarker)
	if !ok {
		return false
	}
	d := leadingDigits(rest)
	if len(d) > maxStatusDigits {
		return false
	}
	tail := rest[len(d):]
	if tail == "" {
		return true
	}
	if len(d) == 0 {
		return false
	}
	end := "\r"
	if nonce != "" {
		end = " " + nonce + "\r"
	}
	return strings.HasPrefix(end, tail)
}

func leadingDigits(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}
