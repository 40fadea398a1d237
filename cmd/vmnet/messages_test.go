package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// msgFuncs are the calls whose string arguments become messages users
// see: errors, usage errors and the lab file's problems.
var msgFuncs = map[string]bool{"Errorf": true, "New": true, "usagef": true, "bad": true, "errorf": true, "warnf": true, "Fprintf": true}

// TestNoGoIdentifiersInMessages reads every message format in the
// module's non-test code and refuses Go identifiers in them: a CamelCase
// name the module exports (VnetHdrSize, TransparentMask), a qualified
// call (netip.ParsePrefix(...)), or a method named as advice ("use Open
// to attach"). Messages say what to do in the user's words.
func TestNoGoIdentifiersInMessages(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var files []*ast.File
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			f, err := parser.ParseFile(fset, p, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, f)
		}
		return nil
	})
	// Exported identifiers with an inner capital: names no user would
	// write, so a message containing one leaks the code.
	camel := regexp.MustCompile(`^[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*$|^[A-Z]+[a-z]+[A-Z][A-Za-z0-9]*$`)
	idents := map[string]bool{}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.FuncDecl:
				add(idents, camel, n.Name)
			case *ast.TypeSpec:
				add(idents, camel, n.Name)
			case *ast.ValueSpec:
				for _, id := range n.Names {
					add(idents, camel, id)
				}
			case *ast.Field:
				for _, id := range n.Names {
					add(idents, camel, id)
				}
			}
			return true
		})
	}
	qualified := regexp.MustCompile(`\b[a-z][a-z0-9]*\.[A-Z][A-Za-z0-9]*\(`)
	advice := regexp.MustCompile(`\buse [A-Z][a-z]+[A-Za-z]* to\b`)
	word := regexp.MustCompile(`[A-Za-z][A-Za-z0-9]*`)
	checked := 0
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			name := ""
			switch fn := call.Fun.(type) {
			case *ast.Ident:
				name = fn.Name
			case *ast.SelectorExpr:
				name = fn.Sel.Name
			}
			if !msgFuncs[name] {
				return true
			}
			for _, a := range call.Args {
				ast.Inspect(a, func(n ast.Node) bool {
					lit, ok := n.(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						return true
					}
					s, err := strconv.Unquote(lit.Value)
					if err != nil {
						return true
					}
					checked++
					// Backquoted parts are commands to type, where flag and
					// verb names belong.
					s = regexp.MustCompile("`[^`]*`").ReplaceAllString(s, "")
					var bad []string
					for _, w := range word.FindAllString(s, -1) {
						if idents[w] {
							bad = append(bad, w)
						}
					}
					bad = append(bad, qualified.FindAllString(s, -1)...)
					bad = append(bad, advice.FindAllString(s, -1)...)
					if len(bad) > 0 {
						t.Errorf("%s: message %q names Go identifiers %v", fset.Position(lit.Pos()), s, bad)
					}
					return true
				})
			}
			return true
		})
	}
	if checked < 500 {
		t.Fatalf("only %d message strings found: the scan is broken", checked)
	}
}

func add(idents map[string]bool, camel *regexp.Regexp, id *ast.Ident) {
	if id.IsExported() && camel.MatchString(id.Name) && !unicode.IsLower(rune(id.Name[0])) {
		idents[id.Name] = true
	}
}
