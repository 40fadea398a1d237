package vmconfig

import (
	"strings"
	"testing"
)

// TestNamedImage: image = "debian-12" boots the named image with the
// agent readiness and a cloud-init seed; a VM's own kernel or disk wins
// over a default image and a VM's own image over a default kernel.
func TestNamedImage(t *testing.T) {
	lab, err := Parse("lab.toml", []byte(`[lab]
name = "d"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOb9bLyfNRqvxRz0m3PH5OwQzT2rD1cwvy1uOWdb2jFY a@b"]
[defaults]
image = "debian-12"
[[vm]]
name = "deb"
dns = "10.0.0.1"
user_data = "ud.yaml"
[[vm]]
name = "own"
kernel = "vmlinuz"
[[vm]]
name = "test"
image = "debian-12"
readiness = "none"
cloud_init = false
[[vm]]
name = "testimg"
kernel = "vmlinuz"
readiness = "agent"
cloud_init = true
`), Options{SkipFileChecks: true})
	if err != nil {
		t.Fatal(err)
	}
	deb, own, plain, ti := lab.VMs[0], lab.VMs[1], lab.VMs[2], lab.VMs[3]
	if deb.Image != ImageDebian12 || deb.Readiness != ReadyAgent || !deb.CloudInit || deb.Kernel != "" || len(deb.DNS) != 1 || !strings.HasSuffix(deb.UserData, "/ud.yaml") {
		t.Errorf("deb: %+v", deb)
	}
	if own.Image != "" || own.Readiness != ReadyNone || own.CloudInit || own.Kernel == "" {
		t.Errorf("own: %+v", own)
	}
	if plain.Readiness != ReadyNone || plain.CloudInit {
		t.Errorf("test: %+v", plain)
	}
	if ti.Readiness != ReadyAgent || !ti.CloudInit {
		t.Errorf("testimg: %+v", ti)
	}
	if len(lab.SSHAuthorizedKeys) != 1 {
		t.Errorf("keys %q", lab.SSHAuthorizedKeys)
	}
}

// TestNamedImageMistakes: each mistake is reported at its key, in words.
func TestNamedImageMistakes(t *testing.T) {
	for _, c := range []struct{ body, want string }{
		{"[[vm]]\nname = \"v\"\nimage = \"debian-13\"\n", `unknown image "debian-13": vmnet builds debian-12`},
		{"[[vm]]\nname = \"v\"\nimage = \"debian-12\"\nkernel = \"k\"\n", `kernel and image = "debian-12" both say what to boot`},
		{"[[vm]]\nname = \"v\"\nimage = \"debian-12\"\ndisk = \"d.img\"\n", `disk and image = "debian-12" both say what to boot`},
		{"[[vm]]\nname = \"v\"\nimage = \"debian-12\"\ncommand = \"true\"\n", "command runs only in vmnet's test image"},
		{"[[vm]]\nname = \"v\"\nuser_data = \"u\"\n", "user_data needs a cloud-init seed"},
		{"[[vm]]\nname = \"v\"\ndns = \"10.0.0.1\"\n", "dns is given to the guest through cloud-init"},
		{"[[vm]]\nname = \"v\"\nreadiness = \"ping\"\n", `unknown readiness "ping": use one of agent, console, ssh, none`},
		{"[[vm]]\nname = \"v\"\nimage = \"debian-12\"\nreadiness = \"console\"\n", `readiness = "console" waits for the ready marker of vmnet's test image`},
		{"[[vm]]\nname = \"v\"\nimage = \"debian-12\"\ndns = \"ns1\"\n", `dns "ns1" is not an IP address`},
	} {
		_, err := Parse("lab.toml", []byte("[lab]\nname = \"l\"\n"+c.body), Options{SkipFileChecks: true})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want %q", c.body, err, c.want)
		}
	}
	_, err := Parse("lab.toml", []byte("[lab]\nname = \"l\"\nssh_authorized_keys = [\"not a key\"]\n"), Options{SkipFileChecks: true})
	if err == nil || !strings.Contains(err.Error(), "ssh_authorized_keys[0] is not an SSH public key") {
		t.Errorf("bad key: %v", err)
	}
}
