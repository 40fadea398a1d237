package main

import (
	"strings"

	"github.com/vmnet/vmnet/names"
	"github.com/vmnet/vmnet/owner"
)

// Names from the command line are checked here, before anything touches
// a path, a tag or an interface; a bad one is a usage error (exit 2)
// naming the argument.

// checkArg applies check (names.Lab, names.VM, ...) to a command-line
// argument.
func checkArg(check func(string) error, arg string) error {
	if err := check(arg); err != nil {
		return usageError{err.Error()}
	}
	return nil
}

// checkIfArg checks an interface name from the command line.
func checkIfArg(what, arg string) error {
	if err := names.Interface(what, arg); err != nil {
		return usageError{err.Error()}
	}
	return nil
}

// isLabFile reports whether a LAB argument names a lab file rather than a
// lab: only when it ends in ".toml" or contains '/'. A lab named like a
// file in the current directory is still the lab.
func isLabFile(arg string) bool {
	return strings.HasSuffix(arg, ".toml") || strings.ContainsRune(arg, '/')
}

// tagArg turns a --tag flag into an owner: "" is the ad-hoc owner,
// anything else must be a whole tag as `tap list` and `bridge list` show
// it ("vmnet:adhoc", "vmnet:lab:NAME").
func tagArg(tag string) (string, error) {
	if tag == "" {
		return owner.AdHoc, nil
	}
	if err := owner.Valid(tag); err != nil {
		return "", usagef("--tag: %v", err)
	}
	return tag, nil
}
