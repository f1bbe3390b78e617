#!/usr/bin/env python3
"""Installs Debian's buildbox (a real REAPI worker and a second REAPI server) for the
remote-execution tests; prints the prefix.

buildbox (`buildbox-worker`, `buildbox-run-hosttools`, `buildbox-casd`, `trexe`...) is
packaged in Debian sid only, and sid's binaries need sid's libc, so it cannot be
`apt-get install`ed on bookworm. This script, without root and without touching the
system's apt state:

1. writes a private apt configuration (its own Dir::Etc, Dir::State, Dir::Cache, an empty
   dpkg status so that the whole closure is listed) with a sources line for suite `sid` on
   the machine's own Debian mirror (the first `debian` URI in /etc/apt/sources.list*, or
   $POCHI_BUILDBOX_DEBIAN_MIRROR),
2. `apt-get update`, then `apt-get install -s --no-install-recommends buildbox` to list
   the closure (libc6 included), `apt-get download` of exactly those versions,
3. `dpkg-deb -x` of each into `root/`, and one wrapper per tool in `bin/` that runs it
   through the prefix's own dynamic loader with `--library-path` (so the commands the
   runner starts see the host's normal libraries, not sid's),
4. checks that `bin/buildbox-casd --help` runs.

The prefix lives in the per-user test cache, next to BuildGrid's venv:

    ${XDG_CACHE_HOME:-~/.cache}/pochi/test-servers/buildbox-sid-<this script's hash>/

It is built once per machine, atomically: a file lock (`<dir>.lock`) serializes test
processes, the prefix is built in `<dir>.partial-<pid>` and renamed into place when
complete (the wrappers find the prefix relative to themselves). A directory that exists
is complete. Every download is bounded (apt's own timeouts plus a wall-clock limit per
step); on failure it exits non-zero with the reason on stderr.

Usage: python3 install_buildbox.py   (stdout: the prefix, one line; tools in PREFIX/bin)
"""

import fcntl
import glob
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
PACKAGE = "buildbox"
TOOLS = ["buildbox-worker", "buildbox-run-hosttools", "buildbox-casd", "trexe", "casupload"]
STEP_TIMEOUT_S = 300
LIBDIR = "usr/lib/x86_64-linux-gnu"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def fail(message: str) -> None:
    sys.exit("install_buildbox: " + message)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pochi" / "test-servers"


def debian_mirror() -> str:
    """POCHI_BUILDBOX_DEBIAN_MIRROR if set, else the machine's own Debian mirror: the first
    URI of a `debian` (not -security) archive in /etc/apt/sources.list*."""
    if os.environ.get("POCHI_BUILDBOX_DEBIAN_MIRROR"):
        return os.environ["POCHI_BUILDBOX_DEBIAN_MIRROR"].rstrip("/")
    files = sorted(glob.glob("/etc/apt/sources.list.d/*.sources")) + \
        sorted(glob.glob("/etc/apt/sources.list.d/*.list")) + ["/etc/apt/sources.list"]
    for name in files:
        try:
            text = Path(name).read_text()
        except OSError:
            continue
        uris = re.findall(r"^URIs:\s*(\S+)", text, re.M) + \
            re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s", text, re.M)
        for uri in uris:
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return FALLBACK_MIRROR


def write_apt_config(apt: Path) -> Path:
    """A private apt configuration under `apt`; returns the file for APT_CONFIG."""
    for sub in ("etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d", "etc/trusted.gpg.d",
                "state/lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "status").write_text("")
    (apt / "etc/sources.list").write_text(
        "deb [signed-by=%s] %s sid main\n" % (KEYRING, debian_mirror()))
    user = pwd.getpwuid(os.geteuid()).pw_name
    settings = {
        "Dir::Etc": apt / "etc",
        "Dir::State": apt / "state",
        "Dir::State::status": apt / "status",
        "Dir::Cache": apt / "cache",
        "Dir::Log": apt / "log",
        "APT::Architecture": "amd64",
        "APT::Architectures": "amd64",
        "APT::Sandbox::User": user,
        "Acquire::Check-Valid-Until": "false",
        "Acquire::Languages": "none",
        "Acquire::Retries": "2",
        "Acquire::http::Timeout": "30",
        "Acquire::https::Timeout": "30",
        "Debug::NoLocking": "true",
    }
    config = apt / "apt.conf"
    config.write_text("".join('%s "%s";\n' % (key, value) for key, value in settings.items()))
    return config


def run(argv, env, cwd=None, context="") -> str:
    """Runs one step within STEP_TIMEOUT_S; returns its stdout and stderr; exits with both
    (and `context`) when it fails."""
    try:
        done = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        fail("%s took longer than %d s" % (" ".join(argv[:3]), STEP_TIMEOUT_S))
    if done.returncode != 0:
        fail("%s failed (exit %d):\n%s%s" % (" ".join(argv), done.returncode, done.stdout,
                                             context))
    return done.stdout


def closure(env, update_log: str) -> list:
    """`name=version` of every package `apt-get install buildbox` would install."""
    context = "\n`apt-get update` on %s said:\n%s" % (debian_mirror(), update_log)
    listing = run(["apt-get", "install", "-s", "-q", "--no-install-recommends", PACKAGE], env,
                  context=context)
    found = re.findall(r"^Inst (\S+) \((\S+) ", listing, re.M)
    if not any(name == PACKAGE for name, _ in found):
        fail("apt lists no %s in sid:\n%s%s" % (PACKAGE, listing, context))
    return ["%s=%s" % pair for pair in found]


def write_wrappers(prefix: Path) -> None:
    bindir = prefix / "bin"
    bindir.mkdir()
    loader = "root/%s/ld-linux-x86-64.so.2" % LIBDIR
    for tool in TOOLS:
        wrapper = bindir / tool
        wrapper.write_text(
            "#!/bin/sh\n"
            "# Runs sid's %s with sid's libraries; what it starts sees the host's.\n"
            'prefix="$(cd "$(dirname "$0")/.." && pwd)"\n'
            'exec "$prefix/%s" --library-path "$prefix/root/%s" "$prefix/root/usr/bin/%s" "$@"\n'
            % (tool, loader, LIBDIR, tool))
        wrapper.chmod(0o755)


def build(partial: Path) -> None:
    if partial.exists():
        shutil.rmtree(partial)
    env = dict(os.environ, APT_CONFIG=str(write_apt_config(partial / "apt")),
               LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    packages = closure(env, run(["apt-get", "update", "-q"], env))
    debs = partial / "apt" / "debs"
    debs.mkdir()
    run(["apt-get", "download", "-q"] + packages, env, cwd=debs)
    root = partial / "root"
    root.mkdir()
    for deb in sorted(debs.glob("*.deb")):
        run(["dpkg-deb", "-x", str(deb), str(root)], env)
    write_wrappers(partial)
    for tool in TOOLS:
        if not (root / "usr/bin" / tool).is_file():
            fail("the packages have no usr/bin/%s" % tool)
    run([str(partial / "bin" / "buildbox-casd"), "--help"], env)
    (partial / "packages.txt").write_text("\n".join(packages) + "\n")
    shutil.rmtree(partial / "apt")


def main() -> None:
    script_hash = hashlib.sha256(HERE.read_bytes()).hexdigest()[:12]
    root = cache_root()
    target = root / ("buildbox-sid-%s" % script_hash)
    if not target.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with open(str(target) + ".lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            if not target.is_dir():
                partial = Path("%s.partial-%d" % (target, os.getpid()))
                try:
                    build(partial)
                    os.rename(partial, target)
                finally:
                    shutil.rmtree(partial, ignore_errors=True)
    print(target)


if __name__ == "__main__":
    main()
