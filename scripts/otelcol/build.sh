#!/usr/bin/env bash
# Build the OpenTelemetry Collector the tests run against: the core distribution (otlp and nop
# receivers; batch and memory_limiter processors; otlp, otlphttp, debug and nop exporters; the
# forward connector; zpages and memory_limiter extensions), compiled from the Go sources Debian
# packages (the package list is debian-go-pkgs.txt, the distribution is main.go beside this file),
# so no Go module proxy is needed.
#
#   scripts/otelcol/build.sh [OUTDIR]   -> OUTDIR/otelcol (default OUTDIR: ~/.cache/otelcol-core)
#
# Keeps a binary already there that runs. Needs root (apt) and Debian's package registry; about
# 4 minutes on 2 cores and 1.3 GB of scratch space, removed afterwards. Prints the binary's path last.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out_arg="${1:-$HOME/.cache/otelcol-core}"
mkdir -p "$out_arg"
out=$(cd "$out_arg" && pwd)
if [ -x "$out/otelcol" ] && "$out/otelcol" --version >/dev/null 2>&1; then
  echo "$out/otelcol"
  exit 0
fi
work=$(mktemp -d "$out/work.XXXX")
trap '{ chmod -R u+w "$work"; rm -rf "$work"; } 2>/dev/null || true' EXIT
mkdir -p "$work/lists/partial" "$work/debs" "$work/root" "$work/gopath/src/otelcolcore"

# The collector's sources are packaged in Debian's development suite: use the mirror this machine
# already uses for Debian, with that suite, in a private apt state (the system's stays untouched).
mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
         | grep -E '^(URIs:|deb )' | grep -v security | grep -oE 'https?://[^ ]+/debian' | head -1 || true)
if [ -z "$mirror" ]; then
  echo "build.sh: no Debian mirror found in this machine's apt sources" >&2
  exit 2
fi
echo "deb $mirror sid main" > "$work/sources.list"
apt_opts=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o Dir::State::Lists="$work/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
          -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update -qq
go_version=$(apt-cache "${apt_opts[@]}" depends golang-go | sed -n 's/.*Depends: golang-\([0-9.]*\)-go$/\1/p' | head -1)
if [ -z "$go_version" ]; then
  echo "build.sh: could not find Debian's Go toolchain version" >&2
  exit 2
fi
mapfile -t packages < "$here/debian-go-pkgs.txt"
(cd "$work/debs" && apt-get "${apt_opts[@]}" download -q "golang-$go_version-go" "golang-$go_version-src" "${packages[@]}")
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
cp "$here/main.go" "$work/gopath/src/otelcolcore/"
export GOROOT="$work/root/usr/lib/go-$go_version" GOPATH="$work/gopath:$work/root/usr/share/gocode" \
       GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local GOCACHE="$work/gocache" CGO_ENABLED=0 GOFLAGS=
(cd "$work/gopath/src/otelcolcore" && "$GOROOT/bin/go" build -trimpath -ldflags="-s -w" -o "$out/otelcol" .)
"$out/otelcol" --version >&2
echo "$out/otelcol"
