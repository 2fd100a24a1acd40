#!/usr/bin/env python3
"""Open N SSE streams through a proxy, hold them all open at once, and report the proxy's
memory at steady state (used by benches/memory.sh).

Each stream is one connection: a streaming chat completion with a prompt of --prompt-bytes,
read until its first event arrives, then left open and unread: the backend sends an event a
second, which the sockets' kernel buffers hold for many minutes, so nothing piles up in the
proxy and the client spends no CPU beside it. Once every stream is open, the script waits
--settle seconds, samples the
proxy's VmRSS from /proc every 100 ms for --sample seconds, prints one JSON line with the
median, and closes every connection. Standard library only; everything on 127.0.0.1.
"""

import argparse
import asyncio
import json
import statistics
import sys
import time


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def request(args: argparse.Namespace) -> bytes:
    # The prompt is ASCII filler, so its JSON size is what --prompt-bytes says.
    prompt = ("lorem ipsum " * (args.prompt_bytes // 12 + 1))[: args.prompt_bytes]
    body = json.dumps(
        {
            "model": args.model,
            "stream": True,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": prompt}],
        }
    ).encode()
    head = (
        f"POST {args.path} HTTP/1.1\r\nhost: {args.host}\r\n"
        f"authorization: Bearer {args.token}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def hold_one(args, payload, opening, opened, release, failures):
    try:
        async with opening:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port), args.timeout
            )
            writer.write(payload)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), args.timeout)
            status = head.split(b" ", 2)[1]
            if status != b"200":
                failures.append(f"status {status.decode(errors='replace')}")
                writer.close()
                return
            # The first SSE event ends with a blank line (inside the chunked framing).
            await asyncio.wait_for(reader.readuntil(b"\n\n"), args.timeout)
        opened.append(1)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
        failures.append(type(e).__name__)
        return
    try:
        await release.wait()
        # Still open at the end: a proxy that gave up on it has closed it (EOF waiting).
        if reader.at_eof():
            failures.append("closed early")
    finally:
        writer.close()


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/resource_server/v1/chat/completions")
    p.add_argument("--model", default="facebook/opt-125m")
    p.add_argument("--token", default="bench")
    p.add_argument("--streams", type=int, default=2000)
    p.add_argument("--prompt-bytes", type=int, default=64)
    p.add_argument("--pid", type=int, required=True, help="the proxy process to measure")
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--sample", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=30.0, help="per step of a stream's opening")
    p.add_argument("--parallel-opens", type=int, default=128)
    args = p.parse_args()

    payload = request(args)
    opening = asyncio.Semaphore(args.parallel_opens)
    release = asyncio.Event()
    opened: list[int] = []
    failures: list[str] = []
    before = rss_kib(args.pid)
    started = time.monotonic()
    tasks = [
        asyncio.ensure_future(hold_one(args, payload, opening, opened, release, failures))
        for _ in range(args.streams)
    ]
    # Every stream is open or has failed (the open loop is bounded by --timeout per step).
    while len(opened) + len(failures) < args.streams:
        await asyncio.sleep(0.1)
    open_s = time.monotonic() - started
    await asyncio.sleep(args.settle)
    samples = []
    deadline = time.monotonic() + args.sample
    while time.monotonic() < deadline:
        samples.append(rss_kib(args.pid))
        await asyncio.sleep(0.1)
    held = statistics.median(samples)
    still_open = len(opened) - failures.count("closed early")
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(
        json.dumps(
            {
                "streams": args.streams,
                "opened": len(opened),
                "held_to_the_end": still_open,
                "failures": len(failures),
                "first_failures": sorted(set(failures))[:5],
                "prompt_bytes": args.prompt_bytes,
                "open_seconds": round(open_s, 2),
                "rss_kib_before": before,
                "rss_kib_held": held,
                "kib_per_stream": round((held - before) / max(still_open, 1), 2),
            }
        )
    )
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
