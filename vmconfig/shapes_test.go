package vmconfig

import (
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// TestListKeysTakeOneValue holds the one rule for list keys: every key
// that example.toml shows with a list also takes its first element alone,
// and means the same as the one-element list. A new list key that refuses
// a single value fails here.
func TestListKeysTakeOneValue(t *testing.T) {
	data, err := os.ReadFile("testdata/example.toml")
	if err != nil {
		t.Fatal(err)
	}
	list := regexp.MustCompile(`^(\s*)(\w+) = \[([^,\]]+)[^\]]*\]`)
	lines := strings.Split(string(data), "\n")
	seen := map[string]bool{}
	for i, line := range lines {
		m := list.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		seen[m[2]] = true
		one := append([]string{}, lines...)
		one[i] = m[1] + m[2] + " = [" + m[3] + "]"
		single := append([]string{}, lines...)
		single[i] = m[1] + m[2] + " = " + m[3]
		a, errA := Parse("testdata/example.toml", []byte(strings.Join(one, "\n")), Options{})
		b, errB := Parse("testdata/example.toml", []byte(strings.Join(single, "\n")), Options{})
		if errA != nil || errB != nil {
			t.Errorf("line %d: %s: one-element list: %v; single value: %v", i+1, m[2], errA, errB)
			continue
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("line %d: %s = %s and %s = [%s] differ:\n%+v\n%+v", i+1, m[2], m[3], m[2], m[3], a, b)
		}
	}
	for _, k := range []string{"addresses", "address", "gateway", "extra_args", "offloads", "tagged"} {
		if !seen[k] {
			t.Errorf("example.toml shows no list for %s", k)
		}
	}
}

func TestProblemsJSON(t *testing.T) {
	_, ps := parse(t, head+"mtu = 9\n[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\nmtu = 9000\n")
	if len(ps) != 2 {
		t.Fatalf("want one error and one warning: %v", ps)
	}
	b, err := json.Marshal(ps)
	if err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := []map[string]any{
		{"file": "/cfg/lab.toml", "line": 5.0, "column": 1.0, "severity": "error", "message": ps[0].Msg},
		{"file": "/cfg/lab.toml", "line": 11.0, "column": 1.0, "severity": "warning", "message": ps[1].Msg},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("JSON\n%s\nwant %v", b, want)
	}
	var back Problems
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, ps) {
		t.Errorf("round trip: %v %v", err, back)
	}

	// A clean file is [], not null; Problems inside a struct too.
	clean, err := Parse("/cfg/lab.toml", []byte(head), Options{})
	ps, err = ProblemsOf(clean, err)
	if err != nil || ps != nil {
		t.Fatalf("clean file: %v %v", ps, err)
	}
	if b, _ := json.Marshal(ps); string(b) != "[]" {
		t.Errorf("clean file: %s, want []", b)
	}
	if b, _ := json.Marshal(struct{ P Problems }{}); string(b) != `{"P":[]}` {
		t.Errorf("nil Problems in a struct: %s", b)
	}

	// Errors come with the warnings found before them; a file that
	// cannot be read is an error, not a problem list.
	_, err = Parse("/cfg/lab.toml", []byte(head+"mtu = 9\ndefault_pvid = 3\n"), Options{})
	if ps, err := ProblemsOf(nil, err); err != nil || len(ps) != 2 || ps[1].Severity != Warning {
		t.Errorf("errors and warnings: %v %v", ps, err)
	}
	_, err = Load("testdata/does-not-exist.toml")
	if ps, perr := ProblemsOf(nil, err); perr == nil || ps != nil || !strings.Contains(perr.Error(), "does-not-exist.toml") {
		t.Errorf("unreadable file: %v %v", ps, perr)
	}
	if strings.Contains(err.Error(), "vmconfig") {
		t.Errorf("the message names the Go package: %v", err)
	}
}
