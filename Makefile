# Moat -- spam and virus filtering mail gateway.
#
#   make            build build/moatd and build/moatctl
#   make run        start a demo instance on loopback (SMTP 127.0.0.1:2525)
#   make test       check-layers, unit tests, integration tests (installs what it needs)
#   make check-layers  fail on an include the design forbids, or a call cycle in delivery/
#   make asan       the tests again under AddressSanitizer + UBSan
#   make fuzz       build the libFuzzer targets and run each for FUZZ_SECONDS
#   make bench      Moat beside Postfix, clamd, Dovecot, spamd and rspamd
#   make deb        the Debian package build/moat_VERSION_ARCH.deb (deploy/debian)

CC      ?= cc
PKGS    := libevent_core libevent_extra libevent_openssl libevent_pthreads libssl libcrypto libunbound libclamav opendkim gmime-3.0 zlib hiredis libpcre2-8 libhs libarchive
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN    := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wno-format-nonliteral -Wno-format-truncation
# clang does not know gcc's -Wformat-truncation
ifneq ($(findstring clang,$(CC)),)
WARN    += -Wno-unknown-warning-option
endif
HARDEN  := -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE $(WARN) $(PKG_CFLAGS)
CFLAGS  ?= -O2 -g
ALL_CFLAGS := $(BASE_CFLAGS) $(HARDEN) $(CFLAGS)
LDFLAGS_ALL := -pie -Wl,-z,relro,-z,now $(LDFLAGS)
LIBS    := $(PKG_LIBS) -lspf2 -lopendmarc -lldap -llber -lcrypt -lpthread -ldl -lm

BUILD   ?= build
COMMON_SRC  := $(wildcard common/*.c)
GATEWAY_SRC := $(wildcard gateway/*.c)
DELIVERY_SRC:= $(wildcard delivery/*.c)
FILTERS_SRC := $(wildcard filters/*.c)
MAILSTORE_SRC := $(wildcard mailstore/*.c)
WEBUI_SRC := $(wildcard webui/*.c)
LIB_SRC := $(COMMON_SRC) $(FILTERS_SRC) $(GATEWAY_SRC) $(MAILSTORE_SRC) $(DELIVERY_SRC) $(WEBUI_SRC)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CMD_OBJ := $(BUILD)/cmd/moatd.o $(BUILD)/cmd/moatctl.o
# The compiler writes what each object includes (-MMD, -MP: a header that
# goes away breaks nothing) into OBJECT.d; an object is rebuilt when one of
# those changes, and once when it has no .d yet (a build dir from before).
DEPFLAGS = -MMD -MP -MF $@.d -MT $@
NO_DEPS = $$(if $$(wildcard $$@.d),,FORCE)
.SECONDEXPANSION:

PY      := /usr/bin/python3
FUZZ_SECONDS ?= 60

.PHONY: all deps run test check-layers unit integration asan fuzz bench deb clean FORCE

all: $(BUILD)/moatd $(BUILD)/moatctl $(BUILD)/webui/index.html

$(BUILD)/%.o: %.c $(NO_DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(DEPFLAGS) -c $< -o $@

$(BUILD)/libmoat.a: $(LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

# Plugins loaded as shared objects call back into moatd: export just the filter API.
$(BUILD)/moatd: $(BUILD)/cmd/moatd.o $(BUILD)/libmoat.a filters/filter.sym
	$(CC) $(ALL_CFLAGS) $(LDFLAGS_ALL) -Wl,--dynamic-list=filters/filter.sym -o $@ \
	  $(BUILD)/cmd/moatd.o $(BUILD)/libmoat.a $(LIBS)

$(BUILD)/moatctl: $(BUILD)/cmd/moatctl.o $(BUILD)/libmoat.a
	$(CC) $(ALL_CFLAGS) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

# The browser app (webui/app): npm packages from the registry, pinned by
# package-lock.json; Vite builds it into $(BUILD)/webui, which the web role serves.
APP_SRC := $(wildcard webui/app/src/*.ts webui/app/src/*.css webui/app/public/*) \
           webui/app/index.html webui/app/vite.config.ts webui/app/tsconfig.json
webui/app/node_modules/.package-lock.json: webui/app/package-lock.json
	cd webui/app && npm ci --no-audit --no-fund --loglevel=error

$(BUILD)/webui/index.html: $(APP_SRC) webui/app/node_modules/.package-lock.json
	cd webui/app && npx tsc --noEmit && npx vite build --logLevel warn --outDir $(abspath $(BUILD)/webui)

deps:
	@deploy/deps.sh

# ---------------------------------------------------------------- demo
run: deps all
	@deploy/run-demo.sh

# ---------------------------------------------------------------- package
# dpkg-shlibdeps, dpkg-gencontrol and dpkg-deb over what `make` built;
# deploy/debian/README says what goes where and why.
deb: all
	@deploy/debian/mkdeb.sh $(BUILD)

# ---------------------------------------------------------------- tests
UNIT_TESTS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/test_*.c))

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libmoat.a $(NO_DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(DEPFLAGS) $(LDFLAGS_ALL) -o $@ $< $(BUILD)/libmoat.a $(LIBS) -lcmocka

unit: all $(UNIT_TESTS)
	@set -e; for t in $(UNIT_TESTS); do echo "== $$t"; $$t; done

# Dovecot's imaptest (../shared/imaptest: the source, a patch for Debian 12's
# dovecot-dev, build.sh), built once into build/imaptest whatever BUILD is:
# test_imaptest.py runs its scripted groups and stress runs against moatd.
# It is a client, not Moat: built with Debian's defaults, never with the
# CC/CFLAGS/LDFLAGS that `make asan` passes down (make exports command-line
# variables to configure and, through MAKEFLAGS, to imaptest's make).
IMAPTEST_SRC ?= ../shared/imaptest
IMAPTEST := build/imaptest/imaptest
$(IMAPTEST): $(IMAPTEST_SRC)/build.sh $(IMAPTEST_SRC)/debian12-dovecot-2.3.19.patch
	env -u CC -u CFLAGS -u LDFLAGS -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
	  $(IMAPTEST_SRC)/build.sh build/imaptest

integration: all $(IMAPTEST)
	MOATD=$(abspath $(BUILD)/moatd) MOATCTL=$(abspath $(BUILD)/moatctl) \
	  MOAT_WEBUI=$(abspath $(BUILD)/webui) MOAT_TEST_OUTPUT=$(abspath $(BUILD)/test-output) \
	  IMAPTEST=$(abspath $(IMAPTEST)) \
	  $(PY) -m pytest -q -p no:cacheprovider tests/integration $(PYTEST_ARGS)

# The includes against the design's layers and the calls among delivery/'s
# files (tests/check_layers.py), and its self-test: a forbidden include or a
# call back up put into a copy of the tree is caught.
check-layers:
	$(PY) tests/check_layers.py
	@$(PY) tests/check_layers.py --self-test

test: deps
	$(MAKE) check-layers
	$(MAKE) unit
	$(MAKE) integration

asan: deps
	$(MAKE) BUILD=build-asan CC=clang \
	  CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	  LDFLAGS="-fsanitize=address,undefined" unit integration

# ---------------------------------------------------------------- fuzz
# The library is compiled once with the fuzz flags (instrumented for
# coverage, without libFuzzer's main) into build-fuzz/libmoat.a; each
# target is its own file linked against it.
FUZZ_TARGETS := $(patsubst tests/fuzz/%.c,build-fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_OBJ := $(LIB_SRC:%.c=build-fuzz/obj/%.o)
FUZZ_BASE := -std=c11 -D_GNU_SOURCE $(WARN) -Wno-unknown-warning-option $(PKG_CFLAGS) -O1 -g
FUZZ_CFLAGS := $(FUZZ_BASE) -fsanitize=fuzzer,address,undefined

$(FUZZ_OBJ): build-fuzz/obj/%.o: %.c $(NO_DEPS)
	@mkdir -p $(dir $@)
	clang $(FUZZ_BASE) -fsanitize=fuzzer-no-link,address,undefined $(DEPFLAGS) -c $< -o $@

build-fuzz/libmoat.a: $(FUZZ_OBJ)
	rm -f $@
	ar rcs $@ $^

$(FUZZ_TARGETS): build-fuzz/%: tests/fuzz/%.c build-fuzz/libmoat.a $(NO_DEPS)
	clang $(FUZZ_CFLAGS) $(DEPFLAGS) -o $@ $< build-fuzz/libmoat.a $(LIBS)

fuzz: deps $(FUZZ_TARGETS)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  n=$$(basename $$t); mkdir -p build-fuzz/corpus/$$n; \
	  cp -n tests/fuzz/seeds/$$n/* build-fuzz/corpus/$$n/ 2>/dev/null || true; \
	  case $$n in fuzz_mime*) cp -n ../shared/testdata/mime/*/*/*.eml build-fuzz/corpus/$$n/ 2>/dev/null || true;; esac; \
	  extra=; case $$n in fuzz_archive) extra=-malloc_limit_mb=8192;; esac; \
	  echo "== $$n ($(FUZZ_SECONDS)s)"; \
	  $$t -max_total_time=$(FUZZ_SECONDS) -max_len=4096 $$extra build-fuzz/corpus/$$n; done

-include $(LIB_OBJ:%=%.d) $(CMD_OBJ:%=%.d) $(UNIT_TESTS:%=%.d) $(FUZZ_OBJ:%=%.d) $(FUZZ_TARGETS:%=%.d)

# ---------------------------------------------------------------- bench
# BENCH_PARTS: relay (Moat beside Postfix, and Moat with callout recipient verification cached
# in Redis), chain (the filters beside clamd), imap (beside Dovecot),
# spam (spam scoring beside spamd and rspamd), fidelity (the rules plugin against SpamAssassin),
# backup (moatctl backup and restore of 10,000 messages beside tar czf/xzf),
# tls_out (outbound delivery with tls = verify beside tls = may, to the same STARTTLS next hop)
BENCH_PARTS ?= relay chain imap spam fidelity backup tls_out
bench: deps all $(IMAPTEST)
	@set -e; for p in $(BENCH_PARTS); do tests/bench/$$p.sh; done

clean:
	rm -rf build build-asan build-fuzz

FORCE:
