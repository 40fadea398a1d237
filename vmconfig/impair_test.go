package vmconfig

import (
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLinkImpairments: keys on [[link]] apply to both directions,
// a_to_b / b_to_a override them key by key, a link without keys has no
// stage, and every mistake is reported at its line:col.
func TestLinkImpairments(t *testing.T) {
	const ends = "[lab]\nname = \"t\"\n[[link]]\na = \"tap:x\"\nb = \"tap:y\"\n"
	lab, probs := parse(t, ends+`delay = "20ms"
jitter = "5ms"
loss = "5%"
duplicate = "1%"
reorder = "10%"
corrupt = "0.1%"
rate = "100mbit"
burst = "32kb"
[link.a_to_b]
loss = "20%"
loss_correlation = "25%"
[[link]]
a = "tap:p"
b = "tap:q"
[link.b_to_a]
delay = "1ms"
[[link]]
a = "tap:r"
b = "tap:s"
`)
	if lab == nil {
		t.Fatalf("problems: %v", probs)
	}
	both := Impairment{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond, Loss: 5, Duplicate: 1, Reorder: 10,
		Corrupt: 0.1, Rate: 100_000_000, Burst: 32 << 10}
	ab := both
	ab.Loss, ab.LossCorrelation = 20, 25
	l := lab.Links
	if l[0].AtoB == nil || l[0].BtoA == nil || *l[0].AtoB != ab || *l[0].BtoA != both {
		t.Errorf("link 0: %+v / %+v", l[0].AtoB, l[0].BtoA)
	}
	if l[1].AtoB != nil || l[1].BtoA == nil || *l[1].BtoA != (Impairment{Delay: time.Millisecond}) {
		t.Errorf("link 1: %+v / %+v", l[1].AtoB, l[1].BtoA)
	}
	if l[2].AtoB != nil || l[2].BtoA != nil {
		t.Errorf("link 2 has impairments: %+v / %+v", l[2].AtoB, l[2].BtoA)
	}
	if s := l[0].AtoB.String(); s != "delay 20ms jitter 5ms loss 20% correlation 25% duplicate 1% reorder 10% corrupt 0.1% rate 100mbit burst 32768b" {
		t.Errorf("String: %s", s)
	}

	_, probs = parse(t, ends+`loss = "5"
delay = "-1ms"
rate = "fast"
burst = "1kb"
[link.a_to_b]
jitter = 3
speed = "1%"
[link.b_to_a]
loss_correlation = "5%"
`)
	var got []string
	for _, p := range probs {
		got = append(got, p.String())
	}
	want := []string{
		`6:1: link 0: loss: "5" is not a percentage`,
		`7:1: link 0: delay: "-1ms" is out of range`,
		`8:1: link 0: rate: "fast" is not a rate`,
		`10:1: link 0: a_to_b: burst needs a rate`, // at the direction's table
		`11:1: link 0: a_to_b: jitter must be a string`,
		`12:1: link 0: a_to_b: unknown key "speed"`,
		`13:1: link 0: b_to_a: loss_correlation needs a loss`,
	}
	if len(got) != len(want) {
		t.Fatalf("problems:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i := range want {
		if !strings.Contains(got[i], want[i]) {
			t.Errorf("problem %d: %s\nwant %s", i, got[i], want[i])
		}
	}
}

func TestParseImpairmentValues(t *testing.T) {
	for _, tc := range []struct {
		key, in string
		want    Impairment
		bad     bool
	}{
		{"rate", "100mbit", Impairment{Rate: 100e6}, false},
		{"rate", "1Gbit", Impairment{Rate: 1e9}, false},
		{"rate", "12500kbps", Impairment{Rate: 100e6}, false},
		{"rate", "100", Impairment{}, true},
		{"rate", "0bit", Impairment{}, false}, // no rate limit, as delay 0 is no delay
		{"rate", "0", Impairment{}, false},
		{"rate", "4bit", Impairment{}, true},
		{"rate", "0.5bit", Impairment{}, true},
		{"burst", "0", Impairment{}, false}, // the default burst
		{"burst", "0.5b", Impairment{}, true},
		{"loss", "0.1%", Impairment{Loss: 0.1}, false},
		{"loss", "101%", Impairment{}, true},
		{"loss", "NaN%", Impairment{}, true},
		{"delay", "20ms", Impairment{Delay: 20 * time.Millisecond}, false},
		{"delay", "0", Impairment{}, false},
		{"delay", "2m", Impairment{}, true},
		{"burst", "1500b", Impairment{Burst: 1500}, false},
		{"burst", "1mb", Impairment{Burst: 1 << 20}, false},
		{"burst", "x", Impairment{}, true},
		{"speed", "1", Impairment{}, true},
	} {
		var im Impairment
		err := SetImpairment(&im, tc.key, tc.in)
		if (err != nil) != tc.bad || !reflect.DeepEqual(im, tc.want) {
			t.Errorf("%s %q: %+v, %v", tc.key, tc.in, im, err)
		}
	}
	if s := FormatRate(1_500_000); s != "1500kbit" {
		t.Errorf("FormatRate: %s", s)
	}
}

// FuzzImpairmentValue: any value for any key is accepted or refused
// without panic, and an accepted one prints back (as status shows it) to
// something that parses to the same impairment.
func FuzzImpairmentValue(f *testing.F) {
	for _, s := range []string{"20ms", "5%", "0.1%", "100mbit", "12500kbps", "32kb", "1500b", "1e3kbit", "0", "-1ms", "NaN%", "1e400%"} {
		f.Add(uint8(0), s)
	}
	f.Fuzz(func(t *testing.T, k uint8, v string) {
		key := ImpairmentKeys[int(k)%len(ImpairmentKeys)]
		var im Impairment
		if err := SetImpairment(&im, key, v); err != nil {
			return
		}
		var back Impairment
		var err error
		switch key {
		case "delay":
			back.Delay, err = ParseDelay(im.Delay.String())
		case "jitter":
			back.Jitter, err = ParseDelay(im.Jitter.String())
		case "loss":
			back.Loss, err = ParsePercent(FormatPercent(im.Loss))
		case "loss_correlation":
			back.LossCorrelation, err = ParsePercent(FormatPercent(im.LossCorrelation))
		case "duplicate":
			back.Duplicate, err = ParsePercent(FormatPercent(im.Duplicate))
		case "reorder":
			back.Reorder, err = ParsePercent(FormatPercent(im.Reorder))
		case "corrupt":
			back.Corrupt, err = ParsePercent(FormatPercent(im.Corrupt))
		case "rate":
			back.Rate, err = ParseRate(FormatRate(im.Rate))
		case "burst":
			back.Burst, err = ParseSize(strconv.FormatUint(im.Burst, 10) + "b")
		}
		if err != nil || back != im {
			t.Fatalf("%s = %q reads as %+v, prints back as %+v (%v)", key, v, im, back, err)
		}
	})
}

// TestNICImpairments: a [[network]]'s impairment keys are the default of
// its NICs, a [[vm.nic]]'s override them key by key, the same parsing
// and checks as on a [[link]]; a NIC without network (a link's end) and
// a NIC that also sets qdisc are refused at the key.
func TestNICImpairments(t *testing.T) {
	lab, probs := parse(t, `[lab]
name = "t"
[[network]]
name = "slow"
delay = "10ms"
rate = "100mbit"
[[network]]
name = "fast"
[[vm]]
name = "a"
  [[vm.nic]]
  network = "slow"
  [[vm.nic]]
  network = "slow"
  delay = "0ms"
  loss = "5%"
  [[vm.nic]]
  network = "fast"
  [[vm.nic]]
  network = "fast"
  jitter = "1ms"
  delay = "2ms"
`)
	if lab == nil {
		t.Fatalf("problems: %v", probs)
	}
	n := lab.VMs[0].NICs
	want := []*Impairment{
		{Delay: 10 * time.Millisecond, Rate: 100e6},
		{Loss: 5, Rate: 100e6},
		nil,
		{Delay: 2 * time.Millisecond, Jitter: time.Millisecond},
	}
	for i, w := range want {
		if !reflect.DeepEqual(n[i].Impairment, w) {
			t.Errorf("nic %d: %+v, want %+v", i, n[i].Impairment, w)
		}
	}
	if lab.Networks[0].Impairment == nil || lab.Networks[1].Impairment != nil {
		t.Errorf("networks: %+v / %+v", lab.Networks[0].Impairment, lab.Networks[1].Impairment)
	}

	_, probs = parse(t, `[lab]
name = "t"
[[network]]
name = "n"
loss = "5"
[[network]]
name = "m"
burst = "1kb"
[[vm]]
name = "a"
  [[vm.nic]]
  network = "n"
  delay = "1h"
  [[vm.nic]]
  delay = "1ms"
  [[vm.nic]]
  network = "n"
  qdisc = "default"
  loss = "1%"
  [[vm.nic]]
  network = "n"
  loss_correlation = "1%"
[[link]]
a = "vm:a:1"
b = "tap:x"
`)
	var got []string
	for _, p := range probs {
		got = append(got, p.String())
	}
	wantProbs := []string{
		`5:1: network "n": loss: "5" is not a percentage`,
		`8:1: network "m": burst needs a rate`,
		`13:3: vm "a": nic 0: delay: "1h" is out of range`,
		`15:3: vm "a": nic 1: impairments on a NIC act on its tap's qdisc and need a network`,
		`18:3: vm "a": nic 2: qdisc and impairments both choose the tap's root qdisc`,
		`22:3: vm "a": nic 3: loss_correlation needs a loss`,
	}
	if len(got) != len(wantProbs) {
		t.Fatalf("problems:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantProbs, "\n"))
	}
	for i := range wantProbs {
		if !strings.Contains(got[i], wantProbs[i]) {
			t.Errorf("problem %d: %s\nwant %s", i, got[i], wantProbs[i])
		}
	}
}
