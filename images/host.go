package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/vmnet/vmnet/internal/cachefile"
	"github.com/vmnet/vmnet/netns"
)

// MissingError reports host programs the build needs and the Debian
// packages that provide them.
type MissingError struct {
	Tools    []string // program names or paths
	Packages []string // Debian packages to install, deduplicated
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("vmnet image: missing host tools %s (run: sudo apt-get install %s)",
		strings.Join(e.Tools, ", "), strings.Join(e.Packages, " "))
}

// hostTool is one program the recipe runs or copies, with its package.
type hostTool struct{ name, pkg string }

// hostTools are checked up front so that a fresh machine gets one error
// naming everything to install instead of failing step by step.
var hostTools = []hostTool{
	{"apt-get", "apt"},
	{"apt-cache", "apt"},
	{"dpkg-deb", "dpkg"},
	{"dpkg-query", "dpkg"},
	{"depmod", "kmod"},
	{"ldd", "libc-bin"},
	{"xz", "xz-utils"},
	{"iperf3", "iperf3"},
	{"ethtool", "ethtool"},
	{"ip", "iproute2"},
	{"tc", "iproute2"},
	{"bridge", "iproute2"},
}

func checkHostTools() error {
	var miss MissingError
	seen := map[string]bool{}
	for _, t := range hostTools {
		if _, err := exec.LookPath(t.name); err != nil {
			miss.Tools = append(miss.Tools, t.name)
			if !seen[t.pkg] {
				seen[t.pkg] = true
				miss.Packages = append(miss.Packages, t.pkg)
			}
		}
	}
	if len(miss.Tools) > 0 {
		return &miss
	}
	return nil
}

// run runs a host program and returns its stdout; the error carries the
// command and its stderr.
func run(ctx context.Context, dir string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(string(out))
		}
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return out, nil
}

// debPkg is a Debian package the image is built from, downloaded with
// apt-get download (never installed).
type debPkg struct {
	Name     string // linux-image-6.1.0-56-amd64
	Version  string // 6.1.192-2
	Release  string // kernels only: 6.1.0-56-amd64, what uname -r prints
	Filename string // file name apt-get download gives the package
}

// resolveKernel follows the linux-image-amd64 metapackage to the kernel
// it currently depends on: superseded kernel versions leave the mirror,
// so a pinned name would break on its own. The metapackage pins the exact
// version ("Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)").
func resolveKernel(ctx context.Context) (debPkg, error) {
	const meta = "linux-image-amd64"
	out, err := run(ctx, "", "apt-cache", "show", "--no-all-versions", meta)
	if err != nil {
		return debPkg{}, fmt.Errorf("vmnet image: resolve %s: %w (is the package list current? run: sudo apt-get update)", meta, err)
	}
	return parseMeta(out)
}

var dependsRE = regexp.MustCompile(`(?m)^Depends:.*?\b(linux-image-([0-9][^\s,()]*))\s*\(=\s*([^\s)]+)\)`)

func parseMeta(show []byte) (debPkg, error) {
	m := dependsRE.FindSubmatch(show)
	if m == nil {
		return debPkg{}, fmt.Errorf("vmnet image: apt-cache show linux-image-amd64: no \"Depends: linux-image-<release> (= <version>)\" line:\n%s", show)
	}
	k := debPkg{Name: string(m[1]), Release: string(m[2]), Version: string(m[3])}
	k.Filename = debFilename(k.Name, k.Version, "amd64")
	return k, nil
}

// debFilename is the name apt-get download gives a package file, with the
// epoch's ':' escaped as the pool does not.
func debFilename(name, version, arch string) string {
	return fmt.Sprintf("%s_%s_%s.deb", name, strings.ReplaceAll(version, ":", "%3a"), arch)
}

// resolvePkg finds the candidate version of a package.
func resolvePkg(ctx context.Context, name string) (debPkg, error) {
	out, err := run(ctx, "", "apt-cache", "show", "--no-all-versions", name)
	if err != nil {
		return debPkg{}, fmt.Errorf("vmnet image: resolve %s: %w (is the package list current? run: sudo apt-get update)", name, err)
	}
	p := debPkg{Name: name}
	arch := ""
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Version: "); ok && p.Version == "" {
			p.Version = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "Architecture: "); ok && arch == "" {
			arch = strings.TrimSpace(v)
		}
	}
	if p.Version == "" || arch == "" {
		return debPkg{}, fmt.Errorf("vmnet image: apt-cache show %s: no Version or Architecture field", name)
	}
	p.Filename = debFilename(name, p.Version, arch)
	return p, nil
}

// aptListsStamp describes the state of apt's package lists and sources;
// the kernel resolution only changes when it does, so it is memoized
// under this stamp (apt-cache takes over a second without pkgcache.bin).
func aptListsStamp() string {
	h := sha256.New()
	for _, pat := range []string{"/var/lib/apt/lists/*Packages*", "/etc/apt/sources.list", "/etc/apt/sources.list.d/*", "/etc/apt/preferences*"} {
		m, _ := filepath.Glob(pat)
		for _, f := range m {
			if st, err := os.Stat(f); err == nil {
				fmt.Fprintf(h, "%s %d %d\n", f, st.Size(), st.ModTime().UnixNano())
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// resolved are the packages the image is built from.
type resolved struct {
	Kernel  debPkg
	Busybox debPkg
}

// resolveCached resolves the packages, memoized in cache/resolved.json
// under the state of the package lists.
func resolveCached(ctx context.Context, cache string) (resolved, error) {
	type memo struct {
		Stamp string
		Pkgs  resolved
	}
	stamp := aptListsStamp()
	path := filepath.Join(cache, "resolved.json")
	var mm memo
	if cachefile.Read(path, &mm) && mm.Stamp == stamp && mm.Pkgs.Kernel.Name != "" && mm.Pkgs.Busybox.Name != "" {
		return mm.Pkgs, nil
	}
	var r resolved
	var err error
	if r.Kernel, err = resolveKernel(ctx); err != nil {
		return r, err
	}
	// The regular busybox package, not busybox-static: the static build
	// prefers its own applets over PATH (FEATURE_SH_STANDALONE), so "ip"
	// would always be busybox's, never iproute2's.
	if r.Busybox, err = resolvePkg(ctx, "busybox"); err != nil {
		return r, err
	}
	cachefile.Write(path, memo{stamp, r})
	return r, nil
}

// debFile is the name apt-get download gives the package file.
func (k debPkg) debFile() string { return k.Filename }

// download fetches a package into debsDir unless it is there. Older
// versions in debsDir are removed once the new one is in place: a kernel
// is 70 MB and superseded ones can no longer be downloaded anyway.
func download(ctx context.Context, debsDir string, k debPkg) (string, error) {
	dst := filepath.Join(debsDir, k.debFile())
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	if err := os.MkdirAll(debsDir, 0o755); err != nil {
		return "", fmt.Errorf("vmnet image: %w", err)
	}
	tmp, err := os.MkdirTemp(debsDir, ".download-")
	if err != nil {
		return "", fmt.Errorf("vmnet image: %w", err)
	}
	defer os.RemoveAll(tmp)
	// apt-get warns when its _apt user cannot write the directory and then
	// downloads as the caller; that is fine and not an error.
	// The caller may work inside a network namespace of its own (vmnet
	// --netns), where names do not resolve: fetch from the one vmnet
	// started in.
	err = netns.DoInitial(func() error {
		_, err := run(ctx, tmp, "apt-get", "download", k.Name+"="+k.Version)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("vmnet image: download %s: %w (%s)", k.Name, err, downloadAdvice("check the apt sources, or run: sudo apt-get update"))
	}
	got, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(got) != 1 {
		return "", fmt.Errorf("vmnet image: apt-get download %s left %d .deb files in %s", k.Name, len(got), tmp)
	}
	if err := os.Rename(got[0], dst); err != nil {
		return "", fmt.Errorf("vmnet image: %w", err)
	}
	pattern := k.Name + "_*.deb"
	if k.Release != "" {
		pattern = "linux-image-*.deb"
	}
	old, _ := filepath.Glob(filepath.Join(debsDir, pattern))
	for _, o := range old {
		if o != dst {
			os.Remove(o)
		}
	}
	return dst, nil
}

// hostVersions returns the installed versions of the packages whose
// programs go into the image, for the manifest.
func hostVersions(ctx context.Context) (map[string]string, error) {
	pkgs := []string{"iperf3", "ethtool", "iproute2", "libc6"}
	out, err := run(ctx, "", "dpkg-query", append([]string{"-W", "-f=${Package} ${Version} ${db:Status-Status}\\n"}, pkgs...)...)
	vers := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[2] == "installed" {
			vers[f[0]] = f[1]
		}
	}
	var miss []string
	for _, p := range pkgs {
		if vers[p] == "" {
			miss = append(miss, p)
		}
	}
	if len(miss) > 0 {
		return nil, &MissingError{Tools: miss, Packages: miss}
	}
	if err != nil {
		return nil, fmt.Errorf("vmnet image: %w", err)
	}
	return vers, nil
}

// sharedLibs lists the shared objects a host binary loads, as absolute
// paths, using ldd (the image runs the same Debian release as the host).
func sharedLibs(ctx context.Context, bin string) ([]string, error) {
	out, err := run(ctx, "", "ldd", bin)
	if err != nil {
		return nil, fmt.Errorf("vmnet image: %w", err)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if strings.Contains(line, "not found") {
			return nil, fmt.Errorf("vmnet image: %s: missing shared library: %s", bin, line)
		}
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0]) // the dynamic loader
		}
	}
	sort.Strings(libs)
	return libs, nil
}

// downloadAdvice is what to do about a failed package download: usual,
// or first of all, when vmnet was started in a network namespace without
// a default route (downloads run from there; see netns.DoInitial), to
// reach the mirror from the host's namespace.
func downloadAdvice(usual string) string {
	if !netns.StartedOffline() {
		return usual
	}
	return "vmnet was started in a network namespace without a default route, which cannot reach the Debian mirror: " +
		"run vmnet image build once in the host's namespace (the image is cached for every namespace), " +
		"or run vmnet there and give the lab's namespace with --netns; else " + usual
}
