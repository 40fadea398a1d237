package tap

import (
	"encoding/json"
	"testing"
)

func TestParseOffloads(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in   string
		want Offload
		str  string
	}{
		{"", 0, "none"},
		{"none", 0, "none"},
		{"csum", OffloadCsum, "csum"},
		{"csum,tso4,tso6,tso_ecn,ufo,uso", OffloadAll, "csum,tso4,tso6,tso_ecn,ufo,uso"},
		{" TSO6 , csum ", OffloadCsum | OffloadTSO6, "csum,tso6"},
		{"all", OffloadAll, "csum,tso4,tso6,tso_ecn,ufo,uso"},
	}
	for _, c := range cases {
		got, err := ParseOffloads(c.in)
		if err != nil || got != c.want || got.String() != c.str {
			t.Errorf("ParseOffloads(%q) = %s (%#x), %v; want %s", c.in, got, uint(got), err, c.str)
		}
	}
	if _, err := ParseOffloads("csum,tso"); err == nil {
		t.Error("ParseOffloads accepted tso")
	}
	if s := (OffloadCsum | 0x8000).String(); s != "csum,0x8000" {
		t.Errorf("unknown bit shown as %q", s)
	}
	if s := Offload(0x20).String(); s != "0x20" {
		t.Errorf("uso4 alone shown as %q, want the raw bit", s)
	}
}

func TestOffloadJSON(t *testing.T) {
	t.Parallel()
	b, err := json.Marshal(struct {
		O Offload `json:"offloads"`
	}{OffloadCsum | OffloadUSO})
	if err != nil || string(b) != `{"offloads":["csum","uso"]}` {
		t.Fatalf("marshal: %s, %v", b, err)
	}
	var v struct {
		O Offload `json:"offloads"`
	}
	if err := json.Unmarshal(b, &v); err != nil || v.O != OffloadCsum|OffloadUSO {
		t.Fatalf("unmarshal: %s, %v", v.O, err)
	}
	if err := json.Unmarshal([]byte(`{"offloads":"csum,tso4"}`), &v); err != nil || v.O != OffloadCsum|OffloadTSO4 {
		t.Fatalf("unmarshal string: %s, %v", v.O, err)
	}
	if b, _ := json.Marshal(Offload(0)); string(b) != "[]" {
		t.Fatalf("empty set marshals to %s", b)
	}
}

// FuzzParseOffloads: whatever parses prints back to the same set, and the
// kernel's rules (check) never panic.
func FuzzParseOffloads(f *testing.F) {
	for _, s := range []string{"", "csum,tso4", "all", "uso,ufo", "none,csum", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := ParseOffloads(s)
		if err != nil {
			return
		}
		if o&^OffloadAll != 0 {
			t.Fatalf("%q parsed to unknown bits %#x", s, uint(o))
		}
		back, err := ParseOffloads(o.String())
		if err != nil || back != o {
			t.Fatalf("%q -> %s -> %s, %v", s, o, back, err)
		}
		_ = o.check()
	})
}
