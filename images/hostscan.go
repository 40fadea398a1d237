package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/vmnet/vmnet/internal/cachefile"
)

// Reading the guest programs and their libraries (five ldd runs, each a
// shell script that starts the dynamic loader two or three times, then
// 11 MB read and hashed) took 0.1 to 0.2 s of every `vmnet exec` and
// `vmnet run` on an idle host and up to a second on a loaded one, on the
// critical path of a warm boot (the image key depends on it). Its result
// is kept in hostScanFile of the cache directory: the host path, mode and
// SHA-256 of each file, valid while everything ldd's answer and the
// hashes depend on is unchanged: which files PATH finds, the identity
// (size, modification and change time, inode) of every file read, of
// the loader's cache and preload list (/etc/ld.so.cache,
// /etc/ld.so.preload) and the loader's environment (LD_LIBRARY_PATH,
// LD_PRELOAD). A new library version replaces a file (another inode or
// times); a newly installed library that would shadow one goes through
// ldconfig, which rewrites ld.so.cache.
const hostScanFile = "host-files.json"

// hostScanRecipe changes when what the scan collects changes.
const hostScanRecipe = "host-scan-1"

// loaderFiles are the files besides the programs and libraries that
// decide what ldd resolves.
var loaderFiles = []string{"/etc/ld.so.cache", "/etc/ld.so.preload"}

type hostScan struct {
	Key   string            `json:"key"`
	Deps  map[string]string `json:"deps"` // path: cachefile.FileID
	Files []scannedFile     `json:"files"`
}

type scannedFile struct {
	Dst    string `json:"dst"`
	Src    string `json:"src"`
	Mode   uint32 `json:"mode"`
	SHA256 string `json:"sha256"`
}

// hostScanKey is what the scan depends on besides file identities: the
// recipe, the programs PATH finds and the loader's environment.
func hostScanKey() (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", hostScanRecipe)
	for _, p := range guestPrograms {
		src, err := exec.LookPath(p.name)
		if err != nil {
			return "", &MissingError{Tools: []string{p.name}, Packages: []string{p.pkg}}
		}
		fmt.Fprintf(&b, "%s %s %s\n", p.name, p.dst, src)
	}
	for _, v := range []string{"LD_LIBRARY_PATH", "LD_PRELOAD"} {
		fmt.Fprintf(&b, "%s=%q\n", v, os.Getenv(v))
	}
	return b.String(), nil
}

// scanHostFiles is collectHostFiles through the cache in dir: files from
// a valid cache entry carry their checksum but no data (hostFile.load
// reads it when an image is built).
func scanHostFiles(ctx context.Context, dir string) ([]hostFile, error) {
	key, err := hostScanKey()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, hostScanFile)
	var c hostScan
	if cachefile.Read(path, &c) && c.Key == key && len(c.Files) > 0 {
		files, ok := c.files()
		for p, id := range c.Deps {
			if !ok || cachefile.FileID(p) != id {
				ok = false
				break
			}
		}
		if ok {
			return files, nil
		}
	}
	// Identities first: a file that changes while it is read does not
	// get the new identity with the old contents.
	deps := map[string]string{}
	for _, p := range loaderFiles {
		deps[p] = cachefile.FileID(p)
	}
	before := map[string]string{}
	files, err := collectHostFiles(ctx, func(src string) { before[src] = cachefile.FileID(src) })
	if err != nil {
		return nil, err
	}
	c = hostScan{Key: key, Deps: deps}
	for _, f := range files {
		deps[f.src] = before[f.src]
		c.Files = append(c.Files, scannedFile{Dst: f.dst, Src: f.src, Mode: f.mode, SHA256: hex.EncodeToString(f.sum[:])})
	}
	cachefile.Write(path, c)
	return files, nil
}

func (c hostScan) files() ([]hostFile, bool) {
	var files []hostFile
	for _, f := range c.Files {
		sum, err := hex.DecodeString(f.SHA256)
		if err != nil || len(sum) != sha256.Size || f.Dst == "" || f.Src == "" {
			return nil, false
		}
		if _, ok := c.Deps[f.Src]; !ok {
			return nil, false
		}
		hf := hostFile{dst: f.Dst, src: f.Src, mode: f.Mode}
		copy(hf.sum[:], sum)
		files = append(files, hf)
	}
	return files, true
}

// load reads a file that came from the cache (without data) and checks
// it still is the file its checksum was taken of.
func (f *hostFile) load() error {
	if f.data != nil {
		return nil
	}
	data, err := os.ReadFile(f.src)
	if err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	if sha256.Sum256(data) != f.sum {
		return fmt.Errorf("vmnet image: %s changed while the image was being built; run the command again", f.src)
	}
	f.data = data
	return nil
}

// hostLibsFile keeps CachedLibs's answers, by program.
const hostLibsFile = "host-libs.json"

type libsEntry struct {
	Key  string            `json:"key"`
	Deps map[string]string `json:"deps"`
	Libs []string          `json:"libs"`
}

// CachedLibs returns the shared libraries of the host program prog as
// resolve (an ldd run) lists them, kept in dir (the image cache) while
// prog, the libraries, the loader's cache and preload list and its
// environment are unchanged (as for hostScanFile). dir "" keeps nothing.
func CachedLibs(dir, prog string, resolve func() ([]string, error)) ([]string, error) {
	if dir == "" {
		return resolve()
	}
	key := fmt.Sprintf("%s %q %q", hostScanRecipe, os.Getenv("LD_LIBRARY_PATH"), os.Getenv("LD_PRELOAD"))
	path := filepath.Join(dir, hostLibsFile)
	all := map[string]libsEntry{}
	if cachefile.Read(path, &all) {
		if e, ok := all[prog]; ok && e.Key == key && e.Deps[prog] != "" {
			valid := true
			for p, id := range e.Deps {
				if cachefile.FileID(p) != id {
					valid = false
					break
				}
			}
			if valid {
				return e.Libs, nil
			}
		}
	} else {
		all = map[string]libsEntry{}
	}
	deps := map[string]string{prog: cachefile.FileID(prog)}
	for _, p := range loaderFiles {
		deps[p] = cachefile.FileID(p)
	}
	libs, err := resolve()
	if err != nil {
		return nil, err
	}
	for _, l := range libs {
		deps[l] = cachefile.FileID(l)
	}
	all[prog] = libsEntry{Key: key, Deps: deps, Libs: libs}
	cachefile.Write(path, all)
	return libs, nil
}
