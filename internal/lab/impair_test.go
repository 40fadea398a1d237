package lab

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/link"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/vmconfig"
)

// TestSetLinkImpairments: the supervisor's link-set changes the keys
// given on top of what runs, per direction or both; bad values, unknown
// links and directions started without impairments change nothing.
func TestSetLinkImpairments(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NetNS(t)
	var ln *link.Link
	testenv.Do(t, ns, func() error {
		var eps [2]*link.Endpoint
		for i, s := range []string{"tap:ia", "tap:ib"} {
			ep, err := vmconfig.ParseEndpoint(s)
			if err != nil {
				return err
			}
			if eps[i], err = link.Open(context.Background(), ep, link.OpenOptions{}); err != nil {
				return err
			}
		}
		var err error
		ln, err = link.New(eps[0], eps[1], link.Options{AtoB: &vmconfig.Impairment{Delay: 20 * time.Millisecond}})
		return err
	})
	t.Cleanup(func() { netns.Do(ns, ln.Close) })
	l := &Lab{cfg: &vmconfig.Lab{Name: "imp"}, links: []*runningLink{{l: ln}}}
	call := func(req Request) (Response, error) {
		var resp Response
		err := l.handle(context.Background(), req, &resp)
		return resp, err
	}
	resp, err := call(Request{Op: "link-set", Link: 0, Impair: map[string]map[string]string{"a_to_b": {"loss": "1%"}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Links[0].AtoB.Impairment; got != "delay 20ms loss 1%" {
		t.Errorf("after --a-to-b-loss 1%%: %q", got)
	}
	for _, bad := range []struct {
		req  Request
		want string
	}{
		{Request{Op: "link-set", Link: 0, Impair: map[string]map[string]string{"": {"loss": "1%"}}}, "started without impairments"},
		{Request{Op: "link-set", Link: 0, Impair: map[string]map[string]string{"a_to_b": {"loss": "2"}}}, `"2" is not a percentage`},
		{Request{Op: "link-set", Link: 0, Impair: map[string]map[string]string{"a_to_b": {"burst": "1kb"}}}, "burst needs a rate"},
		{Request{Op: "link-set", Link: 3, Impair: map[string]map[string]string{"a_to_b": {"loss": "2%"}}}, "no link 3"},
		{Request{Op: "link-set", Link: 0, Impair: map[string]map[string]string{"up": {"loss": "2%"}}}, `unknown direction "up"`},
	} {
		if _, err := call(bad.req); err == nil || !strings.Contains(err.Error(), bad.want) || !strings.Contains(err.Error(), "lab imp") {
			t.Errorf("%+v: %v, want an error with %q", bad.req.Impair, err, bad.want)
		}
	}
	if got := ln.Impairments(); got[0] == nil || got[0].String() != "delay 20ms loss 1%" || got[1] != nil {
		t.Errorf("refused changes changed the link: %v / %v", got[0], got[1])
	}
}
