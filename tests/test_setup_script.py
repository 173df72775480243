"""scripts/venv.sh and the Makefile with a stand-in Python: when they create, reuse, update or
rebuild .venv, and the one line they end with when they cannot go on.

The stand-in (a shell script) answers the questions venv.sh asks an interpreter, copies itself in
as the environment's python on `-m venv`, and records every call, so these tests see which pip
installs ran without installing anything or needing a network (a real install: `make test` on a
clean clone, which is what .ci/run does).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = r"""#!/bin/sh
echo "$*" >> "$FAKE_CALLS"
case "$1" in
    --version) echo "Python $FAKE_VERSION" >&2 ;;
    -c) case "$2" in
            *'< (3, 10)'*) case "$FAKE_VERSION" in 2.* | 3.[0-9].*) exit 1 ;; esac ;;
            *version_info*) echo "$FAKE_VERSION" | cut -d. -f1,2 ;;
        esac ;;
    -m) case "$2" in
            venv) mkdir -p "$3/bin" "$3/lib" && cp "$0" "$3/bin/python" && : > "$3/pyvenv.cfg" ;;
            pip) case "$*" in *"$FAKE_PIP_FAIL_ON"*) [ -n "$FAKE_PIP_FAIL_ON" ] && cat "$FAKE_PIP_OUTPUT" && exit 1 ;; esac
                 echo "Successfully installed" ;;
        esac ;;
esac
exit 0
"""

OFFLINE = """\
WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPConnection object at 0x7f>: Failed to establish a new connection: [Errno 111] Connection refused')': /simple/torch/
ERROR: Could not find a version that satisfies the requirement torch==2.13.0 (from versions: none)
ERROR: No matching distribution found for torch==2.13.0
"""
NO_SUCH_VERSION = """\
ERROR: Could not find a version that satisfies the requirement peft>=99; extra == "lora" (from finetune[lora]) (from versions: 0.20.0, 0.21.2)
ERROR: No matching distribution found for peft>=99; extra == "lora"
"""


class Checkout:
    """A folder with the Makefile, scripts/venv.sh, a pyproject.toml and the stand-in Python."""

    def __init__(self, root: Path):
        self.root = root
        shutil.copy(ROOT / "Makefile", root / "Makefile")
        (root / "scripts").mkdir()
        shutil.copy(ROOT / "scripts" / "venv.sh", root / "scripts" / "venv.sh")
        (root / "pyproject.toml").write_text('[project]\nname = "finetune"\n')
        self.python = root / "fake-python"
        self.python.write_text(FAKE_PYTHON)
        self.python.chmod(self.python.stat().st_mode | stat.S_IEXEC)
        self.calls = root / "calls.log"
        self.pip_output = root / "pip-output.txt"
        self.env = {**os.environ, "FAKE_CALLS": str(self.calls), "FAKE_VERSION": "3.11.7", "FAKE_PIP_FAIL_ON": "",
                    "FAKE_PIP_OUTPUT": str(self.pip_output), "PYTHON": str(self.python), "VENV": ".venv",
                    "TORCH": "torch==2.13.0", "TORCH_INDEX": "", "EXTRAS": "dev,sweep"}
        self.env.pop("CI", None)  # CI=true adds pip's log tail before the error line

    def setup(self, **env: str) -> subprocess.CompletedProcess:
        """One call of scripts/venv.sh (what `make venv` runs) with these settings."""
        self.calls.write_text("")
        return subprocess.run(["sh", "scripts/venv.sh"], cwd=self.root, env={**self.env, **env},
                              capture_output=True, text=True, timeout=60)

    def pip_installs(self) -> list[str]:
        return [line.split("--progress-bar off ", 1)[1] for line in self.calls.read_text().splitlines() if line.startswith("-m pip install")]

    def made_venv(self) -> bool:
        return any(line.startswith("-m venv") for line in self.calls.read_text().splitlines())

    def fail_pip(self, on: str, output: str) -> dict:
        self.pip_output.write_text(output)
        return {"FAKE_PIP_FAIL_ON": on}


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    return Checkout(tmp_path)


def test_first_call_installs_torch_first_and_a_second_call_runs_no_pip(checkout):
    first = checkout.setup()
    assert first.returncode == 0, first.stderr
    assert checkout.made_venv()
    assert checkout.pip_installs() == ["pip>=21.3", "torch==2.13.0", "-e .[dev,sweep]"]
    assert "setup: .venv ready in" in first.stdout.splitlines()[-1]

    second = checkout.setup()
    assert second.returncode == 0 and second.stdout == "" and second.stderr == ""
    assert checkout.pip_installs() == [] and not checkout.made_venv()


def test_another_torch_index_goes_to_pip_and_rebuilds(checkout):
    checkout.setup()
    result = checkout.setup(TORCH_INDEX="https://example.invalid/whl/cu128")
    assert result.returncode == 0, result.stderr
    assert "rebuilding" in result.stdout and checkout.made_venv()
    assert "torch==2.13.0 --index-url https://example.invalid/whl/cu128" in checkout.pip_installs()


def test_a_change_of_pyproject_or_extras_installs_again_in_place(checkout):
    checkout.setup()
    with open(checkout.root / "pyproject.toml", "a") as f:
        f.write('[project.optional-dependencies]\nlora = ["peft"]\n')
    result = checkout.setup(EXTRAS="dev,sweep,lora")
    assert result.returncode == 0, result.stderr
    assert "installing again" in result.stdout and not checkout.made_venv()
    assert checkout.pip_installs()[-1] == "-e .[dev,sweep,lora]"
    assert checkout.setup(EXTRAS="dev,sweep,lora").stdout == ""


@pytest.mark.parametrize("damage", ["marker removed", "python removed"])
def test_a_half_made_environment_is_rebuilt(checkout, damage):
    checkout.setup()
    venv = checkout.root / ".venv"
    (venv / (".finetune-installed" if damage == "marker removed" else "bin/python")).unlink()
    result = checkout.setup()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "setup: .venv is half-made (an interrupted install, or its Python no longer runs): rebuilding"
    assert checkout.made_venv() and len(checkout.pip_installs()) == 3
    assert (venv / ".finetune-installed").is_file()


def test_offline_first_install_ends_with_one_line_naming_torch(checkout):
    result = checkout.setup(**checkout.fail_pip("torch==2.13.0", OFFLINE))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: could not install torch==2.13.0: the package index could not be reached (no network?) and no wheel of "
        "it is cached; pip's log: .venv/pip.log"]
    assert not (checkout.root / ".venv" / ".finetune-installed").exists()  # the next call rebuilds


def test_a_failed_update_names_the_dependency_and_keeps_the_environment(checkout):
    checkout.setup()
    with open(checkout.root / "pyproject.toml", "a") as f:
        f.write("# a new dependency\n")
    result = checkout.setup(**checkout.fail_pip("-e .", NO_SUCH_VERSION))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: could not install peft>=99, needed for finetune[dev,sweep]: no matching version on the package index; "
        "pip's log: .venv/pip.log"]
    retry = checkout.setup()
    assert retry.returncode == 0 and "installing again" in retry.stdout and not checkout.made_venv()


def test_no_suitable_python_is_one_line(checkout):
    result = checkout.setup(FAKE_VERSION="2.7.18")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: finetune needs Python 3.10 or newer; PYTHON={checkout.python} is Python 2.7.18"]
    assert not (checkout.root / ".venv").exists()


def test_a_folder_that_is_not_an_environment_is_never_deleted(checkout):
    other = checkout.root / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    result = checkout.setup(VENV="notes")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: VENV=notes exists and is not a virtual environment; remove it or choose another VENV"]
    assert (other / "mine.txt").read_text() == "keep"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_targets_run_the_readme_commands_in_the_environment(checkout):
    env = {key: value for key, value in checkout.env.items() if key not in ("VENV", "TORCH", "TORCH_INDEX", "EXTRAS")}
    for target, extra, expected in [("quickstart", "ARGS=seed=3", "train.py experiment=quickstart seed=3"),
                                    ("test", "PYTEST_ARGS=-x", "-m pytest -q -x")]:
        checkout.calls.write_text("")
        result = subprocess.run(["make", "-s", target, extra], cwd=checkout.root, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert checkout.calls.read_text().splitlines()[-1] == expected
    assert checkout.pip_installs() == []  # the second target reused the environment the first one made
