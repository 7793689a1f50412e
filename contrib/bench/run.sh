#!/usr/bin/env bash
# The benchmark: Stoa next to nginx+nchan, a Node.js `ws` fan-out server
# (contrib/bench/nodews-server.mjs) and the ceiling program (the least a
# server must do), all driven by one load generator (contrib/bench/stoa-bench).
#
#   bash contrib/bench/run.sh [--quick] [--only TARGET] [--scenario NAME]
#                             [--duration SEC] [--warmup SEC] [--out DIR]
#                             [--idle-conns N] [--no-install]
#
# On Debian 12, as root: installs what is missing (apt-get), builds Stoa and
# the bench tools in Release mode into build-bench/, raises the open-file
# limit as far as allowed, then for each target (stoa, nchan, nodews,
# ceiling) and each scenario starts a fresh server pinned to CPU 0 under a
# temporary directory, runs the generator pinned to CPU 1, stops the server.
# Loopback only. Results: DIR/results/<timestamp>.jsonl (DIR: --out, default
# /tmp/stoa-bench), a machine header line then one line per run, and the
# same name with .md: the markdown table, also printed at the end.
#
#   --quick          seconds-long smoke test (CI): stoa only, 1 room x 50
#                    subscribers x 1 publisher at 50 msg/s for 3 s; exits
#                    non-zero if nothing was delivered
#   --only TARGET    stoa, nchan, nodews or ceiling
#   --scenario NAME  only the runs whose name starts with NAME: fanout,
#                    fanout-1x1000, fanout-100x10, fanout-1x10000, ramp,
#                    presence, idle, cross, cross-bus (fanout-1x10000-ws-spread: Stoa
#                    on every core, ws_threads = CPUs, nothing pinned;
#                    every other run pins the server, Stoa with one
#                    WebSocket thread, to CPU 0 and the generator to CPU 1)
#   --duration SEC   measured seconds per run (default 10)
#   --warmup SEC     warm-up seconds per run, not measured (default 2)
#   --idle-conns N   connections per transport in the idle-memory runs
#                    (default: as many as the open-file limit allows)
#   --no-install     do not run apt-get / npm
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

quick=0
only=""
only_scenario=""
duration=10
warmup=2
out=/tmp/stoa-bench
idle_conns=""
install=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --only) only=$2; shift ;;
    --scenario) only_scenario=$2; shift ;;
    --duration) duration=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --out) out=$2; shift ;;
    --idle-conns) idle_conns=$2; shift ;;
    --no-install) install=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (--help)" >&2; exit 2 ;;
  esac
  shift
done
case "$only" in ""|stoa|nchan|nodews|ceiling) ;; *) echo "run.sh: --only stoa|nchan|nodews|ceiling" >&2; exit 2 ;; esac
if [ "$quick" = 1 ]; then
  only=stoa
  duration=3
  warmup=1
fi
targets=(stoa nchan nodews ceiling)
[ -z "$only" ] || targets=("$only")

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }
want_target() { local t; for t in "${targets[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }
want_run() { [ -z "$only_scenario" ] || [[ "$1" == "$only_scenario"* ]]; }
# The cross-instance runs: 1x1000 across, and the bus at these rates in all.
cross_rates="100000 200000 250000 300000"
want_cross() {
  local r
  want_run cross-1x1000-ws && return 0
  for r in $cross_rates; do want_run "cross-bus-200x1-$((r / 1000))k" && return 0; done
  return 1
}

# ---------------------------------------------------------------- install
if [ "$install" = 1 ]; then
  [ "$(id -u)" -eq 0 ] || die "run as root (apt-get, and raising the open-file limit), or pass --no-install"
  bash contrib/install-deps.sh
  pkgs=(procps util-linux)
  command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
  if want_target nchan; then pkgs+=(nginx libnginx-mod-nchan); fi
  if want_target nodews && ! command -v npm >/dev/null 2>&1; then pkgs+=(npm); fi
  if want_target stoa && [ "$quick" = 0 ] && want_cross; then pkgs+=(postgresql); fi
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # nginx and postgresql are started here, by hand: keep the packages from
    # starting their system services (policy-rc.d answering 101).
    added_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod +x /usr/sbin/policy-rc.d
      added_policy=1
    fi
    status=0
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null || status=$?
    [ -z "$added_policy" ] || rm -f /usr/sbin/policy-rc.d
    [ "$status" -eq 0 ] || die "apt-get install failed"
  fi
  # optional: perf, for looking into a run by hand (perf top -p PID)
  if [ "$quick" = 0 ] && ! command -v perf >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf </dev/null >/dev/null 2>&1 ||
      say "linux-perf not installed (optional)"
  fi
  if want_target nodews && [ ! -e tests/node_modules/ws/package.json ]; then
    say "npm ci (tests/, for the ws package)"
    (cd tests && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi

# ---------------------------------------------------------------- build
build=$root/build-bench
say "building (Release) into $build"
mkdir -p "$build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSTOA_TESTS=OFF -DSTOA_WERROR=OFF >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log" >&2; die "cmake failed"; }
cmake --build "$build" -j"$(nproc)" >/dev/null || die "build failed (cmake --build $build)"
STOA=$build/stoa
BENCH=${STOA_BENCH_BIN:-$build/contrib/bench/stoa-bench}   # the override is for testing this script
CEILING=${STOA_CEILING_BIN:-$build/contrib/bench/ceiling}
[ -x "$STOA" ] || die "no $STOA after the build"
[ -x "$BENCH" ] || die "no $BENCH after the build (contrib/bench/stoa-bench.c and its CMake target)"
if want_target ceiling && [ ! -x "$CEILING" ]; then die "no $CEILING after the build (contrib/bench/ceiling.c and its CMake target)"; fi

# ---------------------------------------------------------------- limits, CPUs
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
[ "$nofile" = unlimited ] && nofile=1048576
ncpu=$(nproc)
if [ "$ncpu" -ge 2 ]; then
  server_cpu=0
  gen_cpu=1
  pin_server=(taskset -c 0)
  pin_gen=(taskset -c 1)
else
  say "one CPU only: server and generator share it (no pinning)"
  server_cpu=-
  gen_cpu=-
  pin_server=()
  pin_gen=()
fi
# Idle connections per transport: the generator holds one descriptor per
# client connection in one process, the server one per connection too.
if [ -z "$idle_conns" ]; then
  idle_conns=$(( (nofile - 1000) / 1000 * 1000 ))
  [ "$idle_conns" -le 19000 ] || idle_conns=19000
  [ "$idle_conns" -ge 100 ] || idle_conns=100
fi
# The biggest fan-out: 10,000 subscribers when the limit allows it.
big_subs=10000
[ $((big_subs + 500)) -le "$nofile" ] || big_subs=$(( (nofile - 500) / 1000 * 1000 ))

# ---------------------------------------------------------------- results file
mkdir -p "$out/results"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results=$out/results/$stamp.jsonl
report=$out/results/$stamp.md
logs=$out/results/$stamp.logs   # per run: generator stderr and output, server logs
mkdir -p "$logs"
work=$(mktemp -d /tmp/stoa-bench-run.XXXXXX)
chmod 755 "$work"   # PostgreSQL runs as its own user below

json_str() {   # a JSON string of $1
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\t'/ }
  s=${s//$'\n'/ }
  s=${s//$'\r'/}
  printf '"%s"' "$s"
}
cpu_model=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)
[ -n "$cpu_model" ] || cpu_model=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)
mem_kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)
stoa_version=$("$STOA" version 2>&1 | head -n 1)
nginx_version=""
command -v nginx >/dev/null 2>&1 && nginx_version=$(nginx -v 2>&1 | head -n 1)
nchan_version=$(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null || true)
node_version=$(node -v 2>/dev/null || true)
ws_version=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' tests/node_modules/ws/package.json 2>/dev/null | head -n 1 || true)
git_commit=$(git rev-parse --short HEAD 2>/dev/null || true)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || git_commit="$git_commit+dirty"
{
  printf '{"type":"machine","date":%s,"nproc":%s,"cpu_model":%s,"kernel":%s,"mem_total_kb":%s,' \
    "$(json_str "$(date -u +%FT%TZ)")" "$ncpu" "$(json_str "$cpu_model")" "$(json_str "$(uname -srvm)")" "${mem_kb:-0}"
  printf '"nofile":%s,"server_cpu":%s,"gen_cpu":%s,"duration_s":%s,"warmup_s":%s,"quick":%s,' \
    "$nofile" "$(json_str "$server_cpu")" "$(json_str "$gen_cpu")" "$duration" "$warmup" "$([ "$quick" = 1 ] && echo true || echo false)"
  printf '"stoa_version":%s,"git_commit":%s,"nginx_version":%s,"nchan_version":%s,"node_version":%s,"ws_version":%s,' \
    "$(json_str "$stoa_version")" "$(json_str "$git_commit")" "$(json_str "$nginx_version")" "$(json_str "$nchan_version")" \
    "$(json_str "$node_version")" "$(json_str "$ws_version")"
  printf '"tcp_port_range":%s,"tcp_tw_reuse":%s}\n' \
    "$(json_str "$(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range)")" "$(json_str "$(cat /proc/sys/net/ipv4/tcp_tw_reuse)")"
} >"$results"
say "results: $results"

# ---------------------------------------------------------------- servers
api_key=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')   # 36 hex characters
# Server ports come from below the ephemeral range, where the generator's
# own (up to 20,000) connections and their TIME_WAIT leftovers never are.
eph_lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "$eph_lo" -gt 12000 ] 2>/dev/null || eph_lo=32768
port_base=$((10000 + RANDOM % (eph_lo - 12000)))
SERVER_MAIN=""     # the pid to stop
SERVER_PID=""      # the pids to measure, comma-separated (nginx: master and worker)
SERVER_PORT=""
SERVER_DIR=""
EXTRA_PIDS=()      # the second stoa of the cross-instance runs
PG_DIR=""
PG_BIN=""

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {   # sets PORT to a port nothing listens on (a new one each time)
  while :; do
    port_base=$((port_base + 1))
    [ "$port_base" -lt "$eph_lo" ] || port_base=10001
    port_open "$port_base" || { PORT=$port_base; return; }
  done
}
wait_port() {   # port pid: until the port accepts, while pid lives (10 s)
  local i
  for i in $(seq 1 200); do
    port_open "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
stop_pid() {   # pid: SIGTERM, then SIGKILL after 20 s
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "pid $pid did not stop within 20 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

start_server() {   # target
  local t=$1 conf
  free_port
  SERVER_PORT=$PORT
  SERVER_DIR=$(mktemp -d "$work/$t.XXXXXX")
  case "$t" in
    stoa)
      # --www-dir "" is one argument: no word splitting of stoa_flags here.
      # One WebSocket thread on its one core, like the peers; the spread
      # run gives it every core.
      local ws_threads=1 pin=("${pin_server[@]}")
      if [ "$SPREAD" = 1 ]; then ws_threads=$ncpu; pin=(); fi
      "${pin[@]}" "$STOA" serve --ws-threads "$ws_threads" --listen "127.0.0.1:$SERVER_PORT" --data-dir "$SERVER_DIR" --www-dir "" \
        --api-keys "$api_key" --ephemeral-per-min 6000000 --ephemeral-burst 100000 \
        --presence-rate 1000 --presence-burst 1000 --max-connections 30000 --max-peers-per-room 20000 \
        --session-buffer-msgs 1024 --max-pending-handshakes 16384 --log-level warn ${STOA_DB_URL:+--database "$STOA_DB_URL"} \
        </dev/null >"$SERVER_DIR/stdout.log" 2>"$SERVER_DIR/stderr.log" &
      SERVER_MAIN=$!
      SERVER_PID=$SERVER_MAIN
      ;;
    nchan)
      mkdir -p "$SERVER_DIR/tmp"
      local module=""
      for m in /usr/share/nginx/modules/ngx_nchan_module.so /usr/lib/nginx/modules/ngx_nchan_module.so; do
        [ -e "$m" ] && { module=$m; break; }
      done
      [ -n "$module" ] || die "ngx_nchan_module.so not found (apt-get install libnginx-mod-nchan)"
      conf=$SERVER_DIR/nginx.conf
      sed -e "s|@PREFIX@|$SERVER_DIR|g" -e "s|@PORT@|$SERVER_PORT|g" -e "s|@NCHAN_MODULE@|$module|g" \
        -e "s|@USER@|$([ "$(id -u)" -eq 0 ] && echo 'user root;')|" \
        -e "s|@NOFILE@|$nofile|g" -e "s|@CONNECTIONS@|$((nofile * 2))|g" \
        "$here/nchan.conf.in" >"$conf"
      "${pin_server[@]}" nginx -p "$SERVER_DIR" -c "$conf" -e "$SERVER_DIR/error.log" \
        </dev/null >"$SERVER_DIR/stdout.log" 2>"$SERVER_DIR/stderr.log" &
      SERVER_MAIN=$!
      SERVER_PID=""
      ;;
    nodews)
      "${pin_server[@]}" node "$here/nodews-server.mjs" --port "$SERVER_PORT" \
        </dev/null >"$SERVER_DIR/stdout.log" 2>"$SERVER_DIR/stderr.log" &
      SERVER_MAIN=$!
      SERVER_PID=$SERVER_MAIN
      ;;
    ceiling)
      "${pin_server[@]}" "$CEILING" --listen "127.0.0.1:$SERVER_PORT" \
        </dev/null >"$SERVER_DIR/stdout.log" 2>"$SERVER_DIR/stderr.log" &
      SERVER_MAIN=$!
      SERVER_PID=$SERVER_MAIN
      ;;
  esac
  if ! wait_port "$SERVER_PORT" "$SERVER_MAIN"; then
    cat "$SERVER_DIR"/*.log >&2 2>/dev/null || true
    stop_pid "$SERVER_MAIN"
    die "$t did not start on port $SERVER_PORT"
  fi
  if [ "$t" = nchan ]; then
    # the one worker does the work; the master is measured too (it idles)
    local i worker=""
    for i in $(seq 1 50); do
      worker=$(pgrep -P "$SERVER_MAIN" | head -n 1 || true)
      [ -z "$worker" ] || break
      sleep 0.1
    done
    [ -n "$worker" ] || die "no nginx worker under pid $SERVER_MAIN"
    SERVER_PID=$SERVER_MAIN,$worker
  fi
}

stop_server() {
  local p
  for p in "${EXTRA_PIDS[@]}"; do stop_pid "$p"; done
  EXTRA_PIDS=()
  [ -z "$SERVER_MAIN" ] || stop_pid "$SERVER_MAIN"
  SERVER_MAIN=""
  SERVER_PID=""
}

pg_stop() {
  [ -n "$PG_DIR" ] || return 0
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
  PG_DIR=""
}

cleanup() {
  stop_server
  pg_stop
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- runs
failures=0
SPREAD=0   # 1: the server on every core (ws_threads = CPUs), nothing pinned
quick_delivered=""

# gen TARGET RUN-NAME ARGS...: one generator run against the running server;
# appends its JSON line (with "type" and "run" added) to the results.
gen() {
  local t=$1 name=$2 raw json rc=0 log
  shift 2
  # Fan-out subscribers of nchan and Node ws are not announced to each
  # other; Stoa's equivalent is an observer (join with "observe": true).
  # Without it every join is announced to the whole room (N^2 messages).
  if [ "$t" = stoa ] && [[ " $* " == *" --scenario fanout "* ]]; then
    set -- "$@" --observe
  fi
  log=$logs/$t-$name
  say "$t $name: $*"
  # CPU busy on the whole machine, the server's and the generator's (time):
  # what is left is "other" load that disturbed the run (should be ~0)
  local busy0 srv0 busy1 srv1 TIMEFORMAT='%R %U %S'
  busy0=$(cpu_busy)
  srv0=$(pids_cpu "$SERVER_PID")
  local pin=("${pin_gen[@]}")
  [ "$SPREAD" = 1 ] && pin=()
  raw=$( { time timeout -k 10 $((duration + warmup + 300)) "${pin[@]}" "$BENCH" --target "$t" --host 127.0.0.1 \
    --port "$SERVER_PORT" --server-pid "$SERVER_PID" --api-key "$api_key" \
    --duration "$duration" --warmup "$warmup" --json "$@" 2>"$log.gen.log"; } 2>"$log.time") || rc=$?
  busy1=$(cpu_busy)
  srv1=$(pids_cpu "$SERVER_PID")
  local other
  other=$(awk -v b0="$busy0" -v b1="$busy1" -v s0="$srv0" -v s1="$srv1" -v hz="$clk_tck" -v n="$ncpu" \
    '{ wall = $1; gen = $2 + $3; o = (b1 - b0 - (s1 - s0)) / hz - gen; if (o < 0) o = 0;
       pct = 0; if (wall > 0) pct = 100 * o / (wall * n);
       printf "\"wall_s\":%.1f,\"other_cpu_s\":%.2f,\"other_cpu_pct\":%.1f", wall, o, pct }' \
    "$log.time" 2>/dev/null || true)
  # one JSON object, compacted onto one line (whatever its layout)
  json=$(printf '%s' "$raw" | node -e '
    let s = ""; process.stdin.on("data", (d) => { s += d; }).on("end", () => {
      const i = s.indexOf("{"); if (i < 0) process.exit(1);
      try { process.stdout.write(JSON.stringify(JSON.parse(s.slice(i)))); } catch { process.exit(1); }
    });' 2>/dev/null) || json=""
  [ -z "$raw" ] || printf '%s\n' "$raw" >"$log.gen.json"
  if [ -z "$json" ] || [ "${json:0:1}" != "{" ]; then
    say "$t $name: the generator failed (exit $rc):"
    tail -n 20 "$log.gen.log" >&2 || true
    printf '{"type":"skipped","target":%s,"run":%s,"reason":%s}\n' "$(json_str "$t")" "$(json_str "$name")" \
      "$(json_str "generator exit $rc: $(tail -n 1 "$log.gen.log" 2>/dev/null)")" >>"$results"
    failures=$((failures + 1))
    return 0
  fi
  [ "$rc" -eq 0 ] || say "$t $name: generator exit $rc (result kept)"
  printf '{"type":"result","run":%s,%s%s\n' "$(json_str "$name")" "${other:+$other,}" "${json#\{}" >>"$results"
  printf '   %s\n' "$json" >&2
  quick_delivered=$(printf '%s' "$json" | sed -n 's/.*"delivered": *\([0-9][0-9]*\).*/\1/p')
}

clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_busy() {   # busy jiffies of all CPUs in processes (user nice system; not irq, softirq)
  awk '/^cpu /{ print $2 + $3 + $4; exit }' /proc/stat
}
pids_cpu() {   # jiffies of the comma-separated pids (utime + stime)
  local p s=0 v
  for p in ${1//,/ }; do
    v=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
    s=$((s + ${v:-0}))
  done
  echo "$s"
}

skip() {   # target run reason
  say "$1 $2: skipped: $3"
  printf '{"type":"skipped","target":%s,"run":%s,"reason":%s}\n' "$(json_str "$1")" "$(json_str "$2")" "$(json_str "$3")" >>"$results"
}

# one TARGET RUN-NAME ARGS...: a fresh server, one run, stopped
# one TARGET RUN-NAME ARGS...: plan a run (a fresh server, one generator
# run). Runs are made after planning, scenario by scenario: each
# scenario's targets back to back (Stoa, nchan, Node ws, the ceiling), so
# that their ratios come from minutes apart, not from either end of the
# whole run on a machine whose speed drifts.
plan_names=()          # run names, in the order first planned
declare -A plan_runs   # run name -> its runs, one per line (SPREAD and the arguments, quoted)
one() {
  local name=$2
  want_run "$name" || return 0
  if [ -z "${plan_runs[$name]+x}" ]; then
    plan_names+=("$name")
    plan_runs[$name]=""
  fi
  plan_runs[$name]+="$(printf '%q ' "$SPREAD" "$@")"$'\n'
}
run_one() {   # SPREAD TARGET RUN-NAME ARGS...
  SPREAD=$1
  shift
  start_server "$1"
  gen "$@"
  stop_server
  keep_server_logs "$1-$2"
  SPREAD=0
}
run_planned() {
  local name line
  for name in "${plan_names[@]}"; do
    while IFS= read -r line; do
      if [ -n "$line" ]; then eval "run_one $line"; fi
    done <<<"${plan_runs[$name]}"
  done
}
keep_server_logs() {   # run-name: the last server's logs into the logs directory
  local f
  for f in "$SERVER_DIR"/*.log; do
    [ -s "$f" ] && cp "$f" "$logs/$1.server-$(basename "$f")"
  done
  return 0
}

transports_of() {   # the subscriber transports a target speaks
  case "$1" in stoa|nchan) echo ws sse longpoll ;; *) echo ws ;; esac
}
http_publish() {   # targets with an HTTP publish endpoint
  case "$1" in stoa|nchan) return 0 ;; *) return 1 ;; esac
}

# start_pair URL: two stoa instances on the database URL. A (the
# subscribers' side) becomes the server the run measures and stops; B (the
# publishers' side, port PAIR_B_PORT) is stopped with it. Both are measured
# (CPU and memory summed).
PAIR_B_PORT=""
start_pair() {
  local a_port a_main a_dir
  STOA_DB_URL=$1 start_server stoa
  a_port=$SERVER_PORT a_main=$SERVER_MAIN a_dir=$SERVER_DIR
  STOA_DB_URL=$1 start_server stoa
  PAIR_B_PORT=$SERVER_PORT
  EXTRA_PIDS=("$SERVER_MAIN")
  SERVER_PID=$a_main,$SERVER_MAIN SERVER_MAIN=$a_main SERVER_PORT=$a_port SERVER_DIR=$a_dir
  sleep 2   # the instances hear each other on the bus
}

cross_instance() {   # two stoa instances on one PostgreSQL
  local name=cross-1x1000-ws
  want_cross || return 0
  if ! "$BENCH" --help 2>&1 | grep -q -- '--pub-port'; then
    skip stoa "$name" "stoa-bench has no option for a second port (publishers on another instance)"
    return 0
  fi
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    skip stoa "$name" "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin"
    return 0
  fi
  PG_DIR=$(mktemp -d /tmp/stoa-bench-pg.XXXXXX)
  chown postgres: "$PG_DIR"
  free_port
  local pg_port=$PORT
  runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
    >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 30 \
    -o "-p $pg_port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null || { cat "$PG_DIR/server.log" >&2; die "PostgreSQL did not start"; }
  "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -c 'CREATE DATABASE stoa' >/dev/null
  local url="postgresql://postgres@127.0.0.1:$pg_port/stoa"
  "$STOA" migrate --database "$url" >/dev/null
  if want_run "$name"; then
    # Instance B (publishers) shares CPU 0 with A.
    start_pair "$url"
    gen stoa "$name" --scenario fanout --transport ws --rooms 1 --subs 1000 --pubs 1 --rate 100 --pub-port "$PAIR_B_PORT"
    stop_server
    keep_server_logs "stoa-$name"
  fi
  # Bus throughput: 200 rooms, one publisher each on B, one observer each
  # on A, at 100,000 to 300,000 messages/s in all. Two instances and
  # PostgreSQL share the machine's cores here (nothing pinned, each
  # instance with ws_threads = CPUs); the generator shares them too.
  local total
  for total in $cross_rates; do
    local bname="cross-bus-200x1-$((total / 1000))k"
    want_run "$bname" || continue
    SPREAD=1
    start_pair "$url"
    gen stoa "$bname" --scenario fanout --transport ws --rooms 200 --subs 1 --pubs 1 --rate $((total / 200)) \
      --pub-port "$PAIR_B_PORT"
    stop_server
    keep_server_logs "stoa-$bname"
    SPREAD=0
  done
  pg_stop
}

run_target() {
  local t=$1 tr r
  say "target $t: its runs planned"
  if [ "$quick" = 1 ]; then
    one "$t" quick-1x50-ws --scenario fanout --transport ws --rooms 1 --subs 50 --pubs 1 --rate 50
    return 0
  fi
  for tr in $(transports_of "$t"); do
    one "$t" "fanout-1x1000-$tr" --scenario fanout --transport "$tr" --rooms 1 --subs 1000 --pubs 1 --rate 100
  done
  if http_publish "$t"; then
    one "$t" fanout-1x1000-ws-httppub --scenario fanout --transport ws --publisher http --rooms 1 --subs 1000 --pubs 1 --rate 100
  fi
  one "$t" fanout-100x10-ws --scenario fanout --transport ws --rooms 100 --subs 10 --pubs 1 --rate 10
  one "$t" "fanout-1x$big_subs-ws" --scenario fanout --transport ws --rooms 1 --subs "$big_subs" --pubs 1 --rate 20
  if [ "$t" = stoa ] && [ "$ncpu" -ge 2 ]; then
    # One room's fan-out written by every core at once (ws_threads =
    # CPUs); the generator shares those cores, unpinned.
    SPREAD=1
    one "$t" "fanout-1x$big_subs-ws-spread" --scenario fanout --transport ws --rooms 1 --subs "$big_subs" --pubs 1 --rate 20
    SPREAD=0
  fi
  for r in 200 400 800; do   # 100 is fanout-1x1000-ws
    one "$t" "ramp-1x1000-$r" --scenario fanout --transport ws --rooms 1 --subs 1000 --pubs 1 --rate "$r"
  done
  if [ "$t" = stoa ]; then
    # --rate is per peer here: 200 peers at 60 updates/s ask for 2.4 million
    # deliveries/s (a capacity test); 50 at 20/s (Stoa's default cap per
    # peer) is a busy document
    one "$t" presence-1x200-60 --scenario presence --transport ws --rooms 1 --subs 200 --rate 60
    one "$t" presence-1x50-20 --scenario presence --transport ws --rooms 1 --subs 50 --rate 20
  fi
  # idle: each connection alone in a room of its own (as conn_memory.mjs),
  # so that Stoa's presence (everyone hears of every join) costs nothing here
  for tr in $(transports_of "$t"); do
    one "$t" "idle-$tr" --scenario idle --transport "$tr" --rooms "$idle_conns" --subs 1
  done
  if [ "$t" = stoa ]; then cross_instance; fi
}

for t in "${targets[@]}"; do
  run_target "$t"   # plans its runs (the cross-instance ones, Stoa's alone, run at once)
done
run_planned

# ---------------------------------------------------------------- report
node "$here/report.mjs" "$results" >"$report"
echo
cat "$report"
echo
echo "results: $results"
echo "table:   $report"
echo "logs:    $logs"
if [ "$quick" = 1 ]; then
  [ -n "$quick_delivered" ] && [ "$quick_delivered" -gt 0 ] || die "quick: nothing was delivered"
fi
[ "$failures" -eq 0 ] || say "$failures run(s) failed (see the skipped lines)"
