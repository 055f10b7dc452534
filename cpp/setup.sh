#!/usr/bin/env bash
# Builds the C++ serving library and lipt-upscale-cpp into cpp/build (git-ignored).
#
#   cpp/setup.sh [PYTHON]     PYTHON: the interpreter whose `openvino` wheel provides the C++ headers, libraries
#                             and OpenVINOConfig.cmake (default: .venv/bin/python, else python3)
#
# Idempotent: Debian packages are installed only when `dpkg -s` says they are missing (apt-get as root; otherwise
# it says what to install), and cmake rebuilds only what changed. On any failure the reason is written to
# cpp/build/UNAVAILABLE (the C++ tests skip naming it) and the script exits 1; success removes that file.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
BUILD="${LIPT_CPP_BUILD:-$HERE/build}"
JOBS="${LIPT_CPP_JOBS:-2}"  # the project's machines have 2 cores, shared with whatever else runs
PY="${1:-}"
[ -n "$PY" ] || { [ -x "$REPO/.venv/bin/python" ] && PY="$REPO/.venv/bin/python" || PY=python3; }
DEBS=(g++ cmake make pkg-config nlohmann-json3-dev libssl-dev libpng-dev zlib1g-dev)

mkdir -p "$BUILD"
fail() {
    echo "$1" >"$BUILD/UNAVAILABLE"
    echo "lipt-export: C++ build unavailable: $1" >&2
    exit 1
}

if command -v dpkg >/dev/null 2>&1; then
    missing=()
    for pkg in "${DEBS[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "cpp/setup.sh: installing ${missing[*]}" >&2
            export DEBIAN_FRONTEND=noninteractive
            # the package lists may be stale or absent on a fresh machine: update once, then retry
            apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
                || { apt-get update -q >/dev/null 2>&1 \
                     && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } \
                || fail "apt-get could not install ${missing[*]}"
        else
            fail "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})"
        fi
    fi
fi
command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 || fail "no C++ compiler (g++) on PATH"
command -v cmake >/dev/null 2>&1 || fail "no cmake on PATH"

OV_CMAKE="$("$PY" -c 'import openvino, pathlib; print(pathlib.Path(openvino.__file__).parent / "cmake")' 2>/dev/null)" \
    || fail "$PY has no openvino package (pip install -c constraints.txt -e .)"
[ -f "$OV_CMAKE/OpenVINOConfig.cmake" ] || fail "$OV_CMAKE/OpenVINOConfig.cmake is missing (an openvino wheel without its C++ SDK)"

cmake -S "$HERE" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$OV_CMAKE" >"$BUILD/configure.log" 2>&1 \
    || fail "cmake configure failed (see $BUILD/configure.log: $(grep -m1 -i 'error' "$BUILD/configure.log" | cut -c1-160))"
cmake --build "$BUILD" -j "$JOBS" >"$BUILD/build.log" 2>&1 \
    || fail "C++ build failed (see $BUILD/build.log: $(grep -m1 'error' "$BUILD/build.log" | cut -c1-160))"
rm -f "$BUILD/UNAVAILABLE"
echo "cpp/setup.sh: built $BUILD/lipt-upscale-cpp"
