#!/usr/bin/env python3
"""Stops the test servers of one test process when that process ends, however it ends.

tests/it/common/servers.rs starts this once per test binary, in its own session, with a pipe
on stdin that only the test process holds. It reads lines:

    session SID SIGNAL   a server's session (its leader's pid) and the signal that stops it
    forget SID           that server was stopped by its owner
    dir PATH             a private directory to delete at the end
    keep PATH            that directory was deleted by its owner

When stdin reaches end of file (the test process exited, panicked, or was killed, even by
SIGKILL, since the kernel closes the pipe), it sends each remaining leader its signal,
gives them GRACE_S to exit, kills every process still in those sessions, and deletes the
directories. Standard library only. It ignores SIGINT/SIGTERM/SIGHUP so that a Ctrl-C
meant for the tests does not stop it before it has cleaned up.
"""

import os
import shutil
import signal
import sys
import time

GRACE_S = 3.0


def session_members(sid):
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after "pid (comm)": state ppid pgrp session ...; zombies are already dead
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry))
    return members


def signal_pid(pid, number):
    try:
        os.kill(pid, number)
    except OSError:
        pass


def stop(sessions):
    for sid, number in sessions.items():
        signal_pid(sid, number)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(session_members(sid) for sid in sessions):
        time.sleep(0.1)
    for _ in range(5):
        alive = [pid for sid in sessions for pid in session_members(sid)]
        if not alive:
            break
        for pid in alive:
            signal_pid(pid, signal.SIGKILL)
        time.sleep(0.1)


def main():
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    sessions, dirs = {}, []
    for line in sys.stdin:
        verb, _, rest = line.rstrip("\n").partition(" ")
        if verb == "session":
            sid, number = rest.split()
            sessions[int(sid)] = int(number)
        elif verb == "forget":
            sessions.pop(int(rest), None)
        elif verb == "dir":
            dirs.append(rest)
        elif verb == "keep" and rest in dirs:
            dirs.remove(rest)
    stop(sessions)
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
