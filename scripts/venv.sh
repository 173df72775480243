#!/bin/sh
# Create, reuse or rebuild the project's virtual environment; `make quickstart` and `make test`
# call this first, with PYTHON, VENV, TORCH, TORCH_INDEX and EXTRAS from the Makefile.
#
# The marker file records what was installed (Python X.Y, the torch requirement and index, the
# extras, a checksum of pyproject.toml) and is written only after every step succeeded, so:
#   marker matches             -> reuse at once (no pip call);
#   pyproject.toml or EXTRAS   -> pip install again into the same environment;
#   Python, TORCH, TORCH_INDEX -> rebuild (pip keeps an installed torch 2.13.0+cpu for a CUDA request);
#   no marker, or its Python no longer runs -> half-made (an interrupted install): rebuild.
# pip's output goes to $VENV/pip.log; a failure ends with one `error:` line naming what is missing.
set -u
: "${VENV:?} ${TORCH:?} ${EXTRAS:?}"
TORCH_INDEX=${TORCH_INDEX:-}
MARKER=$VENV/.finetune-installed
LOG=$VENV/pip.log

say() { printf 'setup: %s\n' "$*"; }
fail() {
    [ "${CI:-}" = true ] && [ -f "$LOG" ] && tail -n 40 "$LOG" >&2  # CI keeps no log file: show its end
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# A Python 3.10+: $PYTHON when set, else the first suitable one on PATH.
suitable() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; }
describe() { "$1" --version 2>&1 | head -n 1 | grep '^Python' || echo "not found"; }
if [ -n "${PYTHON:-}" ]; then
    suitable "$PYTHON" || fail "finetune needs Python 3.10 or newer; PYTHON=$PYTHON is $(describe "$PYTHON")"
    py=$PYTHON
else
    py=
    for candidate in python3 python3.13 python3.12 python3.11 python3.10 python; do
        if suitable "$candidate"; then py=$candidate; break; fi
    done
    [ -n "$py" ] || fail "finetune needs Python 3.10 or newer and found none on PATH (python3: $(describe python3)); install one, or pass PYTHON=/path/to/python3.x"
fi

python_key="python $("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
env_key="$python_key | $TORCH | index=$TORCH_INDEX"
deps_key="extras=$EXTRAS | pyproject.toml $(cksum < pyproject.toml)"
vpy=$VENV/bin/python

if [ -f "$MARKER" ] && "$vpy" -c '' >/dev/null 2>&1; then
    if [ "$(sed -n 1p "$MARKER")" = "$env_key" ]; then
        [ "$(sed -n 2p "$MARKER")" = "$deps_key" ] && exit 0
        say "pyproject.toml or EXTRAS changed since $VENV was set up: installing again"
        action=update
    else
        say "$VENV was made for '$(sed -n 1p "$MARKER")', now '$env_key': rebuilding"
        action=rebuild
    fi
elif [ -e "$VENV" ]; then
    say "$VENV is half-made (an interrupted install, or its Python no longer runs): rebuilding"
    action=rebuild
else
    action=create
fi

start=$(date +%s)
if [ "$action" != update ]; then
    if [ -e "$VENV" ]; then
        # Only ever delete a virtual environment (or an empty folder), never what VENV happens to name.
        [ -f "$VENV/pyvenv.cfg" ] || [ -z "$(ls -A "$VENV")" ] ||
            fail "VENV=$VENV exists and is not a virtual environment; remove it or choose another VENV"
        rm -rf "$VENV"
    fi
    say "creating $VENV with $py ($(describe "$py")); pip's log: $LOG"
    out=$("$py" -m venv "$VENV" 2>&1) ||
        fail "$py could not create a virtual environment ($(printf '%s\n' "$out" | grep . | tail -n 1)); on Debian/Ubuntu: apt install python3-venv"
fi
rm -f "$MARKER"
: > "$LOG"

# pip install ARGS..., or one line naming the requirement pip could not get, and why.
install() {
    "$vpy" -m pip install --no-input --progress-bar off "$@" >> "$LOG" 2>&1 && return 0
    missing=$(sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' "$LOG" | tail -n 1)
    if grep -q -E 'NewConnectionError|Failed to establish a new connection|Name or service not known|Temporary failure in name resolution|Network is unreachable|ConnectTimeoutError|ProxyError' "$LOG"; then
        why="the package index could not be reached (no network?) and no wheel of it is cached"
    else
        why="no matching version on the package index"
    fi
    [ -n "$missing" ] && fail "could not install $missing: $why; pip's log: $LOG"
    fail "pip install $* failed: $(grep '^ERROR' "$LOG" | tail -n 1); pip's log: $LOG"
}

install "pip>=21.3"  # editable installs from pyproject.toml alone (PEP 660); Python 3.10.0 ships 21.2
# torch first: a plain `torch` requirement resolved by pip for finetune's own dependencies can take
# a multi-GB CUDA build; with the chosen build installed, pyproject.toml's range is already met.
if [ -n "$TORCH_INDEX" ]; then
    say "installing $TORCH from $TORCH_INDEX"
    install "$TORCH" --index-url "$TORCH_INDEX"
else
    say "installing $TORCH"
    install "$TORCH"
fi
say "installing finetune[$EXTRAS] (editable) and its dependencies"
install -e ".[$EXTRAS]"

printf '%s\n%s\n' "$env_key" "$deps_key" > "$MARKER"
say "$VENV ready in $(( $(date +%s) - start )) s; later calls reuse it until pyproject.toml changes"
