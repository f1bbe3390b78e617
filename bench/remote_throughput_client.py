"""The Python side of bench/remote_throughput.sh: the same ByteStream Write and Read
calls as pochi's client (1 MiB chunks, streamed from and to disk), made with grpcio and
BuildGrid's own generated protos. Prints one RESULT line.

usage: python remote_throughput_client.py HOST:PORT FILE [--verify]

Without --verify the digest is computed before the upload (outside the timing) and the
download is only written. With --verify the client checks the bytes as pochi does: the
upload hashes what it sends (and fails if it does not match the digest), the download
hashes what it receives and compares before it keeps the file.
"""

import hashlib
import os
import sys
import time
import uuid

import grpc
from buildgrid._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc

CHUNK = 1 << 20


def file_digest(path):
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
            size += len(block)
    return sha.hexdigest(), size


def upload(stub, path, digest, size, verify):
    sent = hashlib.sha256() if verify else None

    def requests():
        name = f"uploads/{uuid.uuid4()}/blobs/{digest}/{size}"
        offset = 0
        with open(path, "rb") as f:
            while True:
                block = f.read(CHUNK)
                last = offset + len(block) == size
                if sent is not None:
                    sent.update(block)
                    if last and sent.hexdigest() != digest:
                        raise RuntimeError("the file changed while it was uploaded")
                yield bytestream_pb2.WriteRequest(
                    resource_name=name if offset == 0 else "",
                    write_offset=offset,
                    finish_write=last,
                    data=block,
                )
                offset += len(block)
                if last:
                    break

    answer = stub.Write(requests())
    assert answer.committed_size == size, answer


def download(stub, path, digest, size, verify):
    got = hashlib.sha256() if verify else None
    received = 0
    partial = path + ".python-download.partial"
    with open(partial, "wb") as out:
        request = bytestream_pb2.ReadRequest(resource_name=f"blobs/{digest}/{size}")
        for response in stub.Read(request):
            out.write(response.data)
            if got is not None:
                got.update(response.data)
            received += len(response.data)
    assert received == size, received
    if got is not None and got.hexdigest() != digest:
        raise RuntimeError("the server returned other bytes")
    os.replace(partial, path + ".python-download")


def main():
    target, path = sys.argv[1], sys.argv[2]
    verify = "--verify" in sys.argv[3:]
    digest, size = file_digest(path)
    options = [("grpc.max_receive_message_length", 64 << 20)]
    stub = bytestream_pb2_grpc.ByteStreamStub(grpc.insecure_channel(target, options=options))
    started = time.perf_counter()
    upload(stub, path, digest, size, verify)
    upload_s = time.perf_counter() - started
    started = time.perf_counter()
    download(stub, path, digest, size, verify)
    download_s = time.perf_counter() - started
    os.remove(path + ".python-download")
    print(f"RESULT python upload_s={upload_s:.3f} download_s={download_s:.3f} bytes={size}")


if __name__ == "__main__":
    main()
