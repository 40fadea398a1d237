package lab

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/internal/link"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/tap"
	"github.com/vmnet/vmnet/vmconfig"
)

// sampleReports are two labs with everything the graphs draw: networks
// with addresses, VMs on them, a NIC that is the end of a link, a tap and
// a UDP endpoint, and a state with characters the formats must escape.
func sampleReports() []Report {
	nic := func(id, tp, net string) NICReport {
		return NICReport{NICState: NICState{ID: id, Tap: tp, Network: net, Queues: 1}, Present: true, NumQueues: 1, Offloads: []string{}}
	}
	return []Report{
		{Lab: "demo", Phase: "up", Networks: []NetworkReport{
			{Name: "lan", Bridge: "demo-lan", State: "up", MTU: 1500, Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/24"), netip.MustParsePrefix("fd00::1/64")}},
			{Name: "dmz", Bridge: "demo-dmz"},
		}, VMs: []VMReport{
			{Name: "a", State: "running", PID: 10, NICs: []NICReport{nic("net0", "t-a-0", "lan"), nic("net1", "t-a-1", "dmz")}},
			{Name: "b", State: `odd "state" #1 <x> & {y}` + "\nsecond line", NICs: []NICReport{nic("net0", "t-b-0", "lan"), nic("net1", "t-b-1", "")}},
		}, Links: []LinkReport{
			{A: "vm:b:1", B: "tap:peer"},
			{A: "tap:x", B: "udp:127.0.0.1:1,remote=127.0.0.1:2", Stats: &link.Stats{}},
		}},
		// A second lab with the same VM and network names: its nodes must
		// not merge with the first lab's.
		{Lab: "end", Phase: "up", Networks: []NetworkReport{{Name: "lan", Bridge: "end-lan"}},
			VMs: []VMReport{{Name: "a", State: "running", NICs: []NICReport{nic("net0", "t-a-0", "lan")}}}},
	}
}

// TestStatusDOT has Graphviz itself parse the graph for no lab, one lab
// and two labs, and checks that two labs make one graph with two
// clusters whose nodes stay apart.
func TestStatusDOT(t *testing.T) {
	dot := testenv.RequireProgram(t, "dot")
	all := sampleReports()
	for _, tc := range []struct {
		name     string
		reports  []Report
		clusters int
		edges    int
	}{{"no labs", nil, 0, 0}, {"one lab", all[:1], 1, 5}, {"two labs", all, 2, 6}} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteStatus(&b, "dot", tc.reports); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			// -Tcanon prints the graph as Graphviz read it; any syntax
			// error or warning goes to stderr.
			cmd := exec.Command(dot, "-Tcanon")
			cmd.Stdin = strings.NewReader(out)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			canon, err := cmd.Output()
			if err != nil || stderr.Len() > 0 {
				t.Fatalf("dot rejects the graph: %v %s\n%s", err, stderr.String(), out)
			}
			if n := strings.Count(out, "graph \"vmnet\" {"); n != 1 || strings.Count(string(canon), "graph vmnet {") != 1 {
				t.Errorf("want exactly one graph, got %d:\n%s", n, out)
			}
			if n := strings.Count(string(canon), "subgraph cluster_"); n != tc.clusters {
				t.Errorf("%d clusters, want %d:\n%s", n, tc.clusters, canon)
			}
			if n := strings.Count(string(canon), " -- "); n != tc.edges {
				t.Errorf("%d edges, want %d:\n%s", n, tc.edges, canon)
			}
			if tc.reports == nil && !strings.Contains(out, "no labs are up") {
				t.Errorf("the empty graph says nothing:\n%s", out)
			}
			if tc.clusters == 2 && (!strings.Contains(out, `label="lab demo"`) || !strings.Contains(out, `label="lab end"`) ||
				!strings.Contains(out, "l0_v2 -- l0_n0") || !strings.Contains(out, "l1_v1 -- l1_n0")) {
				t.Errorf("the labs' VMs a are not each on their own lab's lan:\n%s", out)
			}
		})
	}
}

// mermaidLine is the grammar of every line WriteMermaid may print: a
// subgraph with a quoted title, its end, a node with a quoted label in
// one of five shapes, a labelled solid edge or a dotted edge.
var (
	mmQuoted   = `"[^"]*"`
	mmSubgraph = regexp.MustCompile(`^  subgraph ([A-Za-z][A-Za-z0-9_]*)\[` + mmQuoted + `\]$`)
	mmNode     = regexp.MustCompile(`^ +([A-Za-z][A-Za-z0-9_]*)(\[` + mmQuoted + `\]|\(\[` + mmQuoted + `\]\)|\{\{` + mmQuoted + `\}\}|\[/` + mmQuoted + `/\]|\[\[` + mmQuoted + `\]\])$`)
	mmEdge     = regexp.MustCompile(`^    ([A-Za-z][A-Za-z0-9_]*) (---\|` + mmQuoted + `\||-\.-) ([A-Za-z][A-Za-z0-9_]*)$`)
)

// checkMermaid parses a flowchart with mermaidLine and checks what the
// Mermaid parser needs beyond the lines: one header, balanced subgraphs,
// unique ids that are not keywords, edges only between defined nodes,
// no raw markup in labels. It returns the subgraph, node and edge counts.
func checkMermaid(t *testing.T, out string) (subgraphs, nodes, edges int) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if lines[0] != "flowchart LR" {
		t.Fatalf("first line %q, want flowchart LR", lines[0])
	}
	ids := map[string]bool{}
	define := func(id string) {
		if ids[id] || id == "end" || id == "subgraph" || id == "graph" || id == "flowchart" {
			t.Errorf("id %q used twice or a keyword:\n%s", id, out)
		}
		ids[id] = true
	}
	depth := 0
	for _, l := range lines[1:] {
		if strings.Contains(l, "\n") || strings.Contains(l, "<") && !strings.Contains(l, "<br/>") {
			t.Errorf("raw markup in %q", l)
		}
		switch m := []([]string){mmSubgraph.FindStringSubmatch(l), mmNode.FindStringSubmatch(l), mmEdge.FindStringSubmatch(l)}; {
		case m[0] != nil:
			depth++
			subgraphs++
			define(m[0][1])
		case l == "  end":
			depth--
			if depth < 0 {
				t.Fatalf("end without subgraph:\n%s", out)
			}
		case m[1] != nil:
			nodes++
			define(m[1][1])
		case m[2] != nil:
			edges++
			if !ids[m[2][1]] || !ids[m[2][3]] {
				t.Errorf("edge %q between undefined nodes", l)
			}
		default:
			t.Errorf("line %q is not Mermaid flowchart syntax this writer may print", l)
		}
		if strings.Count(strings.ReplaceAll(l, "#quot;", ""), `"`)%2 != 0 {
			t.Errorf("unbalanced quotes in %q", l)
		}
	}
	if depth != 0 {
		t.Errorf("%d subgraphs not ended:\n%s", depth, out)
	}
	return subgraphs, nodes, edges
}

func TestStatusMermaid(t *testing.T) {
	all := sampleReports()
	for _, tc := range []struct {
		name                    string
		reports                 []Report
		subgraphs, nodes, edges int
	}{{"no labs", nil, 0, 1, 0}, {"one lab", all[:1], 1, 7, 5}, {"two labs", all, 2, 9, 6}} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteStatus(&b, "mermaid", tc.reports); err != nil {
				t.Fatal(err)
			}
			s, n, e := checkMermaid(t, b.String())
			if s != tc.subgraphs || n != tc.nodes || e != tc.edges {
				t.Errorf("%d subgraphs, %d nodes, %d edges; want %d, %d, %d:\n%s", s, n, e, tc.subgraphs, tc.nodes, tc.edges, b.String())
			}
			if tc.subgraphs > 0 && !strings.Contains(b.String(), `"b<br/>odd #quot;state#quot; #35;1 #lt;x#gt; #amp; {y}<br/>second line"`) {
				t.Errorf("b's state is not escaped as Mermaid text:\n%s", b.String())
			}
		})
	}
}

// TestStatusJSONShape: status -o json is a list for no lab, one lab and
// several, and leaves out what the table shows as "-".
func TestStatusJSONShape(t *testing.T) {
	all := sampleReports()
	for _, reports := range [][]Report{nil, all[:1], all} {
		var b bytes.Buffer
		if err := WriteStatus(&b, "json", reports); err != nil {
			t.Fatal(err)
		}
		var got []map[string]any
		if err := json.Unmarshal(b.Bytes(), &got); err != nil || len(got) != len(reports) {
			t.Fatalf("not a list of %d labs: %v\n%s", len(reports), err, b.String())
		}
	}
	var b bytes.Buffer
	WriteStatus(&b, "json", all[:1])
	var got []struct {
		Networks []map[string]any `json:"networks"`
		VMs      []map[string]any `json:"vms"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	dmz, vmB := got[0].Networks[1], got[0].VMs[1]
	for k, m := range map[string]map[string]any{"mtu": dmz, "state": dmz, "pid": vmB, "uptime": vmB} {
		if v, ok := m[k]; ok {
			t.Errorf("%s = %v where the table shows -", k, v)
		}
	}
	var table bytes.Buffer
	WriteStatus(&table, "table", all[:1])
	if !strings.Contains(table.String(), "mtu -") || !strings.Contains(table.String(), "pid -") {
		t.Errorf("table:\n%s", table.String())
	}
	if err := WriteStatus(&b, "yaml", nil); err == nil {
		t.Error("unknown format accepted")
	}
}

// TestSingleQueueNICReport: a single-queue tap is reported with its one
// queue, as the table says "1 queue", not with the kernel's -1.
func TestSingleQueueNICReport(t *testing.T) {
	ns := testenv.NetNS(t)
	testenv.Do(t, ns, func() error {
		for _, queues := range []int{1, 2} {
			name := "sq" + string(rune('0'+queues))
			tp, err := tap.Create(tap.NewConfig(name, queues))
			if err != nil {
				return err
			}
			defer tp.Close()
			r := describeNIC(NICState{ID: "net0", Tap: name, Queues: queues})
			if r.Error != "" || r.NumQueues != queues || r.NumDisabledQueues != 0 || r.MultiQueue != (queues > 1) {
				t.Errorf("%d queue(s): %+v", queues, r)
			}
			var b bytes.Buffer
			Report{Lab: "l", VMs: []VMReport{{Name: "v", NICs: []NICReport{r}}}}.WriteTable(&b)
			want := map[int]string{1: " 1 queue ", 2: " 2/2 queues enabled "}[queues]
			if !strings.Contains(b.String(), want) {
				t.Errorf("table lacks %q:\n%s", want, b.String())
			}
			js, _ := json.Marshal(r)
			if strings.Contains(string(js), "-1") {
				t.Errorf("JSON has -1: %s", js)
			}
		}
		return nil
	})
}

// TestStatusShowsImpairments: the impairments the lab file sets on a
// [[link]] appear in status, per direction, in the table and the JSON.
func TestStatusShowsImpairments(t *testing.T) {
	cfg, err := vmconfig.Parse("/cfg/lab.toml", []byte(`[lab]
name = "imp"
[[link]]
a = "tap:x"
b = "tap:y"
delay = "20ms"
[link.a_to_b]
loss = "5%"
`), vmconfig.Options{FileExists: func(string) bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	r := Describe(&State{}, cfg, nil)
	var table, js bytes.Buffer
	r.WriteTable(&table)
	a, b := cfg.Links[0].A.String(), cfg.Links[0].B.String()
	for _, want := range []string{"impaired " + a + " -> " + b + ": delay 20ms loss 5%\n", "impaired " + b + " -> " + a + ": delay 20ms\n"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("status does not show %q:\n%s", want, table.String())
		}
	}
	if err := WriteStatus(&js, "json", []Report{r}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(js.String(), `"a_to_b_impairment": "delay 20ms loss 5%"`) {
		t.Errorf("json: %s", js.String())
	}
}

// hostPart is h1's part of a multi-host lab: network lan spans h1, h2
// and h3, network dmz h1 and h2, so peer 10.200.0.2 is reached by two
// VXLAN devices.
func hostPart() []Report {
	return []Report{{Lab: "mh", Host: "h1", Phase: "up",
		Networks: []NetworkReport{{Name: "lan", Bridge: "mh-lan"}, {Name: "dmz", Bridge: "mh-dmz"}},
		VMs:      []VMReport{{Name: "a", State: "running", NICs: []NICReport{{NICState: NICState{ID: "net0", Tap: "mh-a-0", Network: "lan"}}}}},
		VXLANs: []VXLANReport{
			{Name: "vx5", Network: "lan", VNI: 5, Port: 4789, Peers: []string{"10.200.0.2", "10.200.0.3"}},
			{Name: "vx6", Network: "dmz", VNI: 6, Port: 4789, Peers: []string{"10.200.0.2"}},
		}}}
}

// TestStatusGraphVXLAN: in status -o dot and -o mermaid, a host's part
// shows its VXLAN devices on their networks' bridges and the peer hosts
// they reach (one node per peer), and says which host it is; Graphviz
// parses the graph, the Mermaid grammar check accepts the flowchart.
func TestStatusGraphVXLAN(t *testing.T) {
	dot := testenv.RequireProgram(t, "dot")
	var b bytes.Buffer
	if err := WriteStatus(&b, "dot", hostPart()); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(dot, "-Tcanon")
	cmd.Stdin = strings.NewReader(b.String())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	canon, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("dot rejects the graph: %v %s\n%s", err, stderr.String(), b.String())
	}
	c := string(canon)
	for what, n := range map[string]int{" -- ": 6, "shape=cds": 2, "shape=box3d": 2, "style=dotted": 3, "VNI 5, port 4789": 1, "peer host\\n10.200.0.2": 1} {
		if got := strings.Count(c, what); got != n {
			t.Errorf("%d times %q, want %d:\n%s", got, what, n, c)
		}
	}
	if !strings.Contains(c, `"lab mh (host h1)"`) {
		t.Errorf("the cluster does not name the host:\n%s", c)
	}
	b.Reset()
	if err := WriteStatus(&b, "mermaid", hostPart()); err != nil {
		t.Fatal(err)
	}
	if s, n, e := checkMermaid(t, b.String()); s != 1 || n != 7 || e != 6 {
		t.Errorf("%d subgraphs, %d nodes, %d edges; want 1, 7, 6:\n%s", s, n, e, b.String())
	}
	for _, want := range []string{`[/"vx5<br/>VNI 5, port 4789"/]`, `[["peer host<br/>10.200.0.2"]]`, `---|"vxlan"|`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("mermaid lacks %s:\n%s", want, b.String())
		}
	}
}
