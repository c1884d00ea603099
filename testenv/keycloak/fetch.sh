#!/usr/bin/env bash
# Fetch Keycloak into the cache (outside the repository) and prepare it.
#
#   fetch.sh
#
# - Fast path: if $KEYCLOAK_CACHE_DIR/keycloak-26.7.3 is complete (marker
#   .dscc-complete matches), prints its path and exits; no mvn, no java.
# - Otherwise (missing or broken cache), under a flock on the cache root:
#   1. resolves org.keycloak:keycloak-quarkus-dist:26.7.3:zip with Maven
#      (`mvn dependency:copy`, the same resolution as `dependency:get
#      -Dtransitive=false`, but it also copies the zip to a directory we name,
#      so the path of the local repository does not matter); the zip stays in
#      ~/.m2, so later rebuilds of the cache are offline. KEYCLOAK_DIST_ZIP=FILE
#      skips Maven and uses that zip.
#   2. unzips it into a temp dir inside the cache root,
#   3. runs Keycloak's build step for start-dev once (re-augmentation with the
#      build options in lib.sh) so that start-dev never rewrites the shared
#      install at run time,
#   4. starts it once and runs configure.sh against it to create a database
#      template (schema, master realm, bootstrap admin, realm dscc and its
#      clients) in .dscc-template/, which start.sh copies into each new DIR
#      (saves 35-50 s per start),
#   5. writes the marker .dscc-complete and renames the temp dir into place.
#   A half-unzipped or half-built cache is never used.
#
# Last stdout line: the install dir. Logs: stderr.
# Environment: KEYCLOAK_CACHE_DIR (default ~/.cache/dscc-token-operator/keycloak),
# KEYCLOAK_DIST_ZIP, KEYCLOAK_JAVA_HOME / JAVA_HOME (Java 21+ for step 3),
# KEYCLOAK_JVM_OPTS (see lib.sh),
# KEYCLOAK_BUILD_TIMEOUT (seconds, default 900).
set -euo pipefail

SCRIPT_NAME=fetch.sh
SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$SRC_DIR/lib.sh"

if [[ $# -ne 0 ]]; then
  echo "usage: $0   (no arguments; see the header for the environment)" >&2
  exit 64
fi

install_ok() {
  local d="$1"
  [[ -f "$d/.dscc-complete" ]] &&
    [[ "$(cat "$d/.dscc-complete")" == "$(keycloak_marker_content)" ]] &&
    [[ -x "$d/bin/kc.sh" && -f "$d/lib/quarkus-run.jar" && -s "$d/lib/quarkus/generated-bytecode.jar" ]] &&
    [[ -s "$d/.dscc-template/keycloakdb.mv.db" && -s "$d/.dscc-template/admin-password" ]]
}

if install_ok "$KEYCLOAK_INSTALL_DIR"; then
  printf '%s\n' "$KEYCLOAK_INSTALL_DIR"
  exit 0
fi

# ------------------------------------------------------------ requirements --
missing=()
if [[ -z "${KEYCLOAK_DIST_ZIP:-}" ]] && ! command -v mvn >/dev/null 2>&1; then
  missing+=("mvn (Apache Maven 3.x: 'apt-get install maven'; or set KEYCLOAK_DIST_ZIP to a downloaded keycloak-$KEYCLOAK_VERSION.zip)")
fi
command -v unzip >/dev/null 2>&1 || missing+=("unzip ('apt-get install unzip')")
command -v flock >/dev/null 2>&1 || missing+=("flock (util-linux)")
command -v setsid >/dev/null 2>&1 || missing+=("setsid (util-linux)")
command -v openssl >/dev/null 2>&1 || missing+=("openssl ('apt-get install openssl')")
command -v curl >/dev/null 2>&1 || missing+=("curl ('apt-get install curl')")
if ((${#missing[@]})); then
  for m in "${missing[@]}"; do log "missing: $m"; done
  exit 69
fi
JAVA_HOME_KC="$(find_java_home)" || exit 69

mkdir -p "$KEYCLOAK_CACHE_ROOT"
exec 9>"$KEYCLOAK_CACHE_ROOT/.lock"
if ! flock -n 9; then
  log "another fetch is preparing $KEYCLOAK_INSTALL_DIR; waiting for it"
  flock -w "${KEYCLOAK_BUILD_TIMEOUT:-900}" 9 || die "timed out waiting for $KEYCLOAK_CACHE_ROOT/.lock"
fi
if install_ok "$KEYCLOAK_INSTALL_DIR"; then # done by the fetch we waited for
  exec 9>&-
  printf '%s\n' "$KEYCLOAK_INSTALL_DIR"
  exit 0
fi

if [[ -e "$KEYCLOAK_INSTALL_DIR" ]]; then
  log "removing incomplete or outdated $KEYCLOAK_INSTALL_DIR"
  rm -rf "$KEYCLOAK_INSTALL_DIR"
fi
# leftovers of interrupted fetches (we hold the lock, so none is in progress)
rm -rf "$KEYCLOAK_CACHE_ROOT"/.tmp.*

TMP="$(mktemp -d "$KEYCLOAK_CACHE_ROOT/.tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# ------------------------------------------------------------------ fetch --
t0="$(now_ms)"
if [[ -n "${KEYCLOAK_DIST_ZIP:-}" ]]; then
  [[ -s "$KEYCLOAK_DIST_ZIP" ]] || die "KEYCLOAK_DIST_ZIP=$KEYCLOAK_DIST_ZIP does not exist"
  zip="$KEYCLOAK_DIST_ZIP"
else
  log "resolving $KEYCLOAK_ARTIFACT with Maven (169 MiB the first time)"
  # (-q still prints bare ANSI resets; drop them)
  mvn -B -q -Dstyle.color=never dependency:copy -Dartifact="$KEYCLOAK_ARTIFACT" \
    -Dtransitive=false -Dmdep.overWriteReleases=true -DoutputDirectory="$TMP/zip" 2>&1 |
    sed -e 's/\x1b\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' >&2
  if [[ "${PIPESTATUS[0]}" != 0 ]]; then
    die "mvn could not resolve $KEYCLOAK_ARTIFACT (is Maven Central or your mirror reachable? try: mvn dependency:get -Dartifact=$KEYCLOAK_ARTIFACT -Dtransitive=false)"
  fi
  zip="$TMP/zip/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip"
  [[ -s "$zip" ]] || die "mvn succeeded but $zip is missing"
fi
log "fetched in $(secs_since "$t0") s; unzipping"

t1="$(now_ms)"
unzip -q "$zip" -d "$TMP/unzip" || die "unzip of $zip failed (corrupt download? delete it from ~/.m2 and retry)"
rm -rf "$TMP/zip"
staged="$TMP/unzip/keycloak-$KEYCLOAK_VERSION"
[[ -x "$staged/bin/kc.sh" ]] || die "$zip does not contain keycloak-$KEYCLOAK_VERSION/bin/kc.sh"
log "unzipped in $(secs_since "$t1") s"

# ------------------------------------------------------------------ build --
# `kc.sh build` refuses the dev profile, and start-dev re-augments on first
# use. kc.sh runs "$JAVA" twice: the first JVM re-augments and exits with
# status 10, then kc.sh execs "$JAVA" again with -Dkc.config.built=true to
# start the server. A JAVA wrapper that ends that second exec gives a pure
# "build for start-dev" step. Only build options matter here (lib.sh).
t2="$(now_ms)"
log "building the start-dev image (Quarkus re-augmentation; about 1 min on 2 busy cores)"
cat >"$TMP/java-build-only" <<'EOF'
#!/bin/sh
for a in "$@"; do
  if [ "$a" = "-Dkc.config.built=true" ]; then exit 0; fi
done
exec "$KC_REAL_JAVA" "$@"
EOF
chmod +x "$TMP/java-build-only"
build_log="$TMP/build.log"
if ! KC_REAL_JAVA="$JAVA_HOME_KC/bin/java" JAVA="$TMP/java-build-only" JAVA_HOME="$JAVA_HOME_KC" \
  JAVA_OPTS_APPEND="$KEYCLOAK_JVM_OPTS" \
  timeout "${KEYCLOAK_BUILD_TIMEOUT:-900}" "$staged/bin/kc.sh" start-dev "${KEYCLOAK_BUILD_OPTS[@]}" \
  </dev/null >"$build_log" 2>&1; then
  tail -n 30 "$build_log" >&2 || true
  die "the Keycloak build step failed (log above)"
fi
if ! grep -q 'augmentation completed' "$build_log"; then
  tail -n 30 "$build_log" >&2 || true
  die "the Keycloak build step did not re-augment (log above)"
fi
unzip -p "$staged/lib/quarkus/generated-bytecode.jar" META-INF/keycloak-persisted.properties 2>/dev/null |
  grep -q '^kc.profile=dev' || die "the build did not persist the dev profile"
# The build step may create data/ (nothing in it is needed).
rm -rf "$staged/data"
log "built in $(secs_since "$t2") s"

# ------------------------------------------------------------------- seed --
# A fresh database costs every start about 25-40 s (Liquibase creates the
# schema, then the master realm and the bootstrap admin are created), and
# creating realm dscc another ~9 s. Do both once here: start this install,
# run configure.sh against it, stop it, and keep the H2 file as a template
# that start.sh copies into each new DIR (configure.sh then only updates).
t3="$(now_ms)"
log "creating the database template (one full start of Keycloak plus configure.sh; about 1 min)"
seed="$TMP/seed"
mkdir -p "$seed/data"
make_certs "$seed"
(umask 077 && openssl rand -hex 16 >"$seed/admin-password")
seed_log="$seed/keycloak.log"
(
  # shellcheck disable=SC2016 # $$ and "$@" belong to the inner shell
  KC_BOOTSTRAP_ADMIN_USERNAME=admin KC_BOOTSTRAP_ADMIN_PASSWORD="$(cat "$seed/admin-password")" \
    JAVA_HOME="$JAVA_HOME_KC" JAVA_OPTS_APPEND="$KEYCLOAK_JVM_OPTS" \
    exec setsid bash -c 'echo $$ >"$0" && exec "$@"' "$seed/keycloak.pid" "$staged/bin/kc.sh" start-dev \
    "${KEYCLOAK_BUILD_OPTS[@]}" --http-host=127.0.0.1 --http-port=0 --https-port=0 \
    --https-certificate-file="$seed/server.crt" --https-certificate-key-file="$seed/server.key" \
    "-Dkc.db-url-path=$seed" "-Dquarkus.transaction-manager.object-store.directory=$seed/data/transaction-logs" \
    </dev/null >"$seed_log" 2>&1
) &
for _ in $(seq 1 100); do [[ -s "$seed/keycloak.pid" ]] && break; sleep 0.05; done
seed_pid="$(cat "$seed/keycloak.pid")"
# shellcheck disable=SC2064 # expand now: the pid is known
trap "stop_group '$seed_pid' 20 >/dev/null; rm -rf '$TMP'" EXIT
deadline=$(( $(now_ms) + ${KEYCLOAK_BUILD_TIMEOUT:-900} * 1000 ))
until grep -q 'Listening on:' "$seed_log"; do
  if ! group_alive "$seed_pid"; then
    tail -n 30 "$seed_log" >&2 || true
    die "Keycloak exited while creating the database template (log above)"
  fi
  (( $(now_ms) < deadline )) || { tail -n 30 "$seed_log" >&2; die "timed out creating the database template"; }
  sleep 0.5
done
! grep -q 'Updating the configuration' "$seed_log" || die "start-dev re-augmented after the build step; build options do not match"
grep -q 'Created temporary admin user' "$seed_log" || die "the template has no bootstrap admin (see $seed_log)"
[[ "$(grep -m 1 -o 'Listening on: .*' "$seed_log")" =~ https://127\.0\.0\.1:([0-9]+) ]] ||
  die "no HTTPS port in $seed_log"
printf 'https://127.0.0.1:%s\n' "${BASH_REMATCH[1]}" >"$seed/base-url"
until curl -fsS -o /dev/null --max-time 10 --cacert "$seed/ca.crt" "$(cat "$seed/base-url")/realms/master"; do
  (( $(now_ms) < deadline )) || die "the template server does not answer"
  sleep 0.2
done
"$SRC_DIR/configure.sh" "$seed" >/dev/null || die "configure.sh failed against the template server"
[[ "$(stop_group "$seed_pid" 30)" == TERM ]] || die "Keycloak did not stop cleanly after SIGTERM while creating the template"
[[ -s "$seed/data/h2/keycloakdb.mv.db" ]] || die "no H2 database was written to $seed/data/h2"
mkdir -p "$staged/.dscc-template"
cp "$seed/data/h2/keycloakdb.mv.db" "$staged/.dscc-template/keycloakdb.mv.db"
(umask 077 && cp "$seed/admin-password" "$staged/.dscc-template/admin-password")
trap 'rm -rf "$TMP"' EXIT
[[ ! -e "$staged/data" ]] || die "start-dev wrote into the install's data/ directory; the install would not be shareable"
log "database template created in $(secs_since "$t3") s"

keycloak_marker_content >"$staged/.dscc-complete"
mv -T "$staged" "$KEYCLOAK_INSTALL_DIR"
rm -rf "$TMP"
trap - EXIT
exec 9>&-
log "ready: $KEYCLOAK_INSTALL_DIR (total $(secs_since "$t0") s)"
printf '%s\n' "$KEYCLOAK_INSTALL_DIR"
