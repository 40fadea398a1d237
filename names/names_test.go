package names_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/names"
)

func TestCheck(t *testing.T) {
	for _, ok := range []string{"a", "demo", "lab-1", "r1.example", "A_b", "0", "vmnet", "adhoc", strings.Repeat("x", 64)} {
		if err := names.Check("lab", ok); err != nil {
			t.Errorf("Check(%q) = %v, want nil", ok, err)
		}
	}
	for name, want := range map[string]string{
		"":                      `lab name is empty`,
		".":                     `lab name "." starts with '.'`,
		"..":                    `lab name ".." starts with '.'`,
		"../etc":                `lab name "../etc" starts with '.'`,
		"a/b":                   `lab name "a/b" contains '/'`,
		"/run":                  `lab name "/run" contains '/'`,
		"-rf":                   `lab name "-rf" starts with '-'`,
		"_x":                    `lab name "_x" starts with '_'`,
		"a b":                   `lab name "a b" contains whitespace`,
		"a\tb":                  "contains whitespace",
		"a\nb":                  "contains whitespace",
		"a\x00":                 "contains a control character",
		"a\x7f":                 "contains a control character",
		"vmnet:adhoc":           `contains ':'`,
		"a*":                    `contains '*'`,
		"é":                     "non-ASCII",
		strings.Repeat("x", 65): "65 bytes, longer than 64",
	} {
		err := names.Check("lab", name)
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, names.ErrInvalid) {
			t.Errorf("Check(%q) = %v, want an error containing %q wrapping ErrInvalid", name, err, want)
		}
	}
	if err := names.VM("a b"); err == nil || !strings.HasPrefix(err.Error(), `VM name "a b"`) {
		t.Errorf("VM names the argument: %v", err)
	}
}

func TestInterface(t *testing.T) {
	for _, ok := range []string{"eth0", "br-lan", "t-a-0", "a.b", "x", strings.Repeat("x", 15), "vmnet_0", "ä"} {
		if err := names.Interface("tap", ok); err != nil {
			t.Errorf("Interface(%q) = %v", ok, err)
		}
	}
	for name, want := range map[string]string{
		"":                      "tap name is empty",
		".":                     "not allowed",
		"..":                    "not allowed",
		"a/b":                   `contains '/'`,
		"a:1":                   `contains ':'`,
		"tap%d":                 `contains '%'`,
		"a b":                   "whitespace",
		"a\u00a0":               "whitespace",
		"a\x00":                 "control character",
		"a\xff":                 "invalid UTF-8",
		strings.Repeat("x", 16): "16 bytes; Linux allows at most 15",
	} {
		err := names.Interface("tap", name)
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, names.ErrInvalid) {
			t.Errorf("Interface(%q) = %v, want %q", name, err, want)
		}
	}
}

// FuzzCheck: an accepted object name is a single path element, never a
// relative step, has no separator of tags or endpoints, and is a valid
// interface name whenever it is short enough to be one.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{"", ".", "..", "a", "a/b", "-x", "a b", "lab.1", "x:y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if names.Check("lab", s) != nil {
			return
		}
		if s == "." || s == ".." || strings.ContainsAny(s, "/:,=% \t\n\x00") || s[0] == '-' || len(s) > names.MaxLen {
			t.Fatalf("accepted %q", s)
		}
		if len(s) <= names.IfNameMax {
			if err := names.Interface("tap", s); err != nil {
				t.Fatalf("object name %q is not an interface name: %v", s, err)
			}
		}
	})
}
