#!/usr/bin/env python3
"""Installs BuildGrid for the remote-cache and remote-execution tests; prints the venv path.

The venv lives in the per-user cache, keyed by BuildGrid's version, the Python version
and the lock's content hash:

    ${XDG_CACHE_HOME:-~/.cache}/pochi/test-servers/buildgrid-0.4.4-py3.11-<lock hash>/

It is built once per machine, atomically: a file lock (`<dir>.lock`) serializes test
processes, the venv is built in `<dir>.partial-<pid>` and renamed into place only after
`pip install --require-hashes --no-deps` of buildgrid.lock, a check that BuildGrid imports,
and pointing the scripts' `#!` lines at the final directory.
A directory that exists is complete. Needs Python 3.11 (`python3.11`, or this
interpreter when it is 3.11): the lock's wheels are CPython 3.11 wheels.

Usage: python3 install_buildgrid.py   (stdout: the venv directory, one line)
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCK = HERE / "buildgrid.lock"
VERSION = "0.4.4"
PYTHON = (3, 11)
PIP_TIMEOUT_S = "60"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pochi" / "test-servers"


def find_python() -> str:
    """A CPython 3.11 interpreter: this one if it is 3.11, else python3.11 on PATH."""
    if sys.version_info[:2] == PYTHON:
        return sys.executable
    found = shutil.which("python%d.%d" % PYTHON)
    if found:
        return found
    sys.exit("install_buildgrid: BuildGrid %s's lock needs Python %d.%d (python3.11 not found)"
             % ((VERSION,) + PYTHON))


def relocate_scripts(partial: Path, target: Path) -> None:
    """Points the scripts' `#!` lines (written for the partial directory) at the final one."""
    old, new = ("#!%s/" % partial).encode(), ("#!%s/" % target).encode()
    for script in (partial / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            text = script.read_bytes()
            if text.startswith(old):
                script.write_bytes(new + text[len(old):])


def build(partial: Path, target: Path, python: str) -> None:
    if partial.exists():
        shutil.rmtree(partial)
    subprocess.run([python, "-m", "venv", str(partial)], check=True)
    pip = [str(partial / "bin" / "python"), "-m", "pip"]
    subprocess.run(
        pip + ["install", "--quiet", "--disable-pip-version-check", "--timeout", PIP_TIMEOUT_S,
               "--no-deps", "--require-hashes", "--only-binary", ":all:", "-r", str(LOCK)],
        check=True, stdout=sys.stderr,
    )
    subprocess.run([str(partial / "bin" / "python"), "-c", "from buildgrid.server.app import cli"],
                   check=True)
    relocate_scripts(partial, target)


def main() -> None:
    lock_hash = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:12]
    root = cache_root()
    target = root / ("buildgrid-%s-py%d.%d-%s" % ((VERSION,) + PYTHON + (lock_hash,)))
    if not target.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with open(str(target) + ".lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            if not target.is_dir():
                partial = Path("%s.partial-%d" % (target, os.getpid()))
                try:
                    build(partial, target, find_python())
                    os.rename(partial, target)
                finally:
                    shutil.rmtree(partial, ignore_errors=True)
    print(target)


if __name__ == "__main__":
    main()
