#!/bin/sh
# Create, reuse or rebuild the project's virtual environment; `make quickstart` and `make test`
# call this first, with PYTHON, VENV, TORCH, TORCH_INDEX and EXTRAS from the Makefile.
#
# $VENV/.finetune-installed records what was installed and is written when every step has
# succeeded. Line 1: Python X.Y, TORCH, TORCH_INDEX and the checkout's folder; line 2: EXTRAS and a
# checksum of pyproject.toml. On each call:
#   both lines match          -> reuse at once, no pip call;
#   only line 2 differs       -> pip install again into the same environment (until that succeeds);
#   line 1 differs            -> rebuild (pip would keep torch 2.13.0+cpu for a CUDA 2.13.0 request,
#                                and an editable install breaks when the checkout moves);
#   no marker, or its Python no longer runs -> half-made (an interrupted first install): rebuild.
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
env_key="$python_key | $TORCH | index=$TORCH_INDEX | in $(pwd -P)"  # a moved checkout breaks -e
deps_key="extras=$EXTRAS | pyproject.toml $(cksum < pyproject.toml)"
vpy=$VENV/bin/python

# Delete only what `python -m venv`, pip and this script make (a first install or a deletion cut
# short may have left any part of it), never whatever else VENV happens to name.
only_venv_files() {
    [ -d "$VENV" ] || return 1
    for entry in "$VENV"/* "$VENV"/.[!.]*; do
        [ -e "$entry" ] || continue
        case ${entry##*/} in
            bin | include | lib | lib64 | share | etc | pyvenv.cfg | pip.log | .finetune-installed | .gitignore) ;;
            *) return 1 ;;
        esac
    done
}

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
    only_venv_files || fail "VENV=$VENV exists and is not a virtual environment; remove it or choose another VENV"
    say "$VENV is half-made (an interrupted install, or its Python no longer runs): rebuilding"
    action=rebuild
else
    action=create
fi

start=$(date +%s)
if [ "$action" != update ]; then
    rm -rf "$VENV"
    say "creating $VENV with $py ($(describe "$py")); pip's log: $LOG"
    out=$("$py" -m venv "$VENV" 2>&1) ||
        fail "$py could not create a virtual environment ($(printf '%s\n' "$out" | grep . | tail -n 1)); on Debian/Ubuntu: apt install python3-venv"
fi
# A new environment gets its marker only at the end; an update keeps the old one, so a failed or
# interrupted update is tried again in place next time (pip changes nothing when it cannot resolve).
: > "$LOG"

# install WHAT PIP-ARGS...: pip install, or one line naming the requirement pip could not get, and why.
install() {
    what=$1; shift
    "$vpy" -m pip install --no-input --progress-bar off "$@" >> "$LOG" 2>&1 && return 0
    missing=$(sed -n 's/.*No matching distribution found for \([^ ;]*\).*/\1/p' "$LOG" | tail -n 1)
    if grep -q -E 'NewConnectionError|Failed to establish a new connection|Name or service not known|Temporary failure in name resolution|Network is unreachable|ConnectTimeoutError|ProxyError' "$LOG"; then
        why="the package index could not be reached (no network?) and no wheel of it is cached"
    else
        why="no matching version on the package index"
    fi
    [ "$missing" = "$what" ] && fail "could not install $what: $why; pip's log: $LOG"
    [ -n "$missing" ] && fail "could not install $missing, needed for $what: $why; pip's log: $LOG"
    last=$(grep 'ERROR' "$LOG" | tail -n 1 | sed 's/^ *//')
    fail "could not install $what: ${last:-pip failed}; pip's log: $LOG"
}

install "pip>=21.3" "pip>=21.3"  # editable installs from pyproject.toml alone (PEP 660); Python 3.10.0 ships 21.2
# torch first: a plain `torch` requirement resolved by pip for finetune's own dependencies can take
# a multi-GB CUDA build; with the chosen build installed, pyproject.toml's range is already met.
if [ -n "$TORCH_INDEX" ]; then
    say "installing $TORCH from $TORCH_INDEX"
    install "$TORCH" "$TORCH" --index-url "$TORCH_INDEX"
else
    say "installing $TORCH"
    install "$TORCH" "$TORCH"
fi
say "installing finetune[$EXTRAS] (editable) and its dependencies"
install "finetune[$EXTRAS]" -e ".[$EXTRAS]"

printf '%s\n%s\n' "$env_key" "$deps_key" > "$MARKER"
say "$VENV ready in $(( $(date +%s) - start )) s; later calls reuse it until pyproject.toml changes"
