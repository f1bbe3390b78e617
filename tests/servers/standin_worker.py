#!/usr/bin/env python3
"""THE STAND-IN WORKER: a test double of a Remote Execution worker, for pochi's tests only.

It is not a real farm worker (no sandbox, no caching of inputs, one lease at a time, no
resource limits) and must never be presented as one. The remote-execution tests run on
real workers (buildbox-worker with buildbox-run-hosttools, tests/it/common/buildbox.rs);
the stand-in stays only where no real worker can do the job: a hostile output tree and the
benchmark compared with Bazel 2.1 (tests/it/remote_execution.rs), an input it cannot fetch
reported as a missing blob (tests/it/remote_execute.rs), and the harness's check of the
stand-in itself (tests/it/remote_servers.rs). Those files' headers say why.

It speaks BuildGrid's Bots API (google.devtools.remoteworkers.v1test2): CreateBotSession,
then UpdateBotSession long-polls (a short deadline while idle, a quick heartbeat while a
lease runs). Its platform properties (`--property KEY=VALUE`, repeatable) go on its
primary device, so BuildGrid routes to it only the Actions whose platform they satisfy.
For each lease it fetches the Action, Command and input root from CAS (verifying digests,
restoring executable bits), runs the Command's argv with its environment in its working
directory (its own process group), uploads the outputs (files; directories as REAPI Tree
messages) and stdout/stderr, names itself in ExecutedActionMetadata.worker and completes
the lease with the ActionResult. A lease the server drops (CancelOperation) kills the
command's process group. A missing or corrupt input blob completes the lease with
FAILED_PRECONDITION and a PreconditionFailure naming the blob.

With --hostile-tree-into DIR it is a HOSTILE worker (issue 22): every output directory is
sent as a Tree whose links each pass a lexical check but chain out of the output towards
DIR, with the same directory listed twice and a file under the last link (the harness's
`common::hostile` builds the same tree for the cache tests).

Usage: standin_worker.py --server 127.0.0.1:PORT --name t4-worker \
           --property OSFamily=linux --property gpu=T4 [--instance NAME] [--work-dir DIR]
           [--hostile-tree-into DIR]
Runs in the BuildGrid venv. Logs one line per event to stderr ("lease ID started", ...).
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import worker_pb2
from buildgrid._protos.google.rpc import code_pb2, error_details_pb2, status_pb2

from cas_util import BlobError, Cas, digest_text

IDLE_POLL_S = 5.0  # BuildGrid waits 80% of this for work; keep it under its keepalive
BUSY_POLL_S = 0.2


def log(name, text):
    stamp = time.strftime("%H:%M:%S") + ".%03d" % (time.time() % 1 * 1000)
    print("%s standin_worker %s: %s" % (stamp, name, text), file=sys.stderr, flush=True)


def materialize(cas, digest, path):
    directory = cas.read_message(digest, re_pb2.Directory)
    os.makedirs(path, exist_ok=True)
    for node in directory.files:
        target = os.path.join(path, node.name)
        with open(target, "wb") as out:
            out.write(cas.read(node.digest))
        os.chmod(target, 0o755 if node.is_executable else 0o644)
    for node in directory.symlinks:
        os.symlink(node.target, os.path.join(path, node.name))
    for node in directory.directories:
        materialize(cas, node.digest, os.path.join(path, node.name))


def directory_of(cas, path, children):
    """Uploads a directory's files; returns its Directory and appends subdirectories to children."""
    directory = re_pb2.Directory()
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_symlink():
            directory.symlinks.add(name=entry.name, target=os.readlink(entry.path))
        elif entry.is_dir():
            child = directory_of(cas, entry.path, children)
            children.append(child)
            directory.directories.add(name=entry.name, digest=cas.write_message(child))
        elif entry.is_file():
            with open(entry.path, "rb") as data:
                digest = cas.write(data.read())
            directory.files.add(name=entry.name, digest=digest,
                                is_executable=os.access(entry.path, os.X_OK))
    return directory


HOSTILE_CHAIN = 14  # l13 climbs 27 levels, in 15 links (the kernel follows 40)
HOSTILE_PLANTED = "planted-by-the-tree"


def hostile_tree(cas, victim):
    """The hostile Tree aimed at `victim` (an absolute directory); uploads its file."""
    links = [re_pb2.SymlinkNode(name="l%d" % i, target=".." if i == 0 else "l%d/../.." % (i - 1))
             for i in range(HOSTILE_CHAIN)]
    links.append(re_pb2.SymlinkNode(name="t", target="l%d%s" % (HOSTILE_CHAIN - 1, victim)))
    chain = re_pb2.Directory(symlinks=sorted(links, key=lambda l: l.name))
    leaf = re_pb2.Directory()
    leaf.files.add(name=HOSTILE_PLANTED, digest=cas.write(b"written through a link\n"))
    through = re_pb2.Directory()
    through.directories.add(name="t", digest=cas.write_message(leaf))
    root = re_pb2.Directory()
    root.directories.add(name="d", digest=cas.write_message(chain))
    root.directories.add(name="d", digest=cas.write_message(through))
    return re_pb2.Tree(root=root, children=[chain, through, leaf])


def upload_outputs(cas, command, workdir, result, hostile_into=None):
    paths = list(command.output_paths) or list(command.output_files) + list(command.output_directories)
    for relative in paths:
        path = os.path.join(workdir, relative)
        if os.path.islink(path):
            result.output_symlinks.add(path=relative, target=os.readlink(path))
        elif os.path.isdir(path):
            children = []
            root = directory_of(cas, path, children)
            tree = re_pb2.Tree(root=root, children=children)
            if hostile_into:
                tree = hostile_tree(cas, hostile_into)
            result.output_directories.add(path=relative, tree_digest=cas.write_message(tree))
        elif os.path.isfile(path):
            with open(path, "rb") as data:
                digest = cas.write(data.read())
            result.output_files.add(path=relative, digest=digest,
                                    is_executable=os.access(path, os.X_OK))


class Job:
    """One lease: runs on its own thread; `outcome` is (Status, ActionResult) when done."""

    def __init__(self, worker, lease):
        self.worker, self.lease, self.process = worker, lease, None
        self.cancelled, self.outcome = False, None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def cancel(self):
        self.cancelled = True
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)

    def run(self):
        scratch = tempfile.mkdtemp(prefix="lease-", dir=self.worker.work_dir)
        try:
            self.outcome = self.execute(scratch)
        except BlobError as error:
            failure = error_details_pb2.PreconditionFailure()
            if error.digest is not None:
                failure.violations.add(type="MISSING", subject="blobs/" + digest_text(error.digest))
            status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=str(error))
            status.details.add().Pack(failure)
            self.outcome = (status, re_pb2.ActionResult())
        except Exception as error:  # the farm sees a failed lease, the test sees the log
            log(self.worker.name, "lease %s failed: %r" % (self.lease.id, error))
            self.outcome = (status_pb2.Status(code=code_pb2.INTERNAL, message=repr(error)),
                            re_pb2.ActionResult())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            self.worker.finished.set()

    def action(self):
        cas, payload = self.worker.cas, self.lease.payload
        if payload.Is(re_pb2.Action.DESCRIPTOR):
            action = re_pb2.Action()
            payload.Unpack(action)
            return action
        digest = re_pb2.Digest()
        payload.Unpack(digest)
        return cas.read_message(digest, re_pb2.Action)

    def execute(self, scratch):
        cas, result = self.worker.cas, re_pb2.ActionResult()
        meta = result.execution_metadata
        meta.worker = self.worker.name
        meta.input_fetch_start_timestamp.GetCurrentTime()
        action = self.action()
        command = cas.read_message(action.command_digest, re_pb2.Command)
        root = os.path.join(scratch, "root")
        materialize(cas, action.input_root_digest, root)
        workdir = os.path.join(root, command.working_directory)
        outputs = list(command.output_paths) + list(command.output_files) + list(command.output_directories)
        for relative in outputs:
            os.makedirs(os.path.dirname(os.path.join(workdir, relative)), exist_ok=True)
        meta.input_fetch_completed_timestamp.GetCurrentTime()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        env.update({v.name: v.value for v in command.environment_variables})
        status = status_pb2.Status(code=code_pb2.OK)
        meta.execution_start_timestamp.GetCurrentTime()
        with open(os.path.join(scratch, "stdout"), "w+b") as out, \
                open(os.path.join(scratch, "stderr"), "w+b") as err:
            try:
                self.process = subprocess.Popen(list(command.arguments), cwd=workdir, env=env,
                                                stdout=out, stderr=err, process_group=0)
                if self.cancelled:
                    self.cancel()
                timeout = action.timeout.ToTimedelta().total_seconds() or None
                try:
                    result.exit_code = self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.cancel()
                    result.exit_code = self.process.wait()
                    status = status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED,
                                               message="the action ran past its timeout")
            except OSError as error:
                err.write(("standin_worker: cannot run %s: %s\n" % (command.arguments[0], error)).encode())
                result.exit_code = 127
            meta.execution_completed_timestamp.GetCurrentTime()
            meta.output_upload_start_timestamp.GetCurrentTime()
            out.seek(0)
            err.seek(0)
            result.stdout_digest.CopyFrom(cas.write(out.read()))
            result.stderr_digest.CopyFrom(cas.write(err.read()))
        upload_outputs(cas, command, workdir, result, self.worker.hostile_into)
        meta.output_upload_completed_timestamp.GetCurrentTime()
        return status, result


class Worker:
    def __init__(self, args):
        self.name, self.instance, self.work_dir = args.name, args.instance, args.work_dir
        self.hostile_into = args.hostile_tree_into
        channel = grpc.insecure_channel(args.server)
        self.cas = Cas(channel, args.instance)
        self.bots = bots_pb2_grpc.BotsStub(channel)
        device = worker_pb2.Device(handle=args.name)
        for item in args.property:
            key, _, value = item.partition("=")
            device.properties.add(key=key, value=value)
        self.worker_proto = worker_pb2.Worker(devices=[device])
        self.jobs = {}
        self.finished = threading.Event()

    def create_session(self):
        """A new bot session; retried until the server answers (it may be starting up)."""
        session = bots_pb2.BotSession(bot_id=self.name, status=bots_pb2.BotStatus.OK,
                                      worker=self.worker_proto)
        request = bots_pb2.CreateBotSessionRequest(parent=self.instance, bot_session=session)
        while True:
            try:
                return self.bots.CreateBotSession(request, timeout=IDLE_POLL_S)
            except grpc.RpcError as error:
                log(self.name, "no session yet (%s)" % error.code())
                time.sleep(0.5)

    def sync(self, session):
        """Reports finished leases, starts new ones, cancels those the server dropped."""
        for lease in session.leases:
            job = self.jobs.get(lease.id)
            if job is not None and job.outcome is not None and lease.state == bots_pb2.LeaseState.ACTIVE:
                status, result = job.outcome
                lease.state = bots_pb2.LeaseState.COMPLETED
                lease.status.CopyFrom(status)
                lease.result.Pack(result)
                log(self.name, "lease %s completed exit=%d status=%d"
                    % (lease.id, result.exit_code, status.code))
        return session

    def adopt(self, session):
        live = {l.id for l in session.leases if l.state != bots_pb2.LeaseState.CANCELLED}
        for lease_id in list(self.jobs):
            if lease_id not in live:
                job = self.jobs.pop(lease_id)
                if job.outcome is None:
                    job.cancel()
                    log(self.name, "lease %s cancelled" % lease_id)
        for lease in session.leases:
            if lease.state == bots_pb2.LeaseState.ACTIVE and lease.id not in self.jobs:
                self.jobs[lease.id] = Job(self, lease)
                log(self.name, "lease %s started" % lease.id)

    def serve(self):
        session = self.create_session()
        log(self.name, "session %s" % session.name)
        while True:
            self.adopt(session)
            busy = any(job.outcome is None for job in self.jobs.values())
            if busy:
                self.finished.wait(BUSY_POLL_S)  # report a finished lease at once
                self.finished.clear()
            request = bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=self.sync(session))
            try:
                session = self.bots.UpdateBotSession(request, timeout=BUSY_POLL_S * 10 if busy else IDLE_POLL_S)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    log(self.name, "session lost (%s); starting a new one" % error.code())
                    time.sleep(0.5)
                    for job in self.jobs.values():
                        job.cancel()
                    self.jobs.clear()
                    session = self.create_session()


def main():
    parser = argparse.ArgumentParser(description="The stand-in REAPI worker (a test double).")
    parser.add_argument("--server", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--instance", default="")
    parser.add_argument("--property", action="append", default=[])
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--hostile-tree-into", default=None,
                        help="send every output directory as a hostile Tree aimed at this directory")
    Worker(parser.parse_args()).serve()


if __name__ == "__main__":
    main()
