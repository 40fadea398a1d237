package qemu

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultUser is the system user QEMU runs as unless a lab says otherwise
// (like libvirt's libvirt-qemu). vmnet creates it on first use.
const DefaultUser = "vmnet-qemu"

// UserEnv, when set, names the dedicated user instead of DefaultUser; it
// is created on first use just the same.
const UserEnv = "VMNET_QEMU_USER"

// DedicatedUser is the name of the user QEMU runs as by default.
func DedicatedUser() string {
	if u := os.Getenv(UserEnv); u != "" {
		return u
	}
	return DefaultUser
}

// IsRoot reports whether name means root (the explicit opt-out).
func IsRoot(name string) bool { return name == "root" || name == "0" }

// ResolveUser turns a user name from a lab file into the identity QEMU
// runs as. "" means the dedicated user (DedicatedUser), which is created
// when missing; any other name must exist. "root" or "0" returns nil: QEMU
// runs as the caller. A numeric uid is looked up in the passwd database
// for its primary group; a uid without an entry is refused rather than
// guessed, and so is a user whose primary group is root's.
func ResolveUser(name string) (*User, error) {
	if IsRoot(name) {
		return nil, nil
	}
	create := false
	if name == "" {
		name, create = DedicatedUser(), true
	}
	u, err := lookupUser(name)
	var unknown user.UnknownUserError
	if create && errors.As(err, &unknown) {
		if err := createSystemUser(name); err != nil {
			return nil, err
		}
		u, err = lookupUser(name)
	}
	if err != nil {
		return nil, err
	}
	return u, nil
}

// lookupUser finds name (or a numeric uid) in the user database and
// returns its uid, primary gid and supplementary groups (without gid 0).
func lookupUser(name string) (*User, error) {
	var u *user.User
	var err error
	if _, aerr := strconv.ParseUint(name, 10, 32); aerr == nil {
		u, err = user.LookupId(name)
		if err != nil {
			return nil, fmt.Errorf("user %s: uid %s has no entry in the user database, so its group is unknown: name an existing user, or create one (useradd --system %s)", name, name, DefaultUser)
		}
	} else {
		u, err = user.Lookup(name)
		if err != nil {
			var unknown user.UnknownUserError
			if errors.As(err, &unknown) {
				return nil, fmt.Errorf("user %s does not exist: create it (useradd --system --no-create-home --shell /usr/sbin/nologin --user-group %s) or change user = in the lab file: %w", name, name, err)
			}
			return nil, fmt.Errorf("user %s: %w", name, err)
		}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user %s: uid %q or gid %q is not numeric", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return nil, fmt.Errorf("user %s has uid 0: that is root; say user = \"root\" to run QEMU as root on purpose", name)
	}
	if gid == 0 {
		return nil, fmt.Errorf("user %s has primary group 0 (root's group): QEMU would run with root's group; name another user", name)
	}
	r := &User{UID: uint32(uid), GID: uint32(gid), Name: u.Username}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			g, err := strconv.ParseUint(s, 10, 32)
			if err == nil && g != 0 && g != gid {
				r.Groups = append(r.Groups, uint32(g))
			}
		}
	}
	return r, nil
}

// useradd is the program that creates the dedicated user; a variable for
// the tests of the error path.
var useradd = "useradd"

// createSystemUser creates name as a system user without home or login
// shell, with a group of its own, and puts it into group kvm when that
// exists (QEMU then may use /dev/kvm, as libvirt-qemu does).
//
// Two vmnet processes may want the user at once, and useradd's own
// locking does not keep two concurrent runs from both adding it (seen
// with shadow 4.13: one entry wins, the other's uid is lost after it was
// handed out). So vmnet processes take turns under an flock on /etc
// itself, a directory that is never replaced (useradd renames a new
// /etc/passwd into place, so a lock on that file would not hold), and
// look again before they create.
func createSystemUser(name string) error {
	args := []string{"--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "--user-group"}
	if _, err := user.LookupGroup("kvm"); err == nil {
		args = append(args, "--groups", "kvm")
	}
	args = append(args, name)
	fail := func(err error, out []byte) error {
		return fmt.Errorf("QEMU runs as user %s by default, which does not exist and could not be created (%s %s: %v: %s): create it yourself (useradd --system --no-create-home --shell /usr/sbin/nologin --user-group %s), name an existing user with user = in the lab file's [defaults], or set %s",
			name, useradd, strings.Join(args, " "), err, strings.TrimSpace(string(out)), name, UserEnv)
	}
	etc, err := os.Open("/etc")
	if err != nil {
		return fail(err, nil)
	}
	defer etc.Close()
	if err := unix.Flock(int(etc.Fd()), unix.LOCK_EX); err != nil {
		return fail(fmt.Errorf("lock /etc: %w", err), nil)
	}
	defer unix.Flock(int(etc.Fd()), unix.LOCK_UN)
	if _, err := user.Lookup(name); err == nil {
		return nil // made by another vmnet while we waited
	}
	var out []byte
	for attempt := 0; attempt < 10; attempt++ {
		out, err = exec.Command(useradd, args...).CombinedOutput()
		if err == nil {
			return nil
		}
		if _, lerr := user.Lookup(name); lerr == nil {
			return nil // made by someone else after all
		}
		// useradd gives up at once when another program holds the user
		// database ("cannot lock /etc/passwd; try again later").
		if !strings.Contains(string(out), "lock") {
			break
		}
		time.Sleep(time.Duration(50*(attempt+1)) * time.Millisecond)
	}
	return fail(err, out)
}
