"""Many concurrent event streams on raw asyncio sockets (no HTTP client library in the way), for `make bench-load`.

    python -m benchmarks.sse_clients --port 8000 --key KEY --streams 1000 --hold 20 JOB_ID [JOB_ID ...]

Opens `--streams` connections to `GET /v1/jobs/{id}/events` (spread over the job ids given, which should stay
queued so that the streams stay open), at most `--open-at-once` connecting at a time; each must answer 200 with
`text/event-stream` and send its first `state` event within `--timeout` s. All are held open for `--hold` s
(reading whatever comes: keep-alives), then closed. Prints one JSON line: how many opened, got their first event,
were still open at the end, and the errors (with a few samples).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class Tally:
    opened: int = 0
    first_event: int = 0
    open_at_end: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    first_event_s: list[float] = field(default_factory=list)

    def error(self, detail: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(detail[:200])


async def one_stream(port: int, key: str, job_id: str, tally: Tally, gate: asyncio.Semaphore, release: asyncio.Event,
                     timeout: float) -> None:
    started = time.monotonic()
    writer: asyncio.StreamWriter | None = None
    try:
        async with gate:
            reader, stream = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
            writer = stream
            stream.write(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                         f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n".encode())
            await stream.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
            if " 200 " not in status_line + " " or b"text/event-stream" not in head.lower():
                tally.error(f"{job_id}: {status_line}")
                return
            tally.opened += 1
            buffer = b""
            while b"event: state" not in buffer:
                chunk = await asyncio.wait_for(reader.read(4096), timeout)
                if not chunk:
                    tally.error(f"{job_id}: closed before the first event")
                    return
                buffer += chunk
            tally.first_event += 1
            tally.first_event_s.append(time.monotonic() - started)
        while not release.is_set():  # hold the stream, reading keep-alives, until every stream had its turn
            read = asyncio.ensure_future(reader.read(4096))
            done, _ = await asyncio.wait({read, asyncio.ensure_future(release.wait())},
                                         return_when=asyncio.FIRST_COMPLETED)
            if read in done:
                if not read.result():
                    tally.error(f"{job_id}: the server closed the stream")
                    return
            else:
                read.cancel()
        tally.open_at_end += 1
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        tally.error(f"{job_id}: {exc!r}")
    finally:
        if writer is not None:
            writer.close()


async def run(args: argparse.Namespace) -> Tally:
    tally = Tally()
    gate = asyncio.Semaphore(args.open_at_once)
    release = asyncio.Event()
    tasks = [asyncio.create_task(one_stream(args.port, args.key, args.job_ids[i % len(args.job_ids)], tally, gate,
                                            release, args.timeout))
             for i in range(args.streams)]
    deadline = time.monotonic() + args.timeout * 4 + 10
    while tally.first_event + tally.errors < args.streams and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    print(json.dumps({"phase": "all_open", "first_event": tally.first_event, "errors": tally.errors}), flush=True)
    await asyncio.sleep(args.hold)
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), args.timeout + 10)
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sse_clients", description=__doc__.split("\n\n")[0])
    parser.add_argument("job_ids", nargs="+")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds all streams are held open")
    parser.add_argument("--open-at-once", type=int, default=100, help="connections being opened at a time")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    tally = asyncio.run(run(args))
    ordered = sorted(tally.first_event_s)
    print(json.dumps({
        "phase": "done", "streams": args.streams, "opened": tally.opened, "first_event": tally.first_event,
        "open_at_end": tally.open_at_end, "errors": tally.errors, "error_samples": tally.samples,
        "first_event_p50_ms": round(1000 * ordered[len(ordered) // 2], 1) if ordered else None,
        "first_event_p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1)
        if ordered else None,
        "seconds": round(time.monotonic() - started, 1),
    }), flush=True)
    return 0 if tally.errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
