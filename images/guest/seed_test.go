package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"mime"
	"mime/multipart"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/internal/testenv"
)

func sampleSeed() Seed {
	return Seed{
		InstanceID: "lab-d1-1", Hostname: "d1",
		NICs: []SeedNIC{
			{Name: "eth0", MAC: "AA:BB:CC:00:00:01", Addresses: []netip.Prefix{netip.MustParsePrefix("10.81.0.11/24"), netip.MustParsePrefix("fd81::11/64")}, MTU: 9000},
			{Name: "eth1", MAC: "aa:bb:cc:00:00:02"},
		},
		Gateways: []netip.Addr{netip.MustParseAddr("10.81.0.1"), netip.MustParseAddr("fd81::1")},
		DNS:      []netip.Addr{netip.MustParseAddr("10.81.0.1")},
		SSHKeys:  []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOb9bLyfNRqvxRz0m3PH5OwQzT2rD1cwvy1uOWdb2jFY a@b"},
	}
}

// TestNetworkConfig: version 2, NICs matched by MAC (lower case) and
// renamed, addresses, MTU, default routes on the NIC whose prefix holds
// the gateway, and name servers.
func TestNetworkConfig(t *testing.T) {
	var nc struct {
		Version   int `json:"version"`
		Ethernets map[string]struct {
			Match struct {
				MAC string `json:"macaddress"`
			} `json:"match"`
			SetName   string   `json:"set-name"`
			Addresses []string `json:"addresses"`
			MTU       int      `json:"mtu"`
			DHCP4     bool     `json:"dhcp4"`
			Routes    []struct {
				To, Via string
			} `json:"routes"`
			Nameservers *struct {
				Addresses []string `json:"addresses"`
			} `json:"nameservers"`
		} `json:"ethernets"`
	}
	if err := json.Unmarshal(sampleSeed().NetworkConfig(), &nc); err != nil {
		t.Fatal(err)
	}
	e0, e1 := nc.Ethernets["eth0"], nc.Ethernets["eth1"]
	if nc.Version != 2 || e0.Match.MAC != "aa:bb:cc:00:00:01" || e0.SetName != "eth0" || e0.MTU != 9000 || e0.DHCP4 ||
		strings.Join(e0.Addresses, " ") != "10.81.0.11/24 fd81::11/64" || len(e0.Routes) != 2 ||
		e0.Routes[0].To != "0.0.0.0/0" || e0.Routes[0].Via != "10.81.0.1" || e0.Routes[1].To != "::/0" ||
		e0.Nameservers == nil || e0.Nameservers.Addresses[0] != "10.81.0.1" {
		t.Errorf("eth0: %+v", e0)
	}
	if e1.Match.MAC != "aa:bb:cc:00:00:02" || len(e1.Routes) != 0 || e1.Nameservers != nil || len(e1.Addresses) != 0 {
		t.Errorf("eth1: %+v", e1)
	}
}

// TestUserDataMerge: without the user's file, a plain #cloud-config with
// the keys and hostname; with it, a MIME multipart whose second part
// keeps the user's type and asks cloud-init to merge.
func TestUserDataMerge(t *testing.T) {
	s := sampleSeed()
	own, err := s.UserDataFile()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(own, []byte("#cloud-config\n")) || !bytes.Contains(own, []byte(s.SSHKeys[0])) || !bytes.Contains(own, []byte(`"hostname": "d1"`)) ||
		!bytes.Contains(own, []byte("nameserver 10.81.0.1")) {
		t.Fatalf("user-data:\n%s", own)
	}
	s.UserData = []byte("#!/bin/sh\necho hi\n")
	mp, err := s.UserDataFile()
	if err != nil {
		t.Fatal(err)
	}
	head, body, _ := bytes.Cut(mp, []byte("\n\n"))
	ct := strings.TrimPrefix(strings.SplitN(string(head), "\n", 2)[0], "Content-Type: ")
	_, params, err := mime.ParseMediaType(ct)
	if err != nil {
		t.Fatalf("%v in %q", err, head)
	}
	r := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	var types []string
	for {
		p, err := r.NextPart()
		if err != nil {
			break
		}
		types = append(types, strings.SplitN(p.Header.Get("Content-Type"), ";", 2)[0]+"|"+p.Header.Get("Merge-Type"))
	}
	if len(types) != 2 || types[0] != "text/cloud-config|" || !strings.HasPrefix(types[1], "text/x-shellscript|list(append)") {
		t.Errorf("parts %q", types)
	}
	s.UserData = []byte("just text\n")
	if _, err := s.UserDataFile(); err == nil || !strings.Contains(err.Error(), "#cloud-config") {
		t.Errorf("user data without a marker: %v", err)
	}
}

// TestWriteISO makes a real seed with genisoimage and checks the volume
// label cloud-init looks for and the three files (isoinfo reads them back).
func TestWriteISO(t *testing.T) {
	testenv.RequireProgram(t, "genisoimage")
	iso := filepath.Join(t.TempDir(), "seed.iso")
	if err := WriteISO(context.Background(), iso, sampleSeed()); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(iso)
	if err != nil {
		t.Fatal(err)
	}
	// The primary volume descriptor is sector 16; its volume id at 40.
	if len(data) < 16*2048+72 || string(bytes.TrimRight(data[16*2048+40:16*2048+72], " ")) != SeedLabel {
		t.Fatalf("volume id %q", data[16*2048+40:16*2048+72])
	}
	if _, err := exec.LookPath("isoinfo"); err == nil {
		out, err := exec.Command("isoinfo", "-R", "-f", "-i", iso).CombinedOutput()
		if err != nil {
			t.Fatalf("isoinfo: %v: %s", err, out)
		}
		if got := strings.Fields(string(out)); strings.Join(got, " ") != "/meta-data /network-config /user-data" {
			t.Errorf("files %q", got)
		}
	}
	if st, _ := os.Stat(iso); st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", st.Mode())
	}
}
