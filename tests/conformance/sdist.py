"""llama.cpp's server tests from the llama-cpp-python sdist pinned in setup.cfg, and a venv for
them: their own pins (pytest 8.3, openai 2.x, ...) differ from ours, so they get their own."""

from __future__ import annotations

import configparser
import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

PACKAGE = "llama-cpp-python"
TESTS_IN_SDIST = "vendor/llama.cpp/tools/server/tests/"
# Ours, not theirs: a hung test fails after --test-timeout instead of stalling the run.
EXTRA_REQUIREMENTS = ("pytest-timeout~=2.3",)


def pinned_version(setup_cfg: Path) -> str:
    """The `llama-cpp-python==X` of install_requires."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    for line in parser["options"]["install_requires"].splitlines():
        name, _, version = line.strip().partition("==")
        if name.strip().lower() == PACKAGE and version:
            return version.strip()
    raise SystemExit(f"{setup_cfg}: no {PACKAGE}==VERSION in install_requires")


def fetch_sdist(version: str, into: Path) -> Path:
    """Download the source distribution once (pip keeps it in its cache too)."""
    into.mkdir(parents=True, exist_ok=True)
    found = _sdists(version, into)
    if not found:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, "--dest", str(into), f"{PACKAGE}=={version}"], check=True)
        found = _sdists(version, into)
    if not found:
        raise SystemExit(f"pip download left no {PACKAGE} {version} sdist in {into}")
    return found[0]


def _sdists(version: str, folder: Path) -> list[Path]:
    names = (f"llama_cpp_python-{version}.tar.gz", f"llama-cpp-python-{version}.tar.gz")
    return [folder / name for name in names if (folder / name).is_file()]


def extract_server_tests(sdist: Path, into: Path) -> Path:
    """Unpack only `vendor/llama.cpp/tools/server/tests` (once) and return that folder."""
    pattern = f"*/{TESTS_IN_SDIST}utils.py"
    if not any(into.glob(pattern)):
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if TESTS_IN_SDIST in m.name]
            archive.extractall(into, members=members, filter="data")
    found = sorted(into.glob(pattern))
    if not found:
        raise SystemExit(f"{sdist.name} holds no {TESTS_IN_SDIST}")
    tests = found[0].parent
    (tests / "tmp").mkdir(exist_ok=True)  # utils.TMP_DIR: test_router writes its presets there
    return tests


def tests_venv(tests: Path, venv: Path) -> Path:
    """A venv with the tests' requirements.txt; rebuilt only when those change."""
    requirements = (tests / "requirements.txt").read_text()
    wanted = hashlib.sha256((requirements + "\n".join(EXTRA_REQUIREMENTS)).encode()).hexdigest()
    marker = venv / ".requirements-sha256"
    python = venv / "bin" / "python"
    if marker.is_file() and marker.read_text() == wanted and python.is_file():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "-r", str(tests / "requirements.txt"), *EXTRA_REQUIREMENTS], check=True)
    marker.write_text(wanted)
    return python
