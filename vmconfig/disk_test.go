package vmconfig

import (
	"fmt"
	"strings"
	"testing"
)

// TestDisksResolved: disk = "..." is the boot disk; [[vm.disk]] tables
// are attached in order with the VM's disk_format and disk_mode as
// defaults; overlay is the default mode everywhere; a VM's own disks
// replace those of [defaults].
func TestDisksResolved(t *testing.T) {
	lab, probs := parse(t, head+`[defaults]
disk_mode = "snapshot"
[[vm]]
name = "a"
disk = "ok-a.qcow2"
disk_mode = "overlay"
[[vm]]
name = "b"
disk_format = "qcow2"
  [[vm.disk]]
  path = "ok-b0.img"
  boot = true
  [[vm.disk]]
  path = "ok-b1.raw"
  mode = "persistent"
  format = "raw"
  [[vm.disk]]
  path = "ok-a.qcow2"
  read_only = true
[[vm]]
name = "c"
  [[vm.disk]]
  path = "ok-c.vmdk"
[[vm]]
name = "d"
kernel = "ok-k"
disk = "ok-d.img"
`)
	if lab == nil {
		t.Fatal(probs)
	}
	got := map[string]string{}
	for _, vm := range lab.VMs {
		var s []string
		for _, d := range vm.Disks {
			s = append(s, fmt.Sprintf("%s %s %s ro=%v boot=%v", d.Path, d.Format, d.Mode, d.ReadOnly, d.Boot))
		}
		got[vm.Name] = fmt.Sprintf("disk=%s/%s %s", vm.Disk, vm.DiskFormat, strings.Join(s, "; "))
	}
	want := map[string]string{
		"a": "disk=/cfg/ok-a.qcow2/qcow2 /cfg/ok-a.qcow2 qcow2 overlay ro=false boot=true",
		"b": "disk=/cfg/ok-b0.img/qcow2 /cfg/ok-b0.img qcow2 snapshot ro=false boot=true; /cfg/ok-b1.raw raw persistent ro=false boot=false; /cfg/ok-a.qcow2 qcow2  ro=true boot=false",
		"c": "disk=/ /cfg/ok-c.vmdk vmdk snapshot ro=false boot=false",
		"d": "disk=/cfg/ok-d.img/raw /cfg/ok-d.img raw snapshot ro=false boot=false",
	}
	for n, w := range want {
		if got[n] != w {
			t.Errorf("vm %s:\n got %s\nwant %s", n, got[n], w)
		}
	}

	// Without any disk_mode, every disk is an overlay.
	lab, probs = parse(t, head+"[[vm]]\nname = \"a\"\ndisk = \"ok.img\"\n[[vm]]\nname = \"b\"\n[[vm.disk]]\npath = \"ok.img\"\n")
	if lab == nil {
		t.Fatal(probs)
	}
	for _, vm := range lab.VMs {
		if len(vm.Disks) != 1 || vm.Disks[0].Mode != DiskOverlay {
			t.Errorf("vm %s: disks %+v, want one overlay", vm.Name, vm.Disks[0])
		}
	}
	// [defaults] disk is replaced by a VM's tables.
	lab, probs = parse(t, head+"[defaults]\ndisk = \"ok-def.img\"\n[[vm]]\nname = \"a\"\n[[vm.disk]]\npath = \"ok-own.img\"\n[[vm]]\nname = \"b\"\n")
	if lab == nil {
		t.Fatal(probs)
	}
	if d := lab.VMs[0].Disks; len(d) != 1 || d[0].Path != "/cfg/ok-own.img" || lab.VMs[0].Disk != "" {
		t.Errorf("vm a: disk %q, disks %+v", lab.VMs[0].Disk, d)
	}
	if d := lab.VMs[1].Disks; len(d) != 1 || d[0].Path != "/cfg/ok-def.img" || !d[0].Boot {
		t.Errorf("vm b: disks %+v", d)
	}
}

// TestDiskProblems: each mistake is reported at its key with the VM's
// name; a persistent image shared by two VMs is refused at validate.
func TestDiskProblems(t *testing.T) {
	vm := head + "[[vm]]\nname = \"a\"\n" // the VM's keys start at line 7
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"unknown mode", vm + "disk = \"ok.img\"\ndisk_mode = \"cow\"\n", []string{`8:1: vm "a": unknown disk_mode "cow": use one of overlay, snapshot, persistent`}},
		{"table without path", vm + "[[vm.disk]]\nformat = \"raw\"\n", []string{`7:1: vm "a": disk 0: path is required`}},
		{"table missing file", vm + "[[vm.disk]]\npath = \"gone.img\"\n", []string{`8:1: vm "a": disk 0: path file /cfg/gone.img does not exist`}},
		{"table bad keys", vm + "[[vm.disk]]\npath = \"ok.img\"\nmode = \"rw\"\nreadonly = true\nformat = \"iso\"\n", []string{
			`9:1: vm "a": disk 0: unknown mode "rw"`, `10:1: vm "a": disk 0: unknown key "readonly"; did you mean "read_only"?`, `11:1: vm "a": disk 0: unknown format "iso"`}},
		{"read-only with mode", vm + "[[vm.disk]]\npath = \"ok.img\"\nread_only = true\nmode = \"persistent\"\n", []string{
			`10:1: vm "a": disk 0: a read-only disk is never written, so it has no mode`}},
		{"boot not first", vm + "[[vm.disk]]\npath = \"ok1.img\"\n[[vm.disk]]\npath = \"ok2.img\"\nboot = true\n", []string{
			`11:1: vm "a": disk 1: only the first [[vm.disk]] can be the boot disk`}},
		{"boot with kernel", vm + "kernel = \"ok-k\"\n[[vm.disk]]\npath = \"ok1.img\"\nboot = true\n", []string{
			`10:1: vm "a": disk 0: boot = true, but the VM boots the kernel it names`}},
		{"append with a boot table", vm + "append = \"x\"\n[[vm.disk]]\npath = \"ok1.img\"\nboot = true\n", []string{
			`7:1: vm "a": append needs kernel`}},
		{"append with data disks", vm + "append = \"x\"\n[[vm.disk]]\npath = \"ok1.img\"\n", nil},
		{"disk not tables", vm + "disk = 3\n", []string{`7:1: vm "a": disk must be a string, not an integer`}},
		{"persistent twice in one VM", vm + "disk_mode = \"persistent\"\n[[vm.disk]]\npath = \"ok1.img\"\n[[vm.disk]]\npath = \"ok1.img\"\n", []string{
			`11:1: vm "a": disk /cfg/ok1.img is attached twice and written`}},
		{"persistent shared by two VMs", vm + "disk = \"ok-shared.img\"\ndisk_mode = \"persistent\"\n[[vm]]\nname = \"b\"\n[[vm.disk]]\npath = \"ok-shared.img\"\nmode = \"persistent\"\n", []string{
			`12:1: vm "b": disk /cfg/ok-shared.img is written by vm "a" (mode persistent, line 7) and this VM writes it too: two running VMs cannot share an image one of them writes`}},
		{"persistent read by another VM", vm + "disk = \"ok-shared.img\"\ndisk_mode = \"persistent\"\n[[vm]]\nname = \"b\"\n[[vm.disk]]\npath = \"ok-shared.img\"\nread_only = true\n", []string{
			`12:1: vm "b": disk /cfg/ok-shared.img is written by vm "a" (mode persistent, line 7) and this VM reads it too`}},
		{"overlays share a base", vm + "disk = \"ok-shared.img\"\n[[vm]]\nname = \"b\"\ndisk = \"ok-shared.img\"\ndisk_mode = \"snapshot\"\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, probs := parse(t, tt.doc)
			var got []string
			for _, p := range probs {
				got = append(got, p.String())
			}
			if len(got) != len(tt.want) {
				t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %d:\n got %s\nwant %s", i, got[i], w)
				}
			}
		})
	}
}
