"""Hostile clients against a real server: memory, slow connections, disconnects, batch overload, shutdown.

    python -m benchmarks.hardening                       # every probe, the built-in demo bundle
    python -m benchmarks.hardening --probes memory,slow  # some of them
    python -m benchmarks.hardening --bundle artifacts/ser/1.0.0 --json bench-results/hardening.json

Each probe starts ``python -m service`` on loopback in a subprocess (its own settings, its log in a file),
attacks it with raw sockets and ``httpx``, and reports what a user and an operator would see:

* **memory**: ``--bodies`` concurrent JSON bodies of 24 MB each; the server's peak resident memory over its
  idle figure (``/proc/<pid>/status`` VmHWM, reset before the burst) and the statuses and ``error_type`` of
  the answers;
* **slow**: ``--slow-clients`` connections that send one byte a second of headers (half of them) or of a
  declared body (the other half); how many the server has closed after ``--slow-seconds``, and the latency
  of normal predictions meanwhile against the same requests before;
* **disconnect**: ``--disconnects`` clients that send half of a body and close; the 5xx counted in
  ``/metrics``, and the tracebacks and bytes added to the log;
* **batch**: 20 concurrent 16-file batches against ``SER_QUEUE_DEPTH=32`` (two of them): how many got results, a top-level
  503 with ``Retry-After``, or a 200 with items refused;
* **shutdown**: SIGTERM with ``SER_SHUTDOWN_TIMEOUT_S=1`` while the queue holds several seconds of work: the
  statuses and shapes of the answers, and the utterances the model ran after the last answer was sent.

The figures go to stdout and, with ``--json``, to a file. The reliability tests run the same probes with
smaller numbers and assert on them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import REPO_ROOT, machine_facts, read_proc_status

PROBES = ("memory", "slow", "disconnect", "batch", "shutdown")


@dataclass
class Server:
    """A ``python -m service`` subprocess on loopback."""

    process: subprocess.Popen[bytes]
    url: str
    port: int
    log_file: Path

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace")

    def status(self) -> dict[str, float]:
        return read_proc_status(self.process.pid)

    def reset_peak(self) -> None:
        """Make VmHWM start again from the current resident size (Linux: clear_refs 5)."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")


@contextlib.contextmanager
def running_server(work: Path, env: dict[str, str], *, bundle: Path | None = None) -> Iterator[Server]:
    """Start the service with ``env`` (SER_* settings) and wait until it is ready; stop it afterwards."""
    import httpx

    from benchmarks.http import free_port, stop_server

    port = free_port()
    log_file = work / f"server-{port}.log"
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SER_ARTIFACTS": str(work / "no-artifacts"),
        "SER_JOBS_DIR": str(work / f"jobs-{port}"),
        "SER_PORT": str(port),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        **env,
    }
    if bundle is not None:
        full_env["SER_BUNDLE"] = str(bundle)
    with log_file.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", port, log_file)
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}):\n{server.log_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/ready", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server was not ready after 300 s")
            time.sleep(0.1)
        yield server
    finally:
        stop_server(process)


def clip_wav(seconds: float, seed: int = 3) -> bytes:
    from benchmarks.http import wav_bytes
    from shared.signals import speech_like

    return wav_bytes(speech_like(seconds, seed=seed))


def typed(response: Any) -> bool:
    """The answer has the JSON error shape (or is a success)."""
    if response.status_code < 400:
        return True
    try:
        body = response.json()
    except ValueError:
        return False
    return (
        isinstance(body, dict)
        and isinstance(body.get("error_type"), str)
        and isinstance(body.get("error"), str)
    )


def describe(response: Any) -> str:
    if response.status_code < 400:
        return str(response.status_code)
    try:
        return f"{response.status_code} {response.json().get('error_type')}"
    except ValueError:
        return f"{response.status_code} (not JSON)"


def http_5xx_in_metrics(text: str) -> int:
    total = 0.0
    for line in text.splitlines():
        match = re.match(r'ser_http_requests_total\{.*status="(\d+)".*\}\s+([0-9.e+]+)', line)
        if match and match.group(1).startswith("5"):
            total += float(match.group(2))
    return int(total)


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- probes -----------------------------------------------------------------------------------------


async def _post_many(url: str, bodies: list[tuple[bytes, str]], timeout: float) -> list[Any]:
    import httpx

    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def one(body: bytes, media: str) -> Any:
            try:
                return await client.post(url, content=body, headers={"content-type": media})
            except httpx.HTTPError as exc:
                return exc

        return list(await asyncio.gather(*(one(b, m) for b, m in bodies)))


def probe_memory(
    work: Path, bodies: int = 60, mb: float = 24.0, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``bodies`` concurrent JSON bodies of ``mb`` MB (base64 of random bytes: not audio)."""
    raw = np.random.default_rng(0).integers(0, 256, int(mb * 1e6 * 3 / 4), dtype=np.uint8).tobytes()
    body = json.dumps({"audio_base64": base64.b64encode(raw).decode()}).encode()
    with running_server(work, env or {}) as server:
        time.sleep(1.0)
        idle = server.status().get("VmRSS_mb", 0.0)
        server.reset_peak()
        start = time.perf_counter()
        answers = asyncio.run(
            _post_many(f"{server.url}/v1/predict", [(body, "application/json")] * bodies, timeout=300)
        )
        elapsed = time.perf_counter() - start
        peak = server.status().get("VmHWM_mb", 0.0)
        good = _post_many(f"{server.url}/v1/predict", [(clip_wav(2.0), "audio/wav")], timeout=60)
        after = asyncio.run(good)[0]
    outcomes = Counter(describe(a) if not isinstance(a, Exception) else type(a).__name__ for a in answers)
    return {
        "bodies": bodies,
        "body_mb": round(len(body) / 1e6, 1),
        "idle_rss_mb": round(idle, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_over_idle_mb": round(peak - idle, 1),
        "seconds": round(elapsed, 2),
        "outcomes": dict(outcomes),
        "all_typed": all(not isinstance(a, Exception) and typed(a) and a.status_code >= 400 for a in answers),
        "next_request": describe(after) if not isinstance(after, Exception) else type(after).__name__,
    }


async def _slow_client(port: int, kind: str, seconds: float) -> dict[str, Any]:
    """Send one byte a second of headers (``headers``) or of a declared 1 MB body (``body``); return
    when the server closes the connection or ``seconds`` pass."""
    start = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return {"kind": kind, "closed_after_s": 0.0, "refused": type(exc).__name__}
    head = f"POST /v1/predict HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: audio/wav\r\n"
    if kind == "body":
        writer.write(f"{head}content-length: 1000000\r\n\r\n".encode())
        drip = b"R"
    else:
        writer.write(b"POST /v1/predict HTTP/1.1\r\n")
        drip = b"x"
    response = b""
    closed_after = None
    try:
        while time.monotonic() - start < seconds:
            writer.write(drip)
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout=1.0)
            except asyncio.TimeoutError:
                continue
            if not data:
                closed_after = time.monotonic() - start
                break
            response += data
    except (ConnectionError, OSError):
        closed_after = time.monotonic() - start
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    status = response.split(b"\r\n", 1)[0].decode("latin-1") if response else ""
    return {"kind": kind, "closed_after_s": closed_after, "status_line": status}


async def _latencies(url: str, body: bytes, n: int) -> list[float]:
    import httpx

    out = []
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(n):
            start = time.perf_counter()
            response = await client.post(
                f"{url}/v1/predict", content=body, headers={"content-type": "audio/wav"}
            )
            response.raise_for_status()
            out.append(time.perf_counter() - start)
    return out


def probe_slow(
    work: Path, clients: int = 200, seconds: float = 30.0, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``clients`` slow connections; normal predictions measured before and while they hang on."""
    clip = clip_wav(2.0)
    with running_server(work, env or {}) as server:
        before = asyncio.run(_latencies(server.url, clip, 10))

        async def attack() -> tuple[list[dict[str, Any]], list[float]]:
            slow = [
                asyncio.create_task(_slow_client(server.port, "headers" if i % 2 == 0 else "body", seconds))
                for i in range(clients)
            ]
            await asyncio.sleep(1.0)
            during = await _latencies(server.url, clip, 10)
            return list(await asyncio.gather(*slow)), during

        results, during = asyncio.run(attack())
    closed = [r for r in results if r["closed_after_s"] is not None]
    by_kind = {
        kind: {
            "clients": sum(r["kind"] == kind for r in results),
            "closed": sum(r["kind"] == kind for r in closed),
            "closed_after_s_max": round(
                max((r["closed_after_s"] for r in closed if r["kind"] == kind), default=0), 1
            ),
            "status_lines": dict(Counter(r["status_line"] for r in closed if r["kind"] == kind)),
        }
        for kind in ("headers", "body")
    }
    return {
        "clients": clients,
        "seconds": seconds,
        "closed": len(closed),
        "by_kind": by_kind,
        "latency_before_p50_s": round(float(np.median(before)), 4),
        "latency_during_p50_s": round(float(np.median(during)), 4),
        "latency_during_max_s": round(float(np.max(during)), 4),
    }


async def _disconnect_midway(port: int, path: str, body: bytes, media: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: {media}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()


def probe_disconnect(work: Path, clients: int = 50, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``clients`` uploads cut off halfway: single predictions, batches and JSON bodies."""
    import httpx

    clip = clip_wav(3.0)
    boundary = "ser-probe-boundary"
    part = (
        (
            f'--{boundary}\r\ncontent-disposition: form-data; name="files"; filename="a.wav"\r\n'
            "content-type: audio/wav\r\n\r\n"
        ).encode()
        + clip
        + b"\r\n"
    )
    batch = part * 4 + f"--{boundary}--\r\n".encode()
    as_json = json.dumps({"audio_base64": base64.b64encode(clip).decode()}).encode()
    kinds = [
        ("/v1/predict", clip, "audio/wav"),
        ("/v1/predict/batch", batch, f"multipart/form-data; boundary={boundary}"),
        ("/v1/predict", as_json, "application/json"),
        ("/v1/timeline", clip * 4, "audio/wav"),
    ]
    with running_server(work, env or {}) as server:
        metrics_before = httpx.get(f"{server.url}/metrics").text
        log_before = len(server.log_text().encode())

        async def attack() -> None:
            await asyncio.gather(
                *(_disconnect_midway(server.port, *kinds[i % len(kinds)]) for i in range(clients))
            )
            await asyncio.sleep(1.5)

        asyncio.run(attack())
        after = httpx.post(f"{server.url}/v1/predict", content=clip, headers={"content-type": "audio/wav"})
        metrics_after = httpx.get(f"{server.url}/metrics").text
        log = server.log_text()
    added = log.encode()[log_before:].decode(errors="replace")
    return {
        "clients": clients,
        "http_5xx_added": http_5xx_in_metrics(metrics_after) - http_5xx_in_metrics(metrics_before),
        "disconnects_counted": int(
            metric_sum(metrics_after, "ser_http_requests_total", status="499")
            - metric_sum(metrics_before, "ser_http_requests_total", status="499")
        ),
        "log_bytes_added": len(added.encode()),
        "log_lines_added": added.count("\n"),
        "tracebacks_added": added.count("Traceback"),
        "never_retrieved": added.count("never retrieved"),
        "next_request": describe(after),
    }


def probe_batch(
    work: Path, batches: int = 20, files: int = 16, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``batches`` concurrent batches of ``files`` clips against a queue of two batches."""
    import httpx

    clips = [clip_wav(2.5) for _ in range(files)]

    async def attack(url: str) -> list[Any]:
        limits = httpx.Limits(max_connections=batches + 2)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:

            async def one() -> Any:
                upload = [("files", (f"{i}.wav", c, "audio/wav")) for i, c in enumerate(clips)]
                return await client.post(f"{url}/v1/predict/batch", files=upload)

            return list(await asyncio.gather(*(one() for _ in range(batches))))

    with running_server(work, {"SER_QUEUE_DEPTH": str(2 * files), **(env or {})}) as server:
        answers = asyncio.run(attack(server.url))
    kinds: Counter[str] = Counter()
    for answer in answers:
        if answer.status_code == 200:
            items = answer.json()["results"]
            ok = sum(item["ok"] for item in items)
            kinds["200 all ok" if ok == len(items) else f"200 with {len(items) - ok} refused"] += 1
        elif answer.status_code == 503:
            kinds[
                f"503 {answer.json().get('error_type')}, Retry-After {answer.headers.get('retry-after')}"
            ] += 1
        else:
            kinds[describe(answer)] += 1
    return {"batches": batches, "files": files, "queue_depth": 2 * files, "outcomes": dict(kinds)}


def probe_shutdown(work: Path, requests: int = 48, env: dict[str, str] | None = None) -> dict[str, Any]:
    """SIGTERM with a 1 s grace period while ``requests`` 20 s clips wait for the model."""
    import httpx

    clip = clip_wav(20.0)
    settings = {"SER_SHUTDOWN_TIMEOUT_S": "1", "SER_QUEUE_DEPTH": str(requests), "SER_LOG_LEVEL": "DEBUG"}
    with running_server(work, {**settings, **(env or {})}) as server:

        async def attack() -> tuple[list[Any], float]:
            limits = httpx.Limits(max_connections=requests + 2)
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:

                async def one() -> Any:
                    try:
                        return await client.post(
                            f"{server.url}/v1/predict", content=clip, headers={"content-type": "audio/wav"}
                        )
                    except httpx.HTTPError as exc:
                        return exc

                tasks = [asyncio.create_task(one()) for _ in range(requests)]
                await asyncio.sleep(1.0)
                server.process.send_signal(signal.SIGTERM)
                answers = list(await asyncio.gather(*tasks))
                return answers, time.time()

        answers, answered_at = asyncio.run(attack())
        server.process.wait(timeout=120)
        log = server.log_text()
    outcomes = Counter(describe(a) if not isinstance(a, Exception) else type(a).__name__ for a in answers)
    late = ran = 0
    for line in log.splitlines():
        match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) .*starting a batch of (\d+)", line)
        if match:
            stamp = time.mktime(time.strptime(match.group(1).split(",")[0], "%Y-%m-%d %H:%M:%S"))
            stamp += int(match.group(1).split(",")[1]) / 1000
            ran += int(match.group(2))
            if stamp > answered_at:
                late += int(match.group(2))
    return {
        "requests": requests,
        "grace_s": 1,
        "outcomes": dict(outcomes),
        "all_json": all(not isinstance(a, Exception) and typed(a) for a in answers),
        "retry_after_on_503": all(
            a.headers.get("retry-after") is not None
            for a in answers
            if not isinstance(a, Exception) and a.status_code == 503
        ),
        "utterances_run": ran,
        "utterances_run_after_last_answer": late,
        "tracebacks_in_log": log.count("Traceback"),
        "exit_status": server.process.returncode,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hardening", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--probes", default=",".join(PROBES), help=f"comma-separated, of {', '.join(PROBES)}")
    parser.add_argument("--bodies", type=int, default=60, help="concurrent 24 MB bodies (default 60)")
    parser.add_argument("--slow-clients", type=int, default=200, help="slow connections (default 200)")
    parser.add_argument("--slow-seconds", type=float, default=30.0, help="how long they try (default 30)")
    parser.add_argument("--disconnects", type=int, default=50, help="uploads cut off halfway (default 50)")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    unknown = sorted(set(probes) - set(PROBES))
    if unknown:
        parser.error(f"unknown probes {unknown}; choose from {', '.join(PROBES)}")
    result: dict[str, Any] = {"machine": machine_facts()}
    with tempfile.TemporaryDirectory(prefix="ser-hardening-") as tmp:
        work = Path(tmp)
        for name in probes:
            start = time.perf_counter()
            if name == "memory":
                figures = probe_memory(work, bodies=args.bodies)
            elif name == "slow":
                figures = probe_slow(work, clients=args.slow_clients, seconds=args.slow_seconds)
            elif name == "disconnect":
                figures = probe_disconnect(work, clients=args.disconnects)
            elif name == "batch":
                figures = probe_batch(work)
            else:
                figures = probe_shutdown(work)
            figures["probe_seconds"] = round(time.perf_counter() - start, 1)
            result[name] = figures
            print(f"{name}: {json.dumps(figures)}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
