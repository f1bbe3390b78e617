#!/usr/bin/env python3
"""A small REAPI client for the harness's own tests and readiness checks (not pochi's client).

Runs in the BuildGrid venv, on BuildGrid's bundled protos. Every command prints one JSON
object on stdout.

    reapi_client.py --server 127.0.0.1:P capabilities
    reapi_client.py --server ... put FILE                  -> {"digest": "HASH/SIZE"}
    reapi_client.py --server ... get HASH/SIZE OUT         -> {"ok": true} or {"error": "..."}
    reapi_client.py --server ... find-missing HASH/SIZE... -> {"missing": [...]}
    reapi_client.py --server ... put-action [--output PATH] -- ARGV...  -> {"digest": ...}
    reapi_client.py --server ... ac-put ACTION HASH/SIZE --output-file PATH=HASH/SIZE [--exit-code N]
    reapi_client.py --server ... ac-get ACTION HASH/SIZE   -> {"found": bool, "result": {...}}
    reapi_client.py --server ... execute [--property K=V] [--output PATH] [--input DIR]
                                         [--wait S] [--cancel-when-file F] [--skip-cache] -- ARGV...
        -> {"stage": "QUEUED"|"EXECUTING"|"COMPLETED", "done": bool, "status": CODE,
            "exit_code": N, "worker": NAME, "cached": bool, "stdout": TEXT,
            "outputs": {PATH: TEXT}, "operation": NAME, "seconds": S}
        Output directories come back as their files ("DIR/NAME"; "+x" ends an executable's
        text). --wait bounds the whole call: an action still queued then reports "QUEUED".
"""

import argparse
import json
import os
import sys
import threading
import time

import grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import json_format

from cas_util import BlobError, Cas, digest_of, digest_text, parse_digest

STAGES = {1: "CACHE_CHECK", 2: "QUEUED", 3: "EXECUTING", 4: "COMPLETED"}


def capabilities(channel, args):
    stub = re_grpc.CapabilitiesStub(channel)
    reply = stub.GetCapabilities(re_pb2.GetCapabilitiesRequest(instance_name=args.instance),
                                 timeout=args.rpc_timeout)
    return json_format.MessageToDict(reply)


def put(cas, args):
    with open(args.file, "rb") as data:
        return {"digest": digest_text(cas.write(data.read()))}


def get(cas, args):
    try:
        data = cas.read(parse_digest(args.digest))
    except BlobError as error:
        return {"error": str(error)}
    with open(args.out, "wb") as out:
        out.write(data)
    return {"ok": True}


def find_missing(cas, args):
    request = re_pb2.FindMissingBlobsRequest(instance_name=args.instance,
                                             blob_digests=[parse_digest(d) for d in args.digests])
    reply = cas.cas.FindMissingBlobs(request, timeout=args.rpc_timeout)
    return {"missing": [digest_text(d) for d in reply.missing_blob_digests]}


def ac_put(channel, args):
    result = re_pb2.ActionResult(exit_code=args.exit_code)
    for item in args.output_file:
        path, _, digest = item.partition("=")
        result.output_files.add(path=path, digest=parse_digest(digest))
    stub = re_grpc.ActionCacheStub(channel)
    stub.UpdateActionResult(re_pb2.UpdateActionResultRequest(
        instance_name=args.instance, action_digest=parse_digest(args.action), action_result=result),
        timeout=args.rpc_timeout)
    return {"ok": True}


def ac_get(channel, args):
    stub = re_grpc.ActionCacheStub(channel)
    try:
        result = stub.GetActionResult(re_pb2.GetActionResultRequest(
            instance_name=args.instance, action_digest=parse_digest(args.action)),
            timeout=args.rpc_timeout)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return {"found": False}
        raise
    return {"found": True, "result": json_format.MessageToDict(result)}


def upload_dir(cas, path):
    """Uploads a local directory as an input root; returns its Directory digest."""
    directory = re_pb2.Directory()
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            directory.directories.add(name=entry.name, digest=upload_dir(cas, entry.path))
        elif entry.is_file(follow_symlinks=False):
            with open(entry.path, "rb") as data:
                digest = cas.write(data.read())
            directory.files.add(name=entry.name, digest=digest,
                                is_executable=os.access(entry.path, os.X_OK))
    return cas.write_message(directory)


def put_action(cas, args):
    """Uploads an Action (and its Command) for ARGV: action-cache keys must be real Actions,
    since BuildGrid parses the Action behind a GetActionResult."""
    return {"digest": digest_text(cas.write_message(build_action(cas, args)))}


def build_action(cas, args):
    command = re_pb2.Command(arguments=args.argv, output_paths=sorted(args.output))
    command.environment_variables.add(name="PATH", value="/usr/bin:/bin")
    root = upload_dir(cas, args.input) if args.input else cas.write_message(re_pb2.Directory())
    action = re_pb2.Action(command_digest=cas.write_message(command), input_root_digest=root,
                           do_not_cache=args.skip_cache)
    for item in sorted(args.property):
        key, _, value = item.partition("=")
        action.platform.properties.add(name=key, value=value)
    return action


def describe(cas, operation, report):
    metadata = re_pb2.ExecuteOperationMetadata()
    if operation.metadata.Unpack(metadata):
        report["stage"] = STAGES.get(metadata.stage, str(metadata.stage))
    report["operation"] = operation.name
    if not operation.done:
        return
    report["done"] = True
    response = re_pb2.ExecuteResponse()
    if operation.HasField("error"):
        report.update(status=operation.error.code, message=operation.error.message)
        return
    operation.response.Unpack(response)
    result = response.result
    report.update(status=response.status.code, message=response.status.message,
                  exit_code=result.exit_code, worker=result.execution_metadata.worker,
                  cached=response.cached_result, stage="COMPLETED")
    if result.HasField("stdout_digest"):
        report["stdout"] = cas.read(result.stdout_digest).decode(errors="replace")
    report["outputs"] = {f.path: cas.read(f.digest).decode(errors="replace")
                         for f in result.output_files}
    for output in result.output_directories:
        tree = cas.read_message(output.tree_digest, re_pb2.Tree)
        report["outputs"].update(tree_files(cas, tree, tree.root, output.path))


def tree_files(cas, tree, directory, prefix):
    """{path: text} of the files in a Tree's directory, recursively; "+x" marks executables."""
    children = {digest_text(cas_digest(c)): c for c in tree.children}
    files = {}
    for node in directory.files:
        text = cas.read(node.digest).decode(errors="replace")
        files[prefix + "/" + node.name] = text + ("+x" if node.is_executable else "")
    for node in directory.directories:
        files.update(tree_files(cas, tree, children[digest_text(node.digest)],
                                prefix + "/" + node.name))
    return files


def cas_digest(message):
    return digest_of(message.SerializeToString())


def cancel_when_file(channel, name, args, report):
    """Sends CancelOperation once the file exists (the command wrote it: it is running)."""
    deadline = time.monotonic() + args.wait
    while not os.path.exists(args.cancel_when_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    operations_pb2_grpc.OperationsStub(channel).CancelOperation(
        operations_pb2.CancelOperationRequest(name=name), timeout=10)
    report["cancel_sent"] = True


def execute(channel, cas, args):
    """Runs ARGV remotely; returns what was seen when it finished or when --wait ran out."""
    action = build_action(cas, args)
    request = re_pb2.ExecuteRequest(instance_name=args.instance, skip_cache_lookup=args.skip_cache,
                                    action_digest=cas.write_message(action))
    report = {"stage": None, "done": False}
    started = time.monotonic()
    stream = re_grpc.ExecutionStub(channel).Execute(request, timeout=args.wait)
    canceller = None
    try:
        for operation in stream:
            describe(cas, operation, report)
            if args.cancel_when_file and canceller is None:
                canceller = threading.Thread(target=cancel_when_file, daemon=True,
                                             args=(channel, operation.name, args, report))
                canceller.start()
            if operation.done:
                break
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            report["rpc_error"] = "%s: %s" % (error.code().name, error.details())
    report["seconds"] = round(time.monotonic() - started, 3)
    return report


def parse(argv):
    parser = argparse.ArgumentParser(description="The harness's small REAPI client.")
    parser.add_argument("--server", required=True)
    parser.add_argument("--instance", default="")
    parser.add_argument("--rpc-timeout", type=float, default=10.0)
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("capabilities")
    sub.add_parser("put").add_argument("file")
    one = sub.add_parser("get")
    one.add_argument("digest")
    one.add_argument("out")
    sub.add_parser("find-missing").add_argument("digests", nargs="+")
    one = sub.add_parser("ac-put")
    one.add_argument("action")
    one.add_argument("--output-file", action="append", default=[])
    one.add_argument("--exit-code", type=int, default=0)
    sub.add_parser("ac-get").add_argument("action")
    one = sub.add_parser("put-action")
    one.add_argument("--output", action="append", default=[])
    one.add_argument("argv", nargs="+")
    one.set_defaults(property=[], input=None, skip_cache=False)
    one = sub.add_parser("execute")
    one.add_argument("--property", action="append", default=[])
    one.add_argument("--output", action="append", default=[])
    one.add_argument("--wait", type=float, default=60.0)
    one.add_argument("--input", help="a local directory uploaded as the input root")
    one.add_argument("--cancel-when-file", help="send CancelOperation once this file exists")
    one.add_argument("--skip-cache", action="store_true")
    one.add_argument("argv", nargs="+")
    return parser.parse_args(argv)


def main():
    args = parse(sys.argv[1:])
    channel = grpc.insecure_channel(args.server)
    cas = Cas(channel, args.instance)
    verbs = {
        "capabilities": lambda: capabilities(channel, args),
        "put": lambda: put(cas, args),
        "get": lambda: get(cas, args),
        "find-missing": lambda: find_missing(cas, args),
        "put-action": lambda: put_action(cas, args),
        "ac-put": lambda: ac_put(channel, args),
        "ac-get": lambda: ac_get(channel, args),
        "execute": lambda: execute(channel, cas, args),
    }
    print(json.dumps(verbs[args.verb]()))
    sys.stdout.flush()
    os._exit(0)  # skip grpc's slow channel teardown


if __name__ == "__main__":
    main()
