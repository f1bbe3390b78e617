"""CAS helpers shared by the test client (reapi_client.py) and the stand-in worker
(standin_worker.py): digests, blob reads and writes over BuildGrid's bundled REAPI protos.

Blobs up to BATCH_LIMIT go through BatchReadBlobs/BatchUpdateBlobs, larger ones through
ByteStream in CHUNK-sized pieces. Every blob read is checked against its digest.
Runs in the BuildGrid venv (install_buildgrid.py), which has grpcio and the protos.
"""

import hashlib
import uuid

import grpc

from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc

BATCH_LIMIT = 1 << 20
CHUNK = 1 << 20


class BlobError(Exception):
    """A blob the server does not have, or whose bytes do not match its digest."""

    def __init__(self, message: str, digest=None):
        super().__init__(message)
        self.digest = digest


def digest_of(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def digest_text(digest: re_pb2.Digest) -> str:
    return "%s/%d" % (digest.hash, digest.size_bytes)


def parse_digest(text: str) -> re_pb2.Digest:
    hash_, _, size = text.partition("/")
    return re_pb2.Digest(hash=hash_, size_bytes=int(size))


class Cas:
    """Reads and writes blobs of one instance on one channel."""

    def __init__(self, channel, instance: str = ""):
        self.instance = instance
        self.cas = re_grpc.ContentAddressableStorageStub(channel)
        self.bytestream = bytestream_pb2_grpc.ByteStreamStub(channel)

    def _resource(self, middle: str, digest) -> str:
        prefix = self.instance + "/" if self.instance else ""
        return "%s%sblobs/%s/%d" % (prefix, middle, digest.hash, digest.size_bytes)

    def read(self, digest) -> bytes:
        if digest.size_bytes == 0:
            return b""
        if digest.size_bytes <= BATCH_LIMIT:
            reply = self.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(
                instance_name=self.instance, digests=[digest]))
            answer = reply.responses[0]
            if answer.status.code != 0:
                raise BlobError("blob %s: %s" % (digest_text(digest), answer.status.message), digest)
            data = answer.data
        else:
            request = bytestream_pb2.ReadRequest(resource_name=self._resource("", digest))
            try:
                data = b"".join(part.data for part in self.bytestream.Read(request))
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                raise BlobError("blob %s: not found" % digest_text(digest), digest) from error
        if digest_of(data) != digest:
            raise BlobError("blob %s: the server returned other bytes" % digest_text(digest), digest)
        return data

    def write(self, data: bytes) -> re_pb2.Digest:
        digest = digest_of(data)
        if len(data) <= BATCH_LIMIT:
            request = re_pb2.BatchUpdateBlobsRequest(instance_name=self.instance, requests=[
                re_pb2.BatchUpdateBlobsRequest.Request(digest=digest, data=data)])
            answer = self.cas.BatchUpdateBlobs(request).responses[0]
            if answer.status.code != 0:
                raise BlobError("upload %s: %s" % (digest_text(digest), answer.status.message))
            return digest
        name = self._resource("uploads/%s/" % uuid.uuid4(), digest)

        def chunks():
            for offset in range(0, len(data), CHUNK):
                end = min(offset + CHUNK, len(data))
                yield bytestream_pb2.WriteRequest(resource_name=name, write_offset=offset,
                                                  data=data[offset:end],
                                                  finish_write=end == len(data))
        self.bytestream.Write(chunks())
        return digest

    def write_message(self, message) -> re_pb2.Digest:
        return self.write(message.SerializeToString())

    def read_message(self, digest, message_type):
        message = message_type()
        message.ParseFromString(self.read(digest))
        return message
