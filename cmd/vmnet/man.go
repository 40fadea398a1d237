//go:build mangen

package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// With -tags mangen, vmnet has a hidden verb that writes its man pages
// (`make man`); the released binary does without cobra/doc's markdown
// dependencies.
func init() {
	extraCommands = append(extraCommands, func(e *env) *cobra.Command {
		return &cobra.Command{
			Use:         "gen-man DIR",
			Short:       "write vmnet's man pages (section 1) into DIR",
			Example:     `  go run -tags mangen ./cmd/vmnet gen-man man`,
			Hidden:      true,
			Args:        nargs(1, 1),
			Annotations: map[string]string{hostOnly: "true"},
			RunE: func(c *cobra.Command, args []string) error {
				root := c.Root()
				root.DisableAutoGenTag = true // reproducible pages: no date
				hdr := &doc.GenManHeader{Title: "VMNET", Section: "1", Source: "vmnet " + readBuildInfo().Version, Manual: "vmnet manual"}
				if err := os.MkdirAll(args[0], 0o755); err != nil {
					return err
				}
				if err := doc.GenManTree(root, hdr, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "man pages in %s\n", args[0])
				return nil
			},
		}
	})
}
