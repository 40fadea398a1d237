# vmnet: the two commands a new user needs are `make demo` and `make test`.
GO ?= go
FUZZTIME ?= 10s
PKGS := ./...

.PHONY: all build deps test vet fuzz bench bench-gso bench-link demo image man clean

all: build

build:
	$(GO) build -o vmnet ./cmd/vmnet

deps:
	./scripts/install-deps.sh

STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

vet:
	$(GO) vet $(PKGS)
	$(GO) vet -tags mangen ./cmd/vmnet
	$(GO) run $(STATICCHECK) $(PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }

# Every test, as root: unit, kernel (private namespaces), guests and fuzz.
test: deps vet build
	./scripts/gotest.sh -timeout 45m $(PKGS)
	./scripts/gotest.sh -tags purego ./vnethdr/
	$(MAKE) fuzz

# Short fuzz runs over every target; the seed corpora also run in `go test`.
fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

bench:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

# vnethdr's split and coalesce against tailscale's wireguard-go, same input,
# in rounds (bench/peer is its own module; CACHEGRIND=1 adds instruction counts).
ROUNDS ?= 5
bench-gso:
	GO=$(GO) ./scripts/bench-gso.sh $(ROUNDS)

# Link throughput in private namespaces: kernel veth vs vmnet link cases.
bench-link: build
	./tests/bench-link.sh

# The main job: a demo that boots, talks and tears down.
demo: deps build
	./scripts/demo.sh

# The test guest image (cached); IMAGE_MODULES=bridge,8021q adds modules.
image: deps
	$(GO) run ./images/cmd/vmnet-image $(if $(IMAGE_MODULES),-modules $(IMAGE_MODULES))

# Man pages (section 1), one per verb, generated from the command tree into
# $(MANDIR); read one with `man -l man/vmnet-tap-create.1`.
MANDIR ?= man
man:
	$(GO) run -tags mangen ./cmd/vmnet gen-man $(MANDIR)

clean:
	rm -f vmnet
	rm -rf $(MANDIR)
