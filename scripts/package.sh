#!/usr/bin/env bash
# Builds Tern's release artifacts and proves the cross-compiled ones run.
#
#   scripts/package.sh [all]         release builds for the host, aarch64 and armv7
#                                    (Raspberry Pi 3/4/5 64-bit and 32-bit OS), a
#                                    smoke test of each binary, and a .deb of each
#   scripts/package.sh smoke-aarch64 only the aarch64 build (profile cross-smoke,
#                                    see Cargo.toml) and its smoke test: the CI step
#
# Smoke test: the binary runs (under qemu-user for the cross targets) as
# `tern --listen 127.0.0.1:0 --data-dir <tmp>`; the port the kernel gave it is
# read from its "listening on" log line (no race for a free port);
# `mosquitto_sub -C 1` and `mosquitto_pub -q 1` (host binaries) make a QoS 1
# round trip through it and the payload is checked; then SIGTERM, and the
# broker must exit 0. Any failure exits non-zero: nothing is skipped.
#
# Installs when missing (as root, or through sudo): the apt packages
# gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, gcc-arm-linux-gnueabihf,
# libc6-dev-armhf-cross (the linkers and C compilers for ring's C and assembly),
# qemu-user-static and mosquitto-clients; the rustup targets
# aarch64-unknown-linux-gnu and armv7-unknown-linux-gnueabihf; cargo-deb
# (`cargo install cargo-deb --locked`, `all` only). Only what the mode needs.
# The cross linkers are chosen with CARGO_TARGET_<TRIPLE>_LINKER, CC_<triple>
# and AR_<triple> in this script's environment, so nobody else's builds change.
#
# Outputs, under target/package/ ($CARGO_TARGET_DIR/package/ when that is set):
# tern-<version>-<triple> (the stripped binaries) and tern_<version>-1_<arch>.deb
# (the host's architecture, arm64, armhf); the cargo builds themselves stay in
# target/<triple>/<profile>/.
#
# TERN_CARGO_LOCK=FILE runs every cargo command under `flock FILE`, for
# machines where several people build at once.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-all}
# Where cargo puts its builds (CARGO_TARGET_DIR moves them; a target-dir in a
# cargo config file is not supported here).
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=$TARGET_DIR/package
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
HOST=$(rustc -vV | sed -n 's/^host: //p')
# The newest glibc symbol version a packaged binary may need: the .deb's
# Depends (Cargo.toml) promises libc6 (>= 2.34), and Raspberry Pi OS bookworm
# has 2.36.
MAX_GLIBC=2.34

declare -A GNU=([aarch64-unknown-linux-gnu]=aarch64-linux-gnu [armv7-unknown-linux-gnueabihf]=arm-linux-gnueabihf)
declare -A DEBARCH=([aarch64-unknown-linux-gnu]=arm64 [armv7-unknown-linux-gnueabihf]=armhf [x86_64-unknown-linux-gnu]=amd64)
declare -A QEMU=([aarch64-unknown-linux-gnu]=qemu-aarch64-static [armv7-unknown-linux-gnueabihf]=qemu-arm-static)
# readelf's "Machine:" for each target: a cross build that silently produced a
# host binary must not pass.
declare -A MACHINE=([aarch64-unknown-linux-gnu]=AArch64 [armv7-unknown-linux-gnueabihf]=ARM [x86_64-unknown-linux-gnu]=X86-64)

say() { echo "== package.sh: $*"; }
die() {
  echo "package.sh: $*" >&2
  exit 1
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

run_cargo() {
  if [ -n "${TERN_CARGO_LOCK:-}" ]; then flock "$TERN_CARGO_LOCK" cargo "$@"; else cargo "$@"; fi
}

apt_install() {
  [ $# -gt 0 ] || return 0
  say "installing $*"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# The apt packages, rustup target and environment that building and running
# for $1 need.
setup_target() {
  local triple=$1 need=()
  command -v mosquitto_pub >/dev/null 2>&1 && command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
  if [ "$triple" != "$HOST" ]; then
    local gnu=${GNU[$triple]:?no cross toolchain known for $triple}
    local libc=libc6-dev-${DEBARCH[$triple]}-cross
    command -v "$gnu-gcc" >/dev/null 2>&1 || need+=("gcc-$gnu")
    dpkg -s "$libc" >/dev/null 2>&1 || need+=("$libc")
    command -v "${QEMU[$triple]}" >/dev/null 2>&1 || need+=(qemu-user-static)
  fi
  apt_install "${need[@]}"
  [ "$triple" != "$HOST" ] || return 0

  if ! rustup target list --installed | grep -qx "$triple"; then
    say "rustup target add $triple"
    # A download that stalls must end the run with an error, not hang CI.
    timeout 900 rustup target add "$triple" || die "rustup target add $triple failed or timed out"
  fi
  local upper=${triple^^} lower=${triple//-/_}
  upper=${upper//-/_}
  export "CARGO_TARGET_${upper}_LINKER=${GNU[$triple]}-gcc"
  export "CC_${lower}=${GNU[$triple]}-gcc"
  export "AR_${lower}=${GNU[$triple]}-ar"
}

# Build bin tern for $1 with profile $2; print the binary's path.
build() {
  local triple=$1 profile=$2
  say "cargo build --profile $profile --target $triple" >&2
  run_cargo build --locked --profile "$profile" --target "$triple" --bin tern >&2
  local bin=$TARGET_DIR/$triple/$profile/tern
  [ -x "$bin" ] || die "no binary at $bin"
  local machine
  machine=$(readelf -h "$bin" | sed -n 's/^ *Machine: *//p')
  case "$machine" in
    *"${MACHINE[$triple]}"*) ;;
    *) die "$bin is built for '$machine', not ${MACHINE[$triple]}" ;;
  esac
  echo "$bin"
}

# A packaged binary must not need a newer glibc than the .deb's Depends says.
check_glibc() {
  local bin=$1 newest
  newest=$(readelf --dyn-syms -W "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
  [ -n "$newest" ] || die "$bin: no glibc symbol versions found"
  if [ "$(printf '%s\n%s\n' "$newest" "$MAX_GLIBC" | sort -V | tail -n 1)" != "$MAX_GLIBC" ]; then
    die "$bin needs GLIBC_$newest, newer than the libc6 (>= $MAX_GLIBC) the .deb depends on"
  fi
}

SMOKE_DIR=""
SMOKE_PIDS=()
cleanup() {
  local pid
  for pid in "${SMOKE_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  [ -z "$SMOKE_DIR" ] || rm -rf "$SMOKE_DIR"
}
trap cleanup EXIT

smoke_fail() {
  echo "package.sh: smoke test failed: $*" >&2
  echo "---- broker log" >&2
  cat "$SMOKE_DIR/tern.log" >&2 || true
  echo "---- mosquitto_sub" >&2
  cat "$SMOKE_DIR/sub.out" >&2 || true
  exit 1
}

# Start $2 (built for $1), make one QoS 1 round trip through it, stop it.
smoke() {
  local triple=$1 bin=$2 runner=()
  if [ "$triple" != "$HOST" ]; then
    # qemu-user with the cross sysroot for the dynamic loader and libc, given
    # explicitly: binfmt_misc is often not registered (containers, CI).
    runner=("${QEMU[$triple]}" -L "/usr/${GNU[$triple]}")
  fi
  say "smoke test of $bin${runner[*]:+ (under ${runner[0]})}"
  SMOKE_DIR=$(mktemp -d)
  # Created here, not by the background jobs' redirections, which may run
  # after the first look at them.
  : >"$SMOKE_DIR/tern.log"
  : >"$SMOKE_DIR/sub.out"
  "${runner[@]}" "$bin" --listen 127.0.0.1:0 --data-dir "$SMOKE_DIR/data" --log info \
    2>"$SMOKE_DIR/tern.log" &
  local pid=$!
  SMOKE_PIDS+=("$pid")

  local port="" i
  for ((i = 0; i < 600; i++)); do
    port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$SMOKE_DIR/tern.log" | head -n 1)
    [ -z "$port" ] || break
    kill -0 "$pid" 2>/dev/null || smoke_fail "the broker exited before listening"
    sleep 0.1
  done
  [ -n "$port" ] || smoke_fail "no 'listening on' line within 60 s"

  local topic="tern/smoke/$triple/$$" payload="tern smoke $triple $$ $RANDOM"
  # -d prints the SUBACK, so the publish goes out only once the subscription
  # is in place (stdbuf: line-buffered, or the SUBACK line waits in stdio's
  # buffer); -W bounds the wait for the message.
  stdbuf -oL mosquitto_sub -d -h 127.0.0.1 -p "$port" -t "$topic" -q 1 -C 1 -W 60 >"$SMOKE_DIR/sub.out" 2>&1 &
  local sub=$!
  SMOKE_PIDS+=("$sub")
  for ((i = 0; i < 300; i++)); do
    grep -q SUBACK "$SMOKE_DIR/sub.out" && break
    kill -0 "$sub" 2>/dev/null || smoke_fail "mosquitto_sub exited before its SUBACK"
    sleep 0.1
  done
  grep -q SUBACK "$SMOKE_DIR/sub.out" || smoke_fail "no SUBACK within 30 s"
  timeout 60 mosquitto_pub -h 127.0.0.1 -p "$port" -t "$topic" -q 1 -m "$payload" ||
    smoke_fail "mosquitto_pub failed"
  local rc=0
  wait "$sub" || rc=$?
  [ "$rc" = 0 ] || smoke_fail "mosquitto_sub exited $rc (27: no message within 60 s)"
  grep -qxF "$payload" "$SMOKE_DIR/sub.out" || smoke_fail "the payload did not come back"

  kill -TERM "$pid"
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && smoke_fail "still running 30 s after SIGTERM"
  rc=0
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] || smoke_fail "the broker exited $rc after SIGTERM, not 0"
  say "smoke test passed: QoS 1 round trip on port $port, exit 0 after SIGTERM"
  rm -rf "$SMOKE_DIR"
  SMOKE_DIR=""
  SMOKE_PIDS=()
}

# Package the release build of $1 with cargo-deb and check what the .deb holds.
make_deb() {
  local triple=$1 arch=${DEBARCH[$1]} deb
  deb=$OUT/tern_${VERSION}-1_${arch}.deb
  rm -f "$deb"
  say "cargo deb --target $triple"
  run_cargo deb --target "$triple" --no-build --output "$deb" >/dev/null
  [ -f "$deb" ] || die "cargo deb made no $deb"
  local contents info
  contents=$(dpkg-deb -c "$deb")
  info=$(dpkg-deb -I "$deb")
  local path
  for path in ./usr/bin/tern ./etc/tern/tern.toml ./usr/lib/systemd/system/tern.service \
    ./usr/lib/sysusers.d/tern.conf ./usr/lib/tmpfiles.d/tern.conf; do
    grep -q " $path\$" <<<"$contents" || die "$deb lacks $path"
  done
  grep -qx " Architecture: $arch" <<<"$info" || die "$deb is not Architecture: $arch"
  [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || die "$deb: wrong architecture"
  dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/tern/tern.toml ||
    die "$deb: /etc/tern/tern.toml is not a conffile"
}

sizes() {
  say "stripped binaries in $OUT:"
  local f
  for f in "$OUT"/tern-"$VERSION"-*; do
    printf '  %-58s %9d bytes\n' "$f" "$(stat -c %s "$f")"
  done
  for f in "$OUT"/*.deb; do
    printf '  %-58s %9d bytes\n' "$f" "$(stat -c %s "$f")"
  done
}

case "$MODE" in
  smoke-aarch64)
    setup_target aarch64-unknown-linux-gnu
    bin=$(build aarch64-unknown-linux-gnu cross-smoke)
    smoke aarch64-unknown-linux-gnu "$bin"
    ;;
  all)
    mkdir -p "$OUT"
    if ! cargo deb --version >/dev/null 2>&1; then
      say "installing cargo-deb"
      run_cargo install cargo-deb --locked
    fi
    for triple in "$HOST" aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
      [ -n "${DEBARCH[$triple]:-}" ] || die "no Debian architecture known for host $triple"
      setup_target "$triple"
      bin=$(build "$triple" release)
      check_glibc "$bin"
      smoke "$triple" "$bin"
      cp "$bin" "$OUT/tern-$VERSION-$triple"
      make_deb "$triple"
    done
    sizes
    ;;
  *)
    die "unknown mode '$MODE' (all | smoke-aarch64)"
    ;;
esac
say "done"
