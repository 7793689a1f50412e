#!/usr/bin/env bash
# Install what is missing, then build and test Stoa three ways:
#   gcc, warnings as errors: unit tests (Check), black-box tests (Node) and
#     browser tests of the demo page (headless Chromium)
#   clang, warnings as errors: unit tests
#   gcc with ASan+UBSan: unit tests and black-box tests
# Ends with one line "stoa: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bash contrib/install-deps.sh --test || { echo "stoa: installing dependencies failed"; exit 1; }

jobs=$(nproc)
passed=0
failed=0
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

count_ctest() {   # ctest -V output -> passed failed, counting each Check test
  # Check prints "NN%: Checks: C, Failures: F, Errors: E" per suite; a suite
  # that crashed prints none, so ctest's own count of failed suites is added.
  local checks bad suites_failed
  checks=$(grep -oE 'Checks: [0-9]+' "$1" | awk '{s += $2} END {print s + 0}')
  bad=$(grep -oE 'Failures: [0-9]+, Errors: [0-9]+' "$1" | awk '{gsub(",", "", $2); s += $2 + $4} END {print s + 0}')
  suites_failed=$(grep -E 'tests passed, [0-9]+ tests? failed out of' "$1" | tail -n 1 |
                  sed -E 's/.* ([0-9]+) tests? failed out of.*/\1/')
  [ -n "$suites_failed" ] || suites_failed=1
  if [ "$bad" -eq 0 ] && [ "$suites_failed" -gt 0 ]; then bad=$suites_failed; fi
  echo "$((checks - bad)) $bad"
}

count_node() {    # node --test output -> passed failed
  local p f
  p=$(grep -E '^# pass [0-9]+' "$1" | tail -n 1 | awk '{print $3}')
  f=$(grep -E '^# fail [0-9]+' "$1" | tail -n 1 | awk '{print $3}')
  echo "${p:-0} ${f:-1}"
}

add() { passed=$((passed + $1)); failed=$((failed + $2)); }

build() {   # dir, cmake args...
  local dir=$1; shift
  echo "== build $dir"
  cmake -S . -B "$dir" "$@" >"$log/cmake-$(basename "$dir").txt" 2>&1 &&
    cmake --build "$dir" -j"$jobs" 2>&1 | tail -n 3
  return "${PIPESTATUS[0]}"
}

unit() {   # dir
  echo "== unit tests ($1)"
  (cd "$1" && ctest -V -j"$jobs") >"$log/ctest.txt" 2>&1
  # per-suite counts, failed checks (file:line:F|E:...), and ctest's summary
  grep -E '^[0-9]+: [0-9]+%: Checks:|:[0-9]+:[FE]:|tests passed|\*\*\*' "$log/ctest.txt"
  add $(count_ctest "$log/ctest.txt")
}

integration() {   # dir
  echo "== black-box tests ($1)"
  # Bounded: one test may take at most 2 minutes, the whole run 20.
  STOA_BIN="$root/$1/stoa" timeout -k 10 1200 node --test --test-concurrency=1 --test-timeout=120000 \
    tests/integration/ 2>&1 | tee "$log/node.txt"
  [ "${PIPESTATUS[0]}" -ne 124 ] || echo "black-box tests timed out after 20 minutes" | tee -a "$log/node.txt"
  add $(count_node "$log/node.txt")
}

browser() {   # dir
  echo "== browser tests ($1)"
  # The demo page in headless Chromium; screenshots go to tests/artifacts/
  # (or $STOA_ARTIFACTS). Bounded like the black-box tests.
  (cd tests && STOA_BIN="$root/$1/stoa" timeout -k 10 600 node --test --test-concurrency=1 --test-timeout=120000 \
    browser/) 2>&1 | tee "$log/browser.txt"
  [ "${PIPESTATUS[0]}" -ne 124 ] || echo "browser tests timed out after 10 minutes" | tee -a "$log/browser.txt"
  add $(count_node "$log/browser.txt")
}

echo "== npm ci (tests/)"
(cd tests && npm ci --no-audit --no-fund --loglevel=error) || { echo "stoa: npm ci failed"; exit 1; }

if build build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=gcc; then
  unit build
  integration build
  browser build
else
  echo "gcc build failed"; add 0 1
fi

if build build-clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang; then
  unit build-clang
else
  echo "clang build failed"; add 0 1
fi

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
if build build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=gcc -DSTOA_SANITIZE=ON; then
  unit build-asan
  integration build-asan
else
  echo "sanitizer build failed"; add 0 1
fi

echo
echo "stoa: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
