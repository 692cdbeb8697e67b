#!/usr/bin/env bash
# Make .venv with jobreactor (editable) and its test and dev tools; with --redis, also make
# sure redis-server is on the machine (tests start their own on a free port); with
# --chromium, Debian's chromium (the dashboard's browser test drives it headless).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# A stamp keeps re-runs fast: reinstall only when the package metadata changed.
stamp=.venv/.jobreactor-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing jobreactor and its tools into .venv (log: .venv/install.log)" >&2
    # compat mode puts the repository on sys.path, so twistd finds twisted/plugins/.
    if ! { .venv/bin/python -m pip install --upgrade pip setuptools wheel &&
           .venv/bin/python -m pip install -e '.[test,dev]' --config-settings editable_mode=compat
         } > .venv/install.log 2>&1; then
        tail -30 .venv/install.log >&2
        echo "installing into .venv failed; the whole log is .venv/install.log" >&2
        exit 1
    fi
    .venv/bin/python -c 'import jobreactor, pytest_twisted, txredisapi'
    touch "$stamp"
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

for wanted in "$@"; do
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
        *)
            echo "bootstrap.sh: unknown option $wanted (known: --redis, --chromium)" >&2
            exit 2
            ;;
    esac
done
