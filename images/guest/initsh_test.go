package guest

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"testing"
)

// The test image's /init (images/init.sh) speaks the other end of this
// package's protocol: its markers, parameters and identity framing must
// be these constants, or hosts and guests stop understanding each other
// without any build error.
func TestInitShellAgrees(t *testing.T) {
	b, err := os.ReadFile("../init.sh")
	if err != nil {
		t.Fatal(err)
	}
	init := string(b)
	lines := strings.Split(init, "\n")
	hasLine := func(want string) bool {
		for _, l := range lines {
			if strings.TrimSpace(l) == want {
				return true
			}
		}
		return false
	}
	for _, want := range []string{
		"[ \"$errors\" -gt 0 ] || echo " + ReadyMarker,
		`echo "` + ErrorMarker + ` $*"`,
		// The parameters /init parses (case patterns).
		ParamIP + "*)", ParamRoute + "*)", ParamMTU + "*)", ParamModules + "*)", ParamCmd + "*)", ParamNonce + "*)",
		ParamWarm + ")",
		// The helper's FIFOs (ShellProgram).
		"hreq=" + HelperRequest, "hans=" + HelperAnswer,
	} {
		if !strings.Contains(init, want) {
			t.Errorf("init.sh lacks %q", want)
		}
	}
	// The identity (IdentityText) is read by the image's helper.
	h, err := os.ReadFile("../helper/main.go")
	if err != nil {
		t.Fatal(err)
	}
	if want := `strings.HasPrefix(l, "` + IdentityEnd + `")`; !strings.Contains(string(h), want) {
		t.Errorf("the image's helper lacks %q", want)
	}
	if !hasLine("echo " + WarmMarker) {
		t.Errorf("init.sh does not print %s on a line of its own", WarmMarker)
	}
	// The exit marker: /init's printf formats must give ExitLine's text
	// (printf's %d and %s are Go's for these values).
	for _, tc := range []struct{ format, nonce string }{
		{`printf '\n` + ExitMarker + `%d %s\n' "$1" "$nonce"`, "0123456789abcdef"},
		{`printf '\n` + ExitMarker + `%d\n' "$1"`, ""},
	} {
		if !hasLine(tc.format) {
			t.Errorf("init.sh lacks the line %q", tc.format)
			continue
		}
		f := strings.ReplaceAll(strings.SplitN(tc.format, "'", 3)[1], `\n`, "\n")
		var got string
		if tc.nonce != "" {
			got = fmt.Sprintf(f, 42, tc.nonce)
		} else {
			got = fmt.Sprintf(f, 42)
		}
		if want := "\n" + ExitLine(42, tc.nonce) + "\n"; got != want {
			t.Errorf("init.sh prints %q, hosts expect %q", got, want)
		}
	}
}

// IdentityText as /init reads it: base64 lines up to the END line, whose
// SHA-256 covers the decoded words.
func TestIdentityText(t *testing.T) {
	words := []string{"vmnet.mac=eth0:52:54:00:00:00:01", "vmnet.hostname=a", strings.Repeat("vmnet.cmd=x ", 400)}
	txt := IdentityText(words)
	ls := strings.Split(strings.TrimSuffix(txt, "\n"), "\n")
	last := ls[len(ls)-1]
	if len(ls) < 3 || !strings.HasPrefix(last, IdentityEnd) {
		t.Fatalf("want several base64 lines and the end line: %q", txt)
	}
	b, err := base64.StdEncoding.DecodeString(strings.Join(ls[:len(ls)-1], ""))
	if err != nil || string(b) != strings.Join(words, " ") {
		t.Fatalf("decoded %q (%v)", b, err)
	}
	if sum := fmt.Sprintf("%x", sha256.Sum256(b)); last != IdentityEnd+sum {
		t.Errorf("end line %q, want the SHA-256 %s", last, sum)
	}
	for _, l := range ls {
		if len(l) > identityChunk+len(IdentityEnd)+64 {
			t.Errorf("line of %d bytes: the guest tty takes at most 4095", len(l))
		}
	}
}
