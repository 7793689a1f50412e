#!/usr/bin/env bash
# Install what is missing, build Stoa, and run it on its embedded default
# (127.0.0.1:8080, data in ./stoa-data). Extra arguments go to `stoa serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash contrib/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTOA_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)"
exec ./build/stoa serve "$@"
