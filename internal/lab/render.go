package lab

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// StatusFormats are the output formats of `vmnet status -o`.
var StatusFormats = []string{"table", "json", "dot", "mermaid"}

// WriteStatus prints the reports of `vmnet status` in one of
// StatusFormats. Every format describes all labs in one document: json is
// always a list of Report (one element for one lab, [] for none), dot one
// Graphviz graph and mermaid one flowchart with a cluster per lab.
func WriteStatus(w io.Writer, format string, reports []Report) error {
	switch format {
	case "table", "":
		if len(reports) == 0 {
			_, err := fmt.Fprintln(w, "no labs are up")
			return err
		}
		for _, r := range reports {
			r.WriteTable(w)
		}
		return nil
	case "json":
		if reports == nil {
			reports = []Report{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(reports)
	case "dot":
		return WriteDOT(w, reports)
	case "mermaid":
		return WriteMermaid(w, reports)
	}
	return fmt.Errorf("unknown output format %q: use one of %s", format, strings.Join(StatusFormats, ", "))
}

// topology is what the graph formats draw of one lab: networks, VMs and
// the edges between them, with node ids unique across labs.
type topology struct {
	lab    string
	nodes  []node
	edges  []edge
	nodeID map[string]string // "vm:NAME", "net:NAME" or an endpoint -> id
}

type node struct {
	id    string
	kind  string // "net", "vm", "endpoint", "xvlan" (a VXLAN device) or "peer" (another host)
	lines []string
}

type edge struct {
	a, b   string // node ids
	label  string
	dashed bool // a [[link]] rather than a NIC on a bridge
	dotted bool // VXLAN over the underlay to a peer host
}

func topologyOf(r Report, prefix string) topology {
	t := topology{lab: r.Lab, nodeID: map[string]string{}}
	add := func(key, kind string, lines ...string) string {
		if id, ok := t.nodeID[key]; ok {
			return id
		}
		id := fmt.Sprintf("%s_%s%d", prefix, kind[:1], len(t.nodes))
		t.nodeID[key] = id
		t.nodes = append(t.nodes, node{id: id, kind: kind, lines: lines})
		return id
	}
	for _, n := range r.Networks {
		lines := []string{n.Name, n.Bridge}
		for _, a := range n.Addresses {
			lines = append(lines, a.String())
		}
		add("net:"+n.Name, "net", lines...)
	}
	for _, v := range r.VMs {
		add("vm:"+v.Name, "vm", v.Name, v.State)
	}
	for _, v := range r.VMs {
		for _, n := range v.NICs {
			if n.Network == "" {
				continue
			}
			t.edges = append(t.edges, edge{a: t.nodeID["vm:"+v.Name], b: add("net:"+n.Network, "net", n.Network), label: n.Tap})
		}
	}
	for _, l := range r.Links {
		a := add(endpointNode(l.A), "endpoint", l.A)
		b := add(endpointNode(l.B), "endpoint", l.B)
		t.edges = append(t.edges, edge{a: a, b: b, dashed: true})
	}
	// A host's part of a multi-host lab: each VXLAN device hangs off its
	// network's bridge and reaches its peer hosts over the underlay; a
	// peer that several networks reach is one node.
	for _, v := range r.VXLANs {
		x := add("vxlan:"+v.Name, "xvlan", v.Name, fmt.Sprintf("VNI %d, port %d", v.VNI, v.Port))
		if v.Network != "" {
			t.edges = append(t.edges, edge{a: x, b: add("net:"+v.Network, "net", v.Network), label: "vxlan"})
		}
		for _, p := range v.Peers {
			t.edges = append(t.edges, edge{a: x, b: add("peer:"+p, "peer", "peer host", p), dotted: true})
		}
	}
	return t
}

// title is a lab's cluster title: its name, and the host for a part of
// a multi-host lab.
func title(r Report) string {
	if r.Host != "" {
		return "lab " + r.Lab + " (host " + r.Host + ")"
	}
	return "lab " + r.Lab
}

// WriteDOT renders the labs as one Graphviz graph: a cluster per lab,
// networks as boxes, VMs as ellipses, NICs as edges labelled with their
// taps, links as dashed edges between their endpoints, VXLAN devices as
// arrows on their networks with dotted edges to their peer hosts. No labs give a
// valid graph with a note in it.
func WriteDOT(w io.Writer, reports []Report) error {
	var b strings.Builder
	b.WriteString("graph \"vmnet\" {\n  node [fontname=\"Helvetica\"];\n")
	if len(reports) == 0 {
		b.WriteString("  label=\"no labs are up\";\n")
	}
	for i, r := range reports {
		t := topologyOf(r, fmt.Sprintf("l%d", i))
		fmt.Fprintf(&b, "  subgraph \"cluster_l%d\" {\n    label=%s;\n", i, dotQuote(title(r)))
		for _, n := range t.nodes {
			shape := map[string]string{"net": "box", "vm": "ellipse", "endpoint": "hexagon", "xvlan": "cds", "peer": "box3d"}[n.kind]
			fmt.Fprintf(&b, "    %s [shape=%s, label=%s];\n", n.id, shape, dotQuote(strings.Join(n.lines, "\n")))
		}
		for _, e := range t.edges {
			attr := "label=" + dotQuote(e.label)
			switch {
			case e.dashed:
				attr = "style=dashed"
			case e.dotted:
				attr = "style=dotted"
			}
			fmt.Fprintf(&b, "    %s -- %s [%s];\n", e.a, e.b, attr)
		}
		b.WriteString("  }\n")
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// dotQuote makes s a DOT quoted string: backslashes and quotes escaped,
// line breaks as DOT's centred \n.
func dotQuote(s string) string {
	s = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\r", "", "\n", `\n`).Replace(s)
	return `"` + s + `"`
}

// WriteMermaid renders the labs as one Mermaid flowchart, which GitHub
// draws in Markdown (```mermaid) without Graphviz: a subgraph per lab,
// networks as rectangles, VMs as stadiums, other link endpoints as
// hexagons, NICs as edges labelled with their taps, links dotted, VXLAN
// devices as parallelograms with dotted edges to their peer hosts.
func WriteMermaid(w io.Writer, reports []Report) error {
	var b strings.Builder
	b.WriteString("flowchart LR\n")
	if len(reports) == 0 {
		b.WriteString("  none[\"no labs are up\"]\n")
	}
	for i, r := range reports {
		t := topologyOf(r, fmt.Sprintf("l%d", i))
		fmt.Fprintf(&b, "  subgraph l%d[%s]\n", i, mermaidText(title(r)))
		for _, n := range t.nodes {
			shape := mermaidShapes[n.kind]
			fmt.Fprintf(&b, "    %s%s%s%s\n", n.id, shape[0], mermaidText(strings.Join(n.lines, "\n")), shape[1])
		}
		for _, e := range t.edges {
			if e.dashed || e.dotted {
				fmt.Fprintf(&b, "    %s -.- %s\n", e.a, e.b)
				continue
			}
			fmt.Fprintf(&b, "    %s ---|%s| %s\n", e.a, mermaidText(e.label), e.b)
		}
		b.WriteString("  end\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// mermaidShapes open and close a node of each kind.
var mermaidShapes = map[string][2]string{"net": {"[", "]"}, "vm": {"([", "])"}, "endpoint": {"{{", "}}"},
	"xvlan": {"[/", "/]"}, "peer": {"[[", "]]"}}

// mermaidText quotes s for a Mermaid label: inside "..." only a quote
// ends the text, and Mermaid's entity codes (#quot; and the like) stand
// for characters that would otherwise be read as markup. Line breaks
// become <br/>, which GitHub's renderer shows as such.
func mermaidText(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString("#quot;")
		case '#':
			b.WriteString("#35;")
		case '<':
			b.WriteString("#lt;")
		case '>':
			b.WriteString("#gt;")
		case '&':
			b.WriteString("#amp;")
		case '`':
			b.WriteString("#96;")
		case '\n':
			b.WriteString("<br/>")
		case '\r':
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
