#!/usr/bin/env bash
# Make .venv with jobreactor installed (editable).
#   bootstrap.sh             jobreactor and its test and dev tools (pytest, ruff, mypy, Sphinx, Flask)
#   bootstrap.sh --package   jobreactor and what it needs to run, nothing else (run-demo.sh)
#   --redis                  also make sure redis-server is on the machine (tests start their
#                            own on a free port)
#   --chromium               also Debian's chromium (the dashboard's browser test drives it
#                            headless)
# A later run with more to install adds it to the same .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
system_packages=()
for arg in "$@"; do
    case "$arg" in
        --package) mode=package ;;
        --redis | --chromium) system_packages+=("$arg") ;;
        *)
            echo "bootstrap.sh: unknown option $arg (known: --package, --redis, --chromium)" >&2
            exit 2
            ;;
    esac
done

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Stamps keep re-runs fast: reinstall only when the package metadata changed. The full
# install includes the package, so its stamp does for both modes.
full_stamp=.venv/.jobreactor-installed
package_stamp=.venv/.jobreactor-package-installed
fresh() {
    [ -f "$1" ] && [ ! setup.cfg -nt "$1" ] && [ ! pyproject.toml -nt "$1" ]
}
if [ "$mode" = package ] && { fresh "$full_stamp" || fresh "$package_stamp"; }; then
    need=""
elif [ "$mode" = full ] && fresh "$full_stamp"; then
    need=""
elif [ "$mode" = package ]; then
    need="."
else
    need=".[test,dev]"
fi

if [ -n "$need" ]; then
    if [ "$mode" = package ]; then what="jobreactor"; else what="jobreactor and its tools"; fi
    echo "installing $what into .venv (log: .venv/install.log)" >&2
    # compat mode puts the repository on sys.path, so twistd finds twisted/plugins/.
    if ! { .venv/bin/python -m pip install --upgrade pip setuptools wheel &&
           .venv/bin/python -m pip install -e "$need" --config-settings editable_mode=compat
         } > .venv/install.log 2>&1; then
        tail -30 .venv/install.log >&2
        echo "installing into .venv failed; the whole log is .venv/install.log" >&2
        exit 1
    fi
    if [ "$mode" = package ]; then
        .venv/bin/python -c 'import jobreactor, txredisapi'
        touch "$package_stamp"
    else
        .venv/bin/python -c 'import jobreactor, pytest_twisted, txredisapi'
        touch "$full_stamp"
    fi
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

for wanted in ${system_packages[@]+"${system_packages[@]}"}; do
    case "$wanted" in
        --redis)
            if ! command -v redis-server >/dev/null 2>&1; then
                echo "redis-server is missing: installing Debian's redis-server package" >&2
                apt_install redis-server
                # The package starts a system Redis on 6379; the tests do not need it.
            fi
            ;;
        --chromium)
            if ! command -v chromium >/dev/null 2>&1; then
                echo "chromium is missing: installing Debian's chromium package" >&2
                apt_install chromium
            fi
            ;;
    esac
done
