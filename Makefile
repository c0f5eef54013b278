# qkv: the front door. `make run`, `make test`, `make build`, `make bench`, `make bench-full`, `make bench-ort`,
# `make bench-ratio`, `make fuzz`, `make alloc`, `make soak`, `make install`, `make bindings`, `make clean`,
# `make -s jdk` (prints the JDK every target uses).
#
# Every target runs on a JDK >= 25, found here and never taken from the default `java`: JAVA_HOME when it is
# one, else the newest JDK >= 25 under $(JVM_DIR) (default /usr/lib/jvm; e.g. JVM_DIR=~/.jdks); or the one given
# as `make JDK=...`, which must be one too.

SHELL := /bin/bash
.DEFAULT_GOAL := run

# $(JAVA_HOME), expanded by make, is the environment's or a command-line JAVA_HOME=... (which $(shell) would not see)
JVM_DIR ?= /usr/lib/jvm
# Shell: v = the major Java version of the JDK at $$j (empty unless it has a bin/javac and a bin/java that answers)
JDK_VERSION = v=; if [ -n "$$j" ] && [ -x "$$j/bin/javac" ] && [ -x "$$j/bin/java" ]; then \
    v=$$("$$j/bin/java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p'); \
    v=$${v%%.*}; [ "$$v" -eq "$$v" ] 2>/dev/null || v=; fi
ifeq ($(origin JDK),command line)
  # make JDK=...: overrides the search below, so it is checked here as the search checks each candidate (it
  # skipped the check, and a JDK 17 given that way failed later inside Maven)
  JDK_GIVEN := $(shell j="$(JDK)"; $(JDK_VERSION); echo "$$v")
  ifeq ($(JDK_GIVEN),)
    $(error no JDK >= 25 found (JDK=$(JDK): no bin/java and bin/javac that report a version): set JDK to one, or leave it unset to search JAVA_HOME and $(JVM_DIR)/*)
  endif
  ifeq ($(shell [ "$(JDK_GIVEN)" -ge 25 ] && echo ok),)
    $(error no JDK >= 25 found (JDK=$(JDK): version $(JDK_GIVEN)): set JDK to one, or leave it unset to search JAVA_HOME and $(JVM_DIR)/*)
  endif
endif
JDK := $(shell \
  best=; bestv=0; jh="$(JAVA_HOME)"; \
  for j in "$$jh" "$(JVM_DIR)"/*; do \
    $(JDK_VERSION); [ -n "$$v" ] || continue; \
    if [ "$$j" = "$$jh" ] && [ "$$v" -ge 25 ]; then best=$$j; break; fi; \
    if [ "$$v" -ge 25 ] && [ "$$v" -gt "$$bestv" ]; then best=$$j; bestv=$$v; fi; \
  done; echo "$$best")

ifeq ($(JDK),)
  $(error no JDK >= 25 found (JAVA_HOME=$(JAVA_HOME), $(JVM_DIR)/*): set JAVA_HOME or JVM_DIR to one, or install one under $(JVM_DIR) (e.g. Temurin 25))
endif

# override: a command-line JAVA_HOME=... that is not a JDK >= 25 must not reach Maven either
override export JAVA_HOME := $(JDK)
JAVA := $(JDK)/bin/java
MVN := mvn -B -ntp
# Flags every qkv JVM needs: FFM downcalls without warnings, and the Vector API incubator module.
JVM_FLAGS := --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector
ARGS ?=
# Options for the JVM of `make run`, after JVM_FLAGS: the -Dqkv.* settings (README, Settings), e.g.
# JVM_ARGS="-Dqkv.blas.threads=2"; without it a setting could not reach the command line's JVM at all.
JVM_ARGS ?=

SOURCES := $(shell find pom.xml bindings/pom.xml java/pom.xml bench/pom.xml bindings/src java/src/main bench/src -type f 2>/dev/null)
STAMP := java/target/.built
CLASSPATH_FILE := java/target/runtime-classpath.txt
BUILD_LOG := java/target/build.log

# $(call quiet_mvn,ARGS,LOG): Maven with ARGS, its output kept in LOG and shown (with one error line) only when it
# fails.
quiet_mvn = $(MVN) -q $(1) > $(2) 2>&1 || { cat $(2) >&2; echo "error: build failed (log above)" >&2; exit 1; }

.PHONY: run test bench bench-full bindings clean jdk build

# Build quietly (the log is shown only when the build fails), then run the CLI with ARGS (and JVM_ARGS for its JVM).
# Its stderr goes through a pipe that drops the JDK's incubator warning; make waits for that filter (a process
# substitution, 2> >(grep ...), it did not: the `error:` line could reach a redirected stderr after make returned),
# and the exit code stays the CLI's (pipefail; grep -v exits 1 when it prints nothing).
run: $(STAMP)
	@set -o pipefail; { $(JAVA) $(JVM_FLAGS) $(JVM_ARGS) -cp "java/target/classes:$$(cat $(CLASSPATH_FILE))" \
	  dev.qkv.cli.Main $(ARGS) 2>&1 1>&3 3>&- \
	  | { grep -v '^WARNING: Using incubator modules: jdk.incubator.vector$$' || true; } >&2; } 3>&1

build: $(STAMP)

$(STAMP): $(SOURCES)
	@mkdir -p java/target
	@$(call quiet_mvn,package -DskipTests,$(BUILD_LOG).tmp)
	@mv $(BUILD_LOG).tmp $(BUILD_LOG)
	@touch $@

# The whole suite (JUnit 5 through Surefire).
test:
	$(MVN) test

# Reliability (issue 5): the fuzz and property suites with many more cases per test than `make test` runs;
# FUZZ_ARGS=-Dqkv.fuzz.seed=N replays or varies the random cases.
FUZZ_ITERATIONS ?= 20000
FUZZ_FORCED = -Dqkv.groupKeyBlockBytes=256 -Dqkv.keyBlock=64 -Dqkv.spanBlocks=3 -Dqkv.nativeSmallCalls=true \
  -Dqkv.nativeSmallRows=16 -Dqkv.nativeSmallMnk=65536 -Dqkv.pool.spinMicros=50 -Dqkv.vector.smallBlocks=true \
  -XX:MaxVectorSize=32
.PHONY: fuzz soak
fuzz:
	$(MVN) test -pl java -am -Dtest='dev/qkv/reliability/*Test' -Dsurefire.failIfNoSpecifiedTests=false \
	  -Dqkv.eightFloatVectors.skip=true -Dqkv.fuzz.iterations=$(FUZZ_ITERATIONS) $(FUZZ_ARGS)
	@# again with small key blocks, so that the calls the fuzzers draw (a few hundred keys) take the grouped
	@# few-query path in many blocks (Attention.GROUP_KEY_BLOCK_BYTES) and the online path in spans of 3 query
	@# blocks (Attention.KEY_BLOCK, SPAN_BLOCKS); and the native engine in small calls on any OpenBLAS core, of
	@# 16 rows and at most 16·64·64 multiply-adds, so that the fuzzers' calls cut into many (Attention.SMALL_MNK);
	@# with pool threads spinning between calls, so that small calls are shared (WorkerPool), the concurrency
	@# tests too; with the Java kernels of 8-float vectors and 6 x 2 register blocks (AVX2's), which AVX-512
	@# machines do not run by default;
	@# and the non-finite and overflow tests, whose cases reach those paths only past a default block
	@# (EngineTest stays out: its budget cases are sized for the default blocks)
	$(MVN) test -pl java -am -Dtest='dev/qkv/reliability/*FuzzTest,dev/qkv/reliability/*ConcurrencyTest,dev/qkv/reliability/NonFiniteValuesTest,dev/qkv/attention/ScoreOverflowTest' \
	  -Dsurefire.failIfNoSpecifiedTests=false -Dqkv.eightFloatVectors.skip=true \
	  '-Dqkv.jvm.flags=$(JVM_FLAGS) $(FUZZ_FORCED)' $(FUZZ_ARGS)

# Steady-state allocation, exactly: after a warm-up, rounds of 1000 calls must allocate 0 bytes on the Java heap
# (sdpa with 16 and with 1 query row, mha forward, mha decode; native and Java backends; ThreadMXBean). Run on a quiet machine: the JIT must have compiled the kernels.
.PHONY: alloc
alloc:
	$(MVN) test -pl java -am -Dtest='**/AllocationTest' -Dsurefire.failIfNoSpecifiedTests=false \
	  -Dqkv.eightFloatVectors.skip=true

# Reliability: SOAK_CALLS mixed calls; fails (exit 1) when heap, resident or native memory grows past its bound.
# NMT is on so that the run can read the JVM's native memory (FFM arenas) besides the resident set; a fixed,
# pre-touched heap keeps heap resizing out of the resident set, so RSS growth means native growth.
SOAK_CALLS ?= 100000
soak: $(STAMP)
	@$(call quiet_mvn,test-compile -pl java -am,java/target/soak-build.log)
	$(JAVA) $(JVM_FLAGS) -XX:NativeMemoryTracking=summary -Xms256m -Xmx256m -XX:+AlwaysPreTouch \
	  -Dqkv.soak.calls=$(SOAK_CALLS) \
	  -cp "java/target/test-classes:java/target/classes:$$(cat $(CLASSPATH_FILE))" dev.qkv.reliability.Soak

# A short JMH run (about 3 minutes): two shapes, both backends, causal or not, 1 and 2 threads, the decode
# step with its floor, and the FMA peak (PeakBench, 1 thread), with the allocation profiler. `make bench-full`
# runs every benchmark of the plain jar (all but OrtBench, which needs `make bench-ort`) at its default
# parameters (the non-default ones, e.g. SdpaBench's backend=auto or DecodeBench's kvHeads=8, are named in
# bench/RESULTS.md's commands; about 20-30 minutes, 105 JMH runs); bench/RESULTS.md has the commands behind its
# table. BENCH_ARGS adds JMH options.
BENCH_SHORT := -f 1 -wi 1 -w 1s -i 2 -r 1s -prof gc -p shape=1x1x128x64,1x8x2048x64
bench: $(STAMP)
	$(JAVA) $(JVM_FLAGS) -jar bench/target/benchmarks.jar $(BENCH_SHORT) $(BENCH_ARGS) 'SdpaBench|DecodeBench|DecodeFloorBench|PeakBench'

bench-full: $(STAMP)
	$(JAVA) $(JVM_FLAGS) -jar bench/target/benchmarks.jar -prof gc $(BENCH_ARGS)

# The peer of issue 4, measured here: ONNX Runtime for Java (OrtBench: three ways of asking ORT for attention,
# each checked against qkv's output) and then qkv, on the shapes of `make bench`, 1 and 2 threads, within the same
# few minutes (about 2.5 after the build). The ort profile downloads ORT's 75 MB jar, so only this target needs
# it; it builds its own jar, bench/target/ort/benchmarks.jar, which also holds every other benchmark. It ends with
# one table of ORT's fastest form against each qkv backend (OrtTable). BENCH_ARGS adds JMH options.
ORT_JAR := bench/target/ort/benchmarks.jar
BENCH_ORT_SHORT := -f 1 -wi 2 -w 1s -i 3 -r 1s -p shape=1x1x128x64,1x8x2048x64 -p causal=false
.PHONY: bench-ort
bench-ort:
	@mkdir -p bench/target
	@$(call quiet_mvn,package -DskipTests -Port -pl bench -am,bench/target/ort-build.log)
	$(JAVA) $(JVM_FLAGS) -jar $(ORT_JAR) $(BENCH_ORT_SHORT) $(BENCH_ARGS) -rf csv -rff bench/target/ort/ort.csv OrtBench
	$(JAVA) $(JVM_FLAGS) -jar $(ORT_JAR) $(BENCH_ORT_SHORT) $(BENCH_ARGS) -rf csv -rff bench/target/ort/qkv.csv SdpaBench
	@$(JAVA) $(JVM_FLAGS) -cp $(ORT_JAR) dev.qkv.bench.OrtTable bench/target/ort/ort.csv bench/target/ort/qkv.csv

# The same comparison in one JVM (OrtRatio): qkv's backends and ORT's forms take turns in rounds, so that the
# machine's changes of speed, which on a VM outlast a JMH fork, move both sides of each ratio alike. Prints one
# line per shape and thread count: the median of the per-round ratios, their range, and the rounds qkv won.
# Issue 4's five shapes on 1 and 2 threads take about 8 minutes; RATIO_ARGS replaces the defaults, e.g.
# RATIO_ARGS="--shapes 1x8x2048x64 --threads 2 --causal".
RATIO_ARGS ?=
.PHONY: bench-ratio
bench-ratio:
	@mkdir -p bench/target
	@$(call quiet_mvn,package -DskipTests -Port -pl bench -am,bench/target/ort-build.log)
	$(JAVA) $(JVM_FLAGS) -cp $(ORT_JAR) dev.qkv.bench.OrtRatio $(RATIO_ARGS)

# Regenerates bindings/ from native/cblas.h with jextract (not needed for a normal build).
# JEXTRACT names a jextract binary built from openjdk/jextract; the symbol allowlist is native/openblas.symbols.
# jextract writes into a fresh directory first: the bindings are replaced only when it succeeds (before, they were
# deleted first, and a jextract that failed left bindings/ empty or half-written, so the build broke).
JEXTRACT ?= jextract
BINDINGS_OUT := bindings/target/jextract
bindings:
	@command -v $(JEXTRACT) >/dev/null || { echo "error: jextract not found (JEXTRACT=$(JEXTRACT)); install it from openjdk/jextract and set JEXTRACT=/path/to/jextract" >&2; exit 2; }
	rm -rf $(BINDINGS_OUT)
	$(JEXTRACT) --output $(BINDINGS_OUT) --target-package dev.qkv.bindings.openblas --header-class-name cblas_h @native/openblas.symbols native/cblas.h \
	  || { rm -rf $(BINDINGS_OUT); echo "error: jextract failed (log above); bindings/ left as it was" >&2; exit 1; }
	@test -d $(BINDINGS_OUT)/dev/qkv/bindings/openblas || { echo "error: jextract wrote no dev/qkv/bindings/openblas under $(BINDINGS_OUT); bindings/ left as it was" >&2; exit 1; }
	rm -rf bindings/src/main/java/dev/qkv/bindings/openblas
	mv $(BINDINGS_OUT)/dev/qkv/bindings/openblas bindings/src/main/java/dev/qkv/bindings/openblas
	rm -rf $(BINDINGS_OUT)

# qkv and its bindings into the local Maven repository (~/.m2), for projects that depend on dev.qkv:qkv (README,
# "Using qkv in your project"); the tests are `make test`'s.
.PHONY: install
install:
	$(MVN) -q install -DskipTests -pl java -am

jdk:
	@echo $(JDK)

clean:
	$(MVN) -q clean
