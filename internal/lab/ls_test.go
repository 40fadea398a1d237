package lab

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/owner"
	"github.com/vmnet/vmnet/vmconfig"
)

// TestList: `vmnet ls` finds the labs of every namespace with their
// state: up (a live supervisor), stale (a dead one, or tagged interfaces
// without a state directory), stopped (a state directory only).
func TestList(t *testing.T) {
	testenv.RequirePrivateRun(t)
	inPrivateNS(t, func(here NetNS) { list(t, here) })
}

func list(t *testing.T, here NetNS) {
	other := testenv.NetNS(t)
	var there NetNS
	testenv.Do(t, other, func() error {
		var err error
		there, err = CurrentNetNS()
		return err
	})
	claim := func(name string, ns NetNS, st *State) {
		t.Helper()
		cfg, err := vmconfig.Parse("lab.toml", []byte("[lab]\nname = \""+name+"\"\n"), vmconfig.Options{StateRoot: StateRoot(ns)})
		if err != nil {
			t.Fatal(err)
		}
		if err := ClaimStateDir(cfg, ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(cfg.StateDir) })
		if st != nil {
			st.Lab, st.StateDir, st.Started = name, cfg.StateDir, time.Now()
			if err := writeState(st); err != nil {
				t.Fatal(err)
			}
		}
	}
	sup := decoy(t, "vmnet", "up") // passes for a live supervisor
	start, err := procStart(sup.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	claim("running", here, &State{Supervisor: sup.Process.Pid, SupervisorStart: start, Phase: "up",
		VMs: []VMState{{Name: "a"}, {Name: "b"}}})
	claim("crashed", here, &State{Supervisor: sup.Process.Pid, SupervisorStart: start + 1, Phase: "up", VMs: []VMState{{Name: "c"}}})
	claim("idle", here, nil)
	claim("elsewhere", there, &State{Phase: "starting"})
	// A lab whose state directory is gone but whose bridge is left.
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "ghost-lan"}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	if err := owner.Set(&netlink.Handle{}, br, owner.Lab("ghost")); err != nil {
		t.Fatal(err)
	}

	got, err := List()
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		got[i].StateDir, got[i].Config = "", ""
	}
	h, th := nsString(here), nsString(there)
	want := []Listed{
		{Name: "crashed", NetNS: h, State: "stale", Phase: "up", VMs: []string{"c"}},
		{Name: "ghost", NetNS: h, State: "stale", VMs: []string{}},
		{Name: "idle", NetNS: h, State: "stopped", VMs: []string{}},
		{Name: "running", NetNS: h, State: "up", Phase: "up", VMs: []string{"a", "b"}},
		{Name: "elsewhere", NetNS: th, State: "stale", Phase: "starting", VMs: []string{}},
	}
	if h > th {
		want = append(want[4:], want[:4]...)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("List:\n%+v\nwant\n%+v", got, want)
	}

	var b bytes.Buffer
	if err := WriteList(&b, "table", got); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 6 || strings.Fields(lines[0])[0] != "LAB" || !reflect.DeepEqual(strings.Fields(lines[1+slicesIndex(got, "running")]), []string{"running", h, "up", "a,b"}) {
		t.Errorf("table:\n%s", b.String())
	}
	b.Reset()
	WriteList(&b, "json", got)
	var js []map[string]any
	if err := json.Unmarshal(b.Bytes(), &js); err != nil || len(js) != 5 || js[0]["netns"] == nil || js[0]["vms"] == nil {
		t.Errorf("json: %v\n%s", err, b.String())
	}
	b.Reset()
	WriteList(&b, "json", nil)
	if strings.TrimSpace(b.String()) != "[]" {
		t.Errorf("no labs as json: %s", b.String())
	}
}

func slicesIndex(ls []Listed, name string) int {
	for i, l := range ls {
		if l.Name == name {
			return i
		}
	}
	return -1
}
