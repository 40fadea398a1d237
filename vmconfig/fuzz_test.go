package vmconfig

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseValues puts fuzzed values into a well-formed config, reaching the
// semantic checks that random bytes rarely get past the TOML parser to.
func FuzzParseValues(f *testing.F) {
	f.Add("a", "52:54:00:00:00:01", "tap0", int64(2), int64(1), "vm:a:1", "10.0.0.2/24", "512M", "pc", "virtio-net-pci")
	f.Add("r-1", "", "", int64(0), int64(300), "udp:[::1]:1,remote=[::1]:2", "fd00::1/64", "1G", "microvm", "e1000")
	f.Fuzz(func(t *testing.T, name, mac, ifname string, cpus, queues int64, endpoint, addr, memory, machine, model string) {
		q := strconv.Quote
		doc := "[lab]\nname = \"f\"\n[[network]]\nname = \"n\"\naddresses = [\"10.0.0.1/24\"]\n" +
			"[[vm]]\nname = " + q(name) + "\nkernel = \"ok\"\ncpus = " + strconv.FormatInt(cpus, 10) +
			"\nmemory = " + q(memory) + "\nmachine = " + q(machine) + "\ngateway = \"10.0.0.1\"\n" +
			"[[vm.nic]]\nnetwork = \"n\"\nmac = " + q(mac) + "\nqueues = " + strconv.FormatInt(queues, 10) +
			"\nmodel = " + q(model) + "\naddress = [" + q(addr) + "]\n" +
			"[[vm.nic]]\nifname = " + q(ifname) + "\n" +
			"[[link]]\na = " + q(endpoint) + "\nb = \"tap:other\"\n"
		checkParse(t, []byte(doc))
	})
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.toml")
	more, _ := filepath.Glob("testdata/good/*.toml")
	for _, file := range append(files, more...) {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(checkParse)
}

// checkParse holds the invariants of Parse for any input.
func checkParse(t *testing.T, data []byte) {
	const name = "/fuzz/lab.toml"
	opts := Options{FileExists: fakeFiles}
	lab, err := Parse(name, data, opts)
	lab2, err2 := Parse(name, data, opts)
	if !reflect.DeepEqual(lab, lab2) || !reflect.DeepEqual(err, err2) {
		t.Fatalf("Parse is not deterministic:\n%v\n%v", err, err2)
	}
	var probs Problems
	switch {
	case err == nil && lab == nil:
		t.Fatal("nil lab and nil error")
	case err != nil && lab != nil:
		t.Fatal("lab returned with an error")
	case err != nil && !errors.As(err, &probs):
		t.Fatalf("error %T is not Problems", err)
	case err != nil && !probs.HasErrors():
		t.Fatal("error without an Error problem")
	case err == nil:
		probs = lab.Warnings
		if probs.HasErrors() {
			t.Fatal("lab.Warnings holds errors")
		}
	}
	lines := strings.Split(string(data), "\n")
	for i, p := range probs {
		if p.Pos.File != name || p.Pos.Line < 1 || p.Pos.Line > len(lines) || p.Pos.Col < 1 || p.Pos.Col > len(lines[p.Pos.Line-1])+1 {
			t.Fatalf("problem outside the file (%d lines): %s", len(lines), p)
		}
		if i > 0 {
			q := probs[i-1].Pos
			if q.Line > p.Pos.Line || q.Line == p.Pos.Line && q.Col > p.Pos.Col {
				t.Fatalf("problems not sorted: %s before %s", probs[i-1], p)
			}
		}
		if p.Msg == "" {
			t.Fatal("empty message")
		}
	}
	// The JSON form (vmnet validate -o json) is a list that reads back
	// to the same problems, also for odd bytes in messages and names.
	js, err := json.Marshal(probs)
	if err != nil || len(probs) == 0 && string(js) != "[]" {
		t.Fatalf("problems as JSON: %v %s", err, js)
	}
	var back Problems
	if err := json.Unmarshal(js, &back); err != nil || len(back) != len(probs) {
		t.Fatalf("problems JSON does not read back: %v\n%s", err, js)
	}
	for i := range back {
		if back[i] != probs[i] && strings.ToValidUTF8(probs[i].Msg, "\uFFFD") == probs[i].Msg {
			t.Fatalf("problem %d reads back as %v, want %v", i, back[i], probs[i])
		}
	}
	if lab == nil {
		return
	}
	checkResolved(t, lab)
	// Every host's part of a valid lab can be made, and the two halves of
	// a link across hosts meet: each is a tunnel from its host's address
	// to the other's, on the one port of the link.
	for _, h := range lab.Hosts {
		p, err := lab.Part(h.Name)
		if err != nil {
			t.Fatalf("part of host %s of a valid lab: %v", h.Name, err)
		}
		for _, l := range p.Links {
			for _, e := range []Endpoint{l.A, l.B} {
				if e.Kind == KindUDP && l.Port != 0 && (e.Local != netip.AddrPortFrom(h.Address, uint16(l.Port)) || e.Remote.Port() != uint16(l.Port)) {
					t.Fatalf("host %s: link %d half %s does not run on port %d from %s", h.Name, l.Index, e, l.Port, h.Address)
				}
			}
		}
	}
	nets := map[string]*Network{}
	for _, n := range lab.Networks {
		nets[n.Name] = n
	}
	outside := 0
	for _, vm := range lab.VMs {
		for _, n := range vm.NICs {
			// A guest address outside every subnet (of its family) of its
			// network's addresses is warned about, once per address.
			if nw := nets[n.Network]; nw != nil {
				for _, a := range n.Addresses {
					in, family := false, false
					for _, p := range nw.Addresses {
						if p.Addr().Is4() == a.Addr().Is4() {
							family = true
							in = in || p.Masked().Contains(a.Addr())
						}
					}
					if family && !in {
						outside++
					}
				}
			}
			if n.MAC[0]&1 != 0 {
				t.Fatalf("vm %s nic %d: multicast MAC %s", vm.Name, n.Index, n.MAC)
			}
			if !reflect.DeepEqual(n.MAC, DeriveMAC(lab.Name, vm.Name, n.Index)) {
				continue // explicit MAC
			}
			if n.MAC[0]&2 == 0 {
				t.Fatalf("derived MAC %s is not locally administered", n.MAC)
			}
		}
	}
	warned := 0
	for _, w := range lab.Warnings {
		if strings.Contains(w.Msg, "is outside every subnet of network") {
			warned++
		}
	}
	if warned != outside {
		t.Fatalf("%d guest addresses outside their network's subnets, %d warnings:\n%v", outside, warned, lab.Warnings)
	}
}
