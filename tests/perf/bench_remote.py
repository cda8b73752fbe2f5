"""Remote-open benchmark (issue: beyond one disk). Run by hand after tests/perf/make_files.py:

    python tests/perf/bench_remote.py [--data perf-data]

Serves the benchmark files over loopback HTTP with byte ranges (tests/rangeserver.py, counting
requests and bytes server-side) and opens them by URL in this process: requests and bytes for
the listing, the listing compared with the local one, then stats of one tensor.
Budgets: opening the 16 GB file <= 6 requests and <= 0.1% of its bytes; stats of a tensor its
bytes + one block. The legacy file costs a request per storage (each is walked by its header).

`--s3` adds the same rows over S3: moto's server on 127.0.0.1 behind a counting proxy
(tests/s3server.py), found through AWS_ENDPOINT_URL. moto builds a whole object in memory on
upload and reads the whole object for every range request, so only `--s3-files` are served
that way (default the 2.6 GB file and the 50k-key one: the 16 GB file would need 32 GB of
memory in moto, the legacy file reads the whole object once per storage).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def listing(checkpoint):
    from ckpt_viewer.core.listing.summary import inspect_dict

    info = inspect_dict(checkpoint)
    return [(t["key"], t["shape"], t["dtype"], t["device"], t["nbytes"]) for t in info["tensors"]]


NAMES = ("train-16g.pt", "train-2g6.pt", "train-2g6-legacy.pt", "keys-50k.pt")


def main():
    from rangeserver import RangeServer

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="perf-data")
    parser.add_argument("--s3", action="store_true", help="also over S3 (moto on 127.0.0.1)")
    parser.add_argument(
        "--s3-files",
        default="train-2g6.pt,keys-50k.pt",
        help="files uploaded to moto (it holds each object in memory)",
    )
    args = parser.parse_args()
    head = (
        f"{'file':<26} {'what':<28} {'requests':>8} {'bytes':>12} {'% of file':>9} "
        f"{'seconds':>8}  check"
    )
    print(head)
    print("-" * len(head))
    with RangeServer(args.data, lifetime=1800) as server:
        rows(args.data, NAMES, server, lambda name: f"{server.url}/{name}", "http")
    if args.s3:
        s3_rows(args)


def s3_rows(args):
    import uuid

    from s3server import S3Server

    names = [
        name for name in args.s3_files.split(",") if os.path.exists(os.path.join(args.data, name))
    ]
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    with S3Server(lifetime=1800) as server:
        os.environ.update(server.environment())
        client = server.client()
        client.create_bucket(Bucket=bucket)
        for name in names:
            start = time.perf_counter()
            with open(os.path.join(args.data, name), "rb") as f:  # one PUT, not multipart:
                client.put_object(Bucket=bucket, Key=name, Body=f)  # moto joins parts in memory
            print(f"(uploaded {name} to moto in {time.perf_counter() - start:.1f} s)")
        rows(args.data, names, server, lambda name: f"s3://{bucket}/{name}", "s3")


def rows(data, names, server, url_of, label):
    from ckpt_viewer.core.listing import remote
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.progress import run
    from ckpt_viewer.core.values.stats import compute

    for name in names:
        path = os.path.join(data, name)
        if not os.path.exists(path):
            print(f"skipping {name}: not built")
            continue
        size = os.path.getsize(path)
        url = url_of(name)
        server.reset()
        start = time.perf_counter()
        checkpoint = open_checkpoint(url)
        seconds = time.perf_counter() - start
        same = listing(checkpoint) == listing(open_checkpoint(path))
        requests, sent = len(server.requests), server.bytes_sent
        ok = requests <= 6 and sent <= size / 1000
        budget = ("ok" if ok else "OVER") if name == "train-16g.pt" else "no budget"
        print(
            f"{label + ' ' + name:<26} {'open (listing)':<28} {requests:>8} {sent:>12,} "
            f"{100 * sent / size:>8.4f}% {seconds:>8.2f}  "
            f"{budget}; listing {'equals' if same else 'DIFFERS FROM'} local"
        )
        if name == "keys-50k.pt":
            continue
        key, tensor, _ = max(checkpoint.tensors(), key=lambda item: item[1].nbytes)
        server.reset()
        start = time.perf_counter()
        stats = run(compute(tensor))
        seconds = time.perf_counter() - start
        local = open_checkpoint(path).find(key).tensor
        same = run(compute(local)).mean == stats.mean
        extra = server.bytes_sent - tensor.nbytes
        print(
            f"{'':<26} {'stats ' + key[-22:]:<28} {len(server.requests):>8} "
            f"{server.bytes_sent:>12,} {100 * server.bytes_sent / size:>8.4f}% "
            f"{seconds:>8.2f}  tensor {tensor.nbytes:,} B + {extra:,} B "
            f"({'ok' if extra <= 2 * remote.BLOCK else 'OVER'}); "
            f"mean {'equals' if same else 'DIFFERS FROM'} local"
        )


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.dirname(here))  # tests/, for rangeserver
    main()
