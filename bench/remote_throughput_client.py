"""The Python side of bench/remote_throughput.sh: the same ByteStream Write and Read
calls as pochi's client (1 MiB chunks, streamed from and to disk), made with grpcio and
BuildGrid's own generated protos. Prints one RESULT line.

usage: python remote_throughput_client.py HOST:PORT FILE
"""

import hashlib
import sys
import time
import uuid

import grpc
from buildgrid._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc

CHUNK = 1 << 20


def main():
    target, path = sys.argv[1], sys.argv[2]
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
            size += len(block)
    digest = f"{sha.hexdigest()}/{size}"
    options = [("grpc.max_receive_message_length", 64 << 20)]
    channel = grpc.insecure_channel(target, options=options)
    stub = bytestream_pb2_grpc.ByteStreamStub(channel)

    def requests():
        name = f"uploads/{uuid.uuid4()}/blobs/{digest}"
        offset = 0
        with open(path, "rb") as f:
            while True:
                block = f.read(CHUNK)
                last = offset + len(block) == size
                yield bytestream_pb2.WriteRequest(
                    resource_name=name if offset == 0 else "",
                    write_offset=offset,
                    finish_write=last,
                    data=block,
                )
                offset += len(block)
                if last:
                    break

    started = time.perf_counter()
    answer = stub.Write(requests())
    upload = time.perf_counter() - started
    assert answer.committed_size == size, answer

    started = time.perf_counter()
    received = 0
    with open(path + ".python-download", "wb") as out:
        for response in stub.Read(bytestream_pb2.ReadRequest(resource_name=f"blobs/{digest}")):
            out.write(response.data)
            received += len(response.data)
    download = time.perf_counter() - started
    assert received == size, received
    print(f"RESULT python upload_s={upload:.3f} download_s={download:.3f} bytes={size}")


if __name__ == "__main__":
    main()
