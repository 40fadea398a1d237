package link

import (
	"bytes"
	"encoding/json"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

// sampleKeys are the JSON field names of a Sample (nested with dots):
// scripts read them, so a rename must be deliberate and show up here.
var sampleKeys = []string{
	"a", "a_to_b", "b", "b_to_a", "cpu", "cpu.system_seconds", "cpu.user_seconds", "datapath", "elapsed_seconds", "final", "time",
}

var dirKeys = []string{"bytes", "coalesced", "drops", "drops.auth", "drops.invalid", "drops.mtu", "drops.replay", "drops.segments",
	"drops.truncated", "drops.vnet_hdr_size", "drops.write", "frames", "merged", "queues", "segmented", "segments", "super_frames", "tx_bytes", "tx_frames"}

func keys(prefix string, m map[string]any, out *[]string) {
	for k, v := range m {
		*out = append(*out, prefix+k)
		if sub, ok := v.(map[string]any); ok {
			keys(prefix+k+".", sub, out)
		}
	}
}

// TestSampleJSON forwards frames over a real link, takes samples and
// checks their JSON lines: one object per line, the stable field names,
// the same counters Stats reports, CPU time only in the final sample.
func TestSampleJSON(t *testing.T) {
	w := newWorld(t, false)
	l, err := New(w.open("packet:vA"), w.open("packet:vB"), Options{Datapath: DatapathUserspace})
	w.must(err)
	start := time.Now()
	w.run(l)
	sa, sb := openRaw(t, w.A, "eth0", false), openRaw(t, w.B, "eth0", false)
	frame := make([]byte, 100)
	copy(frame, []byte{0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa, 0x88, 0xb5})
	sb.recv(10 * time.Millisecond)
	for range 3 {
		sa.send(t, frame)
	}
	// The samples must count the three frames: wait until the link has
	// (a fixed 300 ms of quiet at B was not always enough under load, and
	// a pump adds its counts only after it wrote the frames out).
	for deadline := time.Now().Add(arrive); l.Stats().AtoB.Frames < 3 && time.Now().Before(deadline); {
		sb.recv(10 * time.Millisecond)
	}

	var out bytes.Buffer
	mid := l.Sample(start, false)
	final := l.Sample(start, true)
	for _, s := range []Sample{mid, final} {
		if err := WriteSample(&out, "json", s); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("want one line per sample:\n%s", out.String())
	}
	for i, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %d: %v: %s", i, err, line)
		}
		var got []string
		keys("", m, &got)
		want := append([]string{}, sampleKeys...)
		for _, d := range []string{"a_to_b.", "b_to_a."} {
			for _, k := range dirKeys {
				want = append(want, d+k)
			}
		}
		if i == 0 {
			want = slicesWithout(want, "cpu")
		}
		sort.Strings(got)
		sort.Strings(want)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("line %d keys:\n%v\nwant\n%v", i, got, want)
		}
		var back Sample
		if err := json.Unmarshal([]byte(line), &back); err != nil || back.AtoB.Frames < 3 || back.Final != (i == 1) || back.A != "packet:vA" {
			t.Errorf("line %d reads back as %+v (%v)", i, back, err)
		}
	}
	if final.CPU == nil || mid.CPU != nil || final.ElapsedSeconds < mid.ElapsedSeconds {
		t.Errorf("samples: %+v %+v", mid, final)
	}
	out.Reset()
	WriteSample(&out, "text", final)
	if text := out.String(); !strings.HasPrefix(text, final.Stats.String()+"\ncpu: user ") {
		t.Errorf("text sample:\n%s", text)
	}
	if err := WriteSample(&out, "yaml", final); err == nil {
		t.Error("unknown format accepted")
	}
}

func slicesWithout(s []string, prefix string) []string {
	var out []string
	for _, k := range s {
		if k != prefix && !strings.HasPrefix(k, prefix+".") {
			out = append(out, k)
		}
	}
	return out
}
