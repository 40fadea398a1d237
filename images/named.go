package images

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Names lists the named images vmnet can build, for `image = "NAME"`.
func Names() []string { return []string{Debian12} }

// EnsureNamed builds or reuses the named image.
func EnsureNamed(ctx context.Context, name string, opts Options) (Disk, error) {
	switch name {
	case Debian12:
		return EnsureDebian(ctx, opts)
	}
	return Disk{}, fmt.Errorf("vmnet image: unknown image %q (known: %s)", name, strings.Join(Names(), ", "))
}

// Cached is one complete image in the cache.
type Cached struct {
	Dir   string
	Name  string // "test" for the test image, else the image name
	Bytes int64  // disk space its files take (hard links shared with another image count in both)
	Built time.Time
}

// List returns the complete images under cache (DefaultCacheDir when
// empty), oldest first.
func List(cache string) ([]Cached, error) {
	if cache == "" {
		var err error
		if cache, err = DefaultCacheDir(); err != nil {
			return nil, err
		}
	}
	dir := filepath.Join(cache, "images")
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("vmnet image: %w", err)
	}
	var out []Cached
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		d := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(filepath.Join(d, fileManifest))
		if err != nil {
			continue // incomplete
		}
		var m struct {
			Name  string    `json:"name"`
			Built time.Time `json:"built"`
		}
		if json.Unmarshal(data, &m) != nil {
			continue
		}
		if m.Name == "" {
			m.Name = "test"
		}
		out = append(out, Cached{Dir: d, Name: m.Name, Bytes: diskUsage(d), Built: m.Built})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Built.Before(out[j].Built) })
	return out, nil
}

// diskUsage is the space the files of dir take (sparse files count only
// their allocated blocks).
func diskUsage(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil {
			n += allocated(fi)
		}
		return nil
	})
	return n
}
