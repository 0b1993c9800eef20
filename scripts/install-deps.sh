#!/usr/bin/env bash
# Installs the Debian packages lowbit needs to build, test and run its main
# job, skipping any already present. Safe to run repeatedly; needs root (or
# sudo) only when something is missing. The CUDA toolkit is not installed
# here: it is expected in /usr/local/cuda and is optional.
set -euo pipefail
pkgs=(cmake make g++ pkg-config doctest-dev libbenchmark-dev libdlpack-dev nlohmann-json3-dev clang libclang-rt-14-dev libsentencepiece-dev python3 python3-numpy python3-venv python3-pip python3-setuptools python3-wheel)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "lowbit: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
