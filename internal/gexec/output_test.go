package gexec

import (
	"bytes"
	"strings"
	"testing"
)

// The console as the guest writes it: boot chatter with CRLF, the ready
// marker, the program's output (LF only, the wrapper turns onlcr off),
// "\nVMNET-EXIT=<n>\n" and power-off chatter.
const testNonce = "0123456789abcdef"

func console(program string, exit string) string {
	return "[    0.9] PCI: Fatal: No config space access function found\r\n" +
		"VMNET-READY\r\nVMNET-EXEC-START\n" + program + "\n" + exit + "\n[   3.1] reboot: Power down\r\n"
}

func TestOutputFilter(t *testing.T) {
	for _, tc := range []struct {
		name, program, want string
	}{
		{"lines", "=== RUN   TestX\n--- PASS: TestX (0.00s)\nPASS\n", "=== RUN   TestX\n--- PASS: TestX (0.00s)\nPASS\n"},
		{"no final newline", "no-newline", "no-newline"},
		{"empty", "", ""},
		{"blank lines kept", "\n\na\n\n", "\n\na\n\n"},
		{"marker-like output", "VMNET-EXIT=\nVMNET-EXIT=1x\nVMNET-EXITS\nVMNET-READY\nxVMNET-EXIT=3\n",
			"VMNET-EXIT=\nVMNET-EXIT=1x\nVMNET-EXITS\nVMNET-READY\nxVMNET-EXIT=3\n"},
		{"prefix then more", "VMNET-EX", "VMNET-EX"},
		{"marker without the nonce", "VMNET-EXIT=0\nVMNET-EXIT=0 0000000000000000\nfailing\n",
			"VMNET-EXIT=0\nVMNET-EXIT=0 0000000000000000\nfailing\n"},
		{"long digit run", "VMNET-EXIT=" + strings.Repeat("1", 10000) + "\n", "VMNET-EXIT=" + strings.Repeat("1", 10000) + "\n"},
		{"CR kept", "a\r\nb\rc\n", "a\r\nb\rc\n"},
	} {
		in := console(tc.program, "VMNET-EXIT=7 "+testNonce)
		// Every chunking the console may deliver: whole, bytewise, in threes.
		for _, size := range []int{len(in), 1, 3, 17} {
			var out, boot bytes.Buffer
			f := newOutputFilter(&out, &boot, testNonce)
			maxHold := 0
			for i := 0; i < len(in); i += size {
				f.Write([]byte(in[i:min(i+size, len(in))]))
				maxHold = max(maxHold, len(f.hold))
			}
			if maxHold > 64 {
				t.Errorf("%s: held back %d bytes of a line", tc.name, maxHold)
			}
			f.flush()
			if out.String() != tc.want {
				t.Errorf("%s, chunks of %d: output %q, want %q", tc.name, size, out.String(), tc.want)
			}
			if !strings.Contains(boot.String(), "PCI: Fatal") || strings.Contains(boot.String(), "\r") {
				t.Errorf("%s: boot console %q lacks the boot line or keeps CR", tc.name, boot.String())
			}
		}
	}
}

// Without the exit marker (guest died), what was held back still comes out.
func TestOutputFilterNoMarker(t *testing.T) {
	var out bytes.Buffer
	f := newOutputFilter(&out, nil, testNonce)
	f.Write([]byte("VMNET-READY\r\nVMNET-EXEC-START\npanic: boom\nVMNET-EX"))
	f.flush()
	if got := out.String(); got != "panic: boom\nVMNET-EX" {
		t.Fatalf("output %q", got)
	}
	// Before VMNET-EXEC-START nothing is program output.
	out.Reset()
	f = newOutputFilter(&out, nil, testNonce)
	f.Write([]byte("Kernel panic - not syncing\r\nVMNET-READY\r\nVMNET-EXEC-ERROR: cannot load kernel modules x: not found\n\nVMNET-EXIT=125\n"))
	f.flush()
	if out.Len() != 0 {
		t.Fatalf("boot chatter reached the output: %q", out.String())
	}
	if got := f.startError(); got != "cannot load kernel modules x: not found" {
		t.Fatalf("startError = %q", got)
	}
}

func TestIsExitLine(t *testing.T) {
	for _, tc := range []struct {
		l              string
		complete, want bool
	}{
		{"VMNET-EXIT=0", true, true},
		{"VMNET-EXIT=125\r", true, true},
		{"VMNET-EXIT=", true, false},
		{"VMNET-EXIT=", false, true},
		{"VMNET-E", false, true},
		{"", false, true},
		{"", true, false},
		{"VMNET-EXIT=1\r", false, true},
		{"VMNET-EXIT=1\r2", false, false},
		{"VMNET-EXIT=-1", true, false},
		{"XVMNET-EXIT=1", false, false},
	} {
		f := newOutputFilter(nil, nil, "")
		if got := f.isExitLine([]byte(tc.l), tc.complete); got != tc.want {
			t.Errorf("isExitLine(%q, %v) = %v, want %v", tc.l, tc.complete, got, tc.want)
		}
	}
}

func TestWrapperQuoting(t *testing.T) {
	s := string(wrapperScript("/vmnet/prog/x.test", "/work/it's", []string{"a b", "it's", "", "$(reboot)"},
		[]string{"CI=true", "X=a'b"}, []string{"/tmp/cover"}, []string{"sch_netem", "8021q"}, false))
	for _, want := range []string{
		"export CI='true'\n", `export X='a'\''b'` + "\n", "mkdir -p '/tmp/cover'\n",
		`cd '/work/it'\''s' || {`, "echo VMNET-EXEC-START\n",
		`*/sch_netem.ko*|*/sch-netem.ko*) ;; *) mods="$mods sch_netem" ;; esac`, "modprobe -a $mods",
		`exec '/vmnet/prog/x.test' 'a b' 'it'\''s' '' '$(reboot)' </dev/null`,
		"echo 1 >/proc/sys/kernel/printk", "stty -onlcr",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("wrapper lacks %q:\n%s", want, s)
		}
	}
}

func TestTimeoutFor(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-test.paniconexit0", "-test.timeout=10m0s", "-test.v=true"}, "11m0s"},
		{[]string{"--test.timeout", "30s"}, "1m30s"},
		{[]string{"-test.timeout=0s"}, "10m0s"},
		{[]string{"test.timeout=5s"}, "10m0s"}, // a positional argument, not a flag
		{nil, "10m0s"},
	} {
		if got := TimeoutFor(tc.args).String(); got != tc.want {
			t.Errorf("TimeoutFor(%q) = %s, want %s", tc.args, got, tc.want)
		}
	}
}

func TestOutputDirs(t *testing.T) {
	o := Options{Args: []string{"-test.gocoverdir=/tmp/go-build1/b001/gocoverdir", "-test.v", "-test.outputdir=/x"}}
	got := strings.Join(o.outputDirs(), " ")
	if got != "/tmp/go-build1/b001/gocoverdir /x" {
		t.Fatalf("outputDirs = %q", got)
	}
}
