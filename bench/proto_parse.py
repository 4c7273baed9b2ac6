"""Parse cost of one ext_proc ProcessingRequest: xds-protos (protobuf's C upb runtime, what the
sidecar uses) vs envoy-data-plane (betterproto2 dataclasses). docs/design.md quotes the result.

envoy-data-plane cannot share a virtualenv with xds-protos (both are imported as `envoy`-rooted
trees; its services also need grpclib), so it runs in a throwaway one:

    python3 -m venv /tmp/edp && /tmp/edp/bin/pip install envoy-data-plane
    .venv/bin/python bench/proto_parse.py --edp-python /tmp/edp/bin/python
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import timeit
from pathlib import Path

from envoy.config.core.v3 import base_pb2 as core_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

HEADERS = {":method": "POST", ":path": "/api/v1/chat/completions", "authorization": "Bearer crt_" + "a" * 38,
           "content-type": "application/json", "x-request-id": "5d1f0c7e-9a8b-4c3d-8e2f-1a2b3c4d5e6f"}  # fmt: skip
BODY = b'{"model":"deepseek/deepseek-v4-flash","messages":[{"role":"user","content":"' + b"x" * 1500 + b'"}]}'

EDP = """
import sys, timeit
from envoy_data_plane.envoy.service.ext_proc.v3 import ProcessingRequest
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    n = 500
    t = min(timeit.repeat(lambda: ProcessingRequest().parse(data), number=n, repeat=5)) / n
    print(f"envoy-data-plane  {path.rsplit('/', 1)[-1]:<16} {t * 1e6:8.2f} us")
"""


def samples(folder: Path) -> list[Path]:
    headers = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=core_pb.HeaderMap(
        headers=[core_pb.HeaderValue(key=k, raw_value=v.encode()) for k, v in HEADERS.items()])))  # fmt: skip
    body = pb.ProcessingRequest(request_body=pb.HttpBody(body=BODY, end_of_stream=True))
    out = []
    for name, msg in (("request_headers", headers), ("request_body", body)):
        path = folder / name
        path.write_bytes(msg.SerializeToString())
        out.append(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edp-python", help="python of a virtualenv with envoy-data-plane installed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for path in samples(Path(tmp)):
            data = path.read_bytes()
            n = 20_000
            t = min(timeit.repeat(lambda d=data: pb.ProcessingRequest.FromString(d), number=n, repeat=5)) / n
            print(f"xds-protos        {path.name:<16} {t * 1e6:8.2f} us")
        if args.edp_python:
            subprocess.run([args.edp_python, "-c", EDP, *map(str, samples(Path(tmp)))], check=True)


if __name__ == "__main__":
    main()
