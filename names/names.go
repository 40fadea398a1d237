// Package names holds vmnet's one grammar for the names users give it:
// object names (labs, networks, VMs, NICs), which end up in paths, tags
// and derived interface names, and Linux interface names (taps, bridges,
// ports, guest interfaces). Every name from the command line or a lab file
// is checked here before anything touches a path, a tag or an interface.
//
// Object names are 1 to 64 bytes of ASCII letters, digits, '-', '_' and
// '.', starting with a letter or a digit. So "", ".", "..", anything with
// '/', a leading '-', whitespace and control characters are refused, and
// an object name is always a single, harmless path element.
//
// Interface names follow the kernel's dev_valid_name (net/core/dev.c): 1
// to 15 bytes (IFNAMSIZ-1; longer names are cut silently by some
// libraries), not "." or "..", no '/', ':' or whitespace; vmnet also
// refuses '%' (the kernel would pick a name for "%d") and control
// characters.
package names

import (
	"errors"
	"fmt"
	"unicode"
)

// MaxLen is the longest object name in bytes.
const MaxLen = 64

// IfNameMax is the longest Linux interface name in bytes (IFNAMSIZ-1).
const IfNameMax = 15

// ErrInvalid is wrapped by every error of this package.
var ErrInvalid = errors.New("invalid name")

// nameError names what was wrong; it wraps ErrInvalid.
type nameError struct{ msg string }

func (e *nameError) Error() string { return e.msg }
func (e *nameError) Unwrap() error { return ErrInvalid }

func fail(format string, args ...any) error { return &nameError{fmt.Sprintf(format, args...)} }

const objectRule = "use 1-64 letters, digits, '-', '_' and '.', starting with a letter or digit"

// Check validates an object name; what says which ("lab", "network",
// "VM", "NIC") and starts the error: `lab name "..": ...`.
func Check(what, name string) error {
	switch {
	case name == "":
		return fail("%s name is empty: %s", what, objectRule)
	case len(name) > MaxLen:
		return fail("%s name %q is %d bytes, longer than %d", what, name, len(name), MaxLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if alnum || i > 0 && (c == '-' || c == '_' || c == '.') {
			continue
		}
		var why string
		switch {
		case c == '/':
			why = "contains '/'"
		case c == ' ' || c >= '\t' && c <= '\r':
			why = "contains whitespace"
		case c < 0x20 || c == 0x7f:
			why = "contains a control character"
		case i == 0 && (c == '-' || c == '.' || c == '_'):
			why = fmt.Sprintf("starts with %q", c)
		case c >= 0x80:
			why = "contains a non-ASCII character"
		default:
			why = fmt.Sprintf("contains %q", c)
		}
		return fail("%s name %q %s: %s", what, name, why, objectRule)
	}
	return nil
}

// Lab, Network, VM and NIC check one kind of object name.
func Lab(name string) error     { return Check("lab", name) }
func Network(name string) error { return Check("network", name) }
func VM(name string) error      { return Check("VM", name) }
func NIC(name string) error     { return Check("NIC", name) }

// Interface validates a Linux interface name; what says which ("tap",
// "bridge", "port", "interface", ...) and starts the error.
func Interface(what, name string) error {
	switch {
	case name == "":
		return fail("%s name is empty: give an interface name of 1-%d bytes", what, IfNameMax)
	case len(name) > IfNameMax:
		return fail("%s name %q is %d bytes; Linux allows at most %d", what, name, len(name), IfNameMax)
	case name == "." || name == "..":
		return fail("%s name %q is not allowed", what, name)
	}
	for _, r := range name {
		switch {
		case r == '/' || r == ':' || r == '%':
			return fail("%s name %q contains %q, which interface names may not contain (no '/', ':', '%%', whitespace or control characters)", what, name, r)
		case unicode.IsSpace(r):
			return fail("%s name %q contains whitespace", what, name)
		case r < 0x20 || r == 0x7f || r == unicode.ReplacementChar:
			return fail("%s name %q contains a control character or invalid UTF-8", what, name)
		}
	}
	return nil
}
