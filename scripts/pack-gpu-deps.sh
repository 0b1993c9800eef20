#!/usr/bin/env bash
# scripts/pack-gpu-deps.sh
# Copies the build dependencies that the GPU machine may lack (it has no
# package mirror and no network) out of this development machine's installed
# Debian packages into build-deps/ at the repository root: doctest,
# nlohmann-json, dlpack (header-only, with their CMake package files) and
# Google Benchmark (headers, CMake files and libbenchmark.so, x86-64, needing
# only glibc and libstdc++). build-deps/ is ignored by git (/build*/), so pass
# it to the device tool in `carry`; scripts/gpu-check.sh finds it there and
# points CMake at it. Nothing is downloaded: only files already installed
# here are copied. Usage: scripts/pack-gpu-deps.sh  (then check the listing).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=build-deps
PACKAGES=(doctest-dev nlohmann-json3-dev libdlpack-dev libbenchmark-dev libbenchmark1debian)

command -v dpkg >/dev/null || { echo "pack-gpu-deps: dpkg not found (needs a Debian/Ubuntu machine)" >&2; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST"
for p in "${PACKAGES[@]}"; do
  if ! dpkg -s "$p" >/dev/null 2>&1; then
    echo "pack-gpu-deps: package $p is not installed here; install it first" >&2
    exit 1
  fi
  # files and symlinks of the package, without its docs and man pages
  dpkg -L "$p" | grep -vE '^/usr/share/(doc|man|lintian)/' | while read -r f; do
    if [[ -f "$f" || -L "$f" ]] && [[ ! -d "$f" ]]; then
      mkdir -p "$DEST$(dirname "$f")"
      cp -P --preserve=mode,timestamps "$f" "$DEST$f"
    fi
  done
  echo "pack-gpu-deps: $p $(dpkg-query -W -f='${Version}' "$p")"
done
{
  echo "# copied by scripts/pack-gpu-deps.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(. /etc/os-release && echo "$PRETTY_NAME")"
  for p in "${PACKAGES[@]}"; do echo "$p $(dpkg-query -W -f='${Version}' "$p")"; done
} >"$DEST/MANIFEST"
echo "pack-gpu-deps: $(du -sh "$DEST" | cut -f1) in $DEST/; carry it with the run: carry=[\"$DEST\"]"
