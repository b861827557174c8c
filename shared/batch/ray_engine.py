"""The Ray engine: the same decoder and models as the local engine, on Ray Data.

The file list becomes a dataset; ``map_batches`` decodes it in CPU tasks (``Decoder``) and runs the model
in an actor pool (``ActorPoolStrategy``), each actor loading one replica of the model once, with
``gpus_per_worker`` GPUs where the cluster has them. Each file's rows come back to this process as one
JSON text, where the caller writes them (``shared.batch.output``): the same file as the local engine,
resumable the same way. Ray retries the tasks and restarts the actors of a node that dies; rows that
arrive twice for one file are dropped by the output, so every file appears once.

Every node needs this package installed and the files (and the bundle) readable at the same paths, as
on a shared file system. Install with the ``ray`` extra: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.batch.inputs import InputError
from shared.batch.pipeline import BatchModel, Decoded, Decoder
from shared.batch.rows import FileRows

log = logging.getLogger(__name__)

#: CPUs a decoding task reserves: none. Decoding is light next to the model, and a task that waited for
#: a CPU held by the replicas it feeds would wait forever (after a node is lost, say); how many run at
#: once is capped instead (``DECODE_TASKS_PER_WORKER``).
DECODE_CPUS = 0
DECODE_TASKS_PER_WORKER = 2
#: How long ``check_address`` waits for a cluster's port (s).
CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide a run goes on Ray.

    Attributes:
        address: a running cluster (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``); None starts Ray here.
        workers: the most model replicas (actors).
        cpus_per_worker, gpus_per_worker: what each replica holds.
    """

    address: str | None = None
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


def require_ray() -> Any:
    """The ``ray`` module.

    Raises:
        InputError: Ray is not installed.
    """
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise InputError(
            "the Ray engine needs Ray Data: pip install 'ray[data]' (or this project's extra: "
            "pip install -e '.[ray]')"
        ) from exc
    return ray


def check_address(address: str | None) -> None:
    """Fail at once, not after Ray's own minute of retries, when a cluster's address cannot be reached.

    ``None`` (start a local instance) and ``"auto"`` (Ray finds the cluster on this machine) pass.

    Raises:
        InputError: the address is not ``HOST:PORT`` (optionally ``ray://``), or nothing answers there.
    """
    if address in (None, "", "auto", "local"):
        return
    assert address is not None
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"the Ray address {address!r} is not HOST:PORT (or ray://HOST:PORT, or auto)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise InputError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; start it with "
            "'ray start --head' and give the address it prints (default port 6379)"
        ) from exc


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address``, or start a local instance; True when this call started Ray (the
    caller then shuts it down).

    Raises:
        InputError: Ray is not installed, or the address is not a Ray cluster this process can join.
    """
    ray = require_ray()
    check_address(address)
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # not a line per connection retry
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise InputError(f"cannot join {where}: {str(exc).splitlines()[0]}") from exc
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the command shows its own
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return True


def _decode_batch(batch: dict[str, np.ndarray], decoder: Decoder) -> dict[str, np.ndarray]:
    """A Ray Data batch of paths -> the decoded files, waveforms as float32 bytes."""
    items = [decoder(str(p)) for p in batch["path"]]
    return {
        "path": np.array([d.path for d in items], dtype=object),
        "sha256": np.array([d.sha256 for d in items], dtype=object),
        "wave": np.array(
            [b"" if d.wave is None else d.wave.astype(np.float32).tobytes() for d in items], dtype=object
        ),
        "decoded": np.array([d.wave is not None for d in items]),
        "duration_s": np.array([math.nan if d.duration_s is None else d.duration_s for d in items]),
        "error_type": np.array([d.error_type or "" for d in items], dtype=object),
        "error": np.array([d.error or "" for d in items], dtype=object),
    }


def _decoded(batch: dict[str, np.ndarray], i: int) -> Decoded:
    duration = float(batch["duration_s"][i])
    return Decoded(
        path=str(batch["path"][i]),
        sha256=str(batch["sha256"][i]),
        wave=np.frombuffer(batch["wave"][i], dtype=np.float32) if batch["decoded"][i] else None,
        duration_s=None if math.isnan(duration) else duration,
        error_type=str(batch["error_type"][i]) or None,
        error=str(batch["error"][i]) or None,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class ModelReplica:
    """One actor's copy of the model (``map_batches``' callable class): loaded once per actor."""

    def __init__(self, model: BatchModel) -> None:
        self.model = model

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [_decoded(batch, i) for i in range(len(batch["path"]))]
        results = self.model.rows(items)
        texts = [json.dumps([{k: _jsonable(v) for k, v in row.items()} for row in rows]) for rows in results]
        return {"rows": np.array(texts, dtype=object)}


def run_ray(
    paths: Sequence[str],
    decoder: Decoder,
    model: BatchModel,
    on_results: Callable[[list[FileRows]], None],
    settings: RaySettings = RaySettings(),
    *,
    batch_size: int = 8,
    stop: threading.Event | None = None,
) -> None:
    """Run ``model`` over ``paths`` on the cluster ``settings.address`` names (or a Ray instance started
    here, shut down at the end; one this process already joined is used as it is).

    At most ``settings.workers`` actors (Ray Data starts with one and adds more while there is work and
    room), each with its CPUs and GPUs; decoding runs in tasks of ``batch_size`` files. ``on_results``
    gets each file's rows as they arrive (in no set order). ``stop`` ends the run at the next rows.

    Raises:
        InputError: Ray is not installed, or the address cannot be reached.
    """
    ray = require_ray()
    started = connect(settings.address)
    try:
        if paths:
            _run(ray, paths, decoder, model, on_results, settings, batch_size, stop)
    finally:
        if started:
            ray.shutdown()


def _run(
    ray: Any,
    paths: Sequence[str],
    decoder: Decoder,
    model: BatchModel,
    on_results: Callable[[list[FileRows]], None],
    settings: RaySettings,
    batch_size: int,
    stop: threading.Event | None,
) -> None:
    dataset = ray.data.from_items(
        [{"path": p} for p in paths], override_num_blocks=_blocks(len(paths), batch_size)
    )
    decoded = dataset.map_batches(
        _decode_batch,
        fn_kwargs={"decoder": decoder},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=DECODE_CPUS,  # not the replicas' resources: Ray keeps the two stages apart
        concurrency=DECODE_TASKS_PER_WORKER * max(1, settings.workers),
    )
    predicted = decoded.map_batches(
        ModelReplica,
        fn_constructor_args=(model,),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, settings.workers)),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=settings.cpus_per_worker,
        num_gpus=settings.gpus_per_worker or None,
    )
    for batch in predicted.iter_batches(batch_size=None, batch_format="numpy"):
        if stop is not None and stop.is_set():
            break
        on_results([[_restore(row) for row in json.loads(text)] for text in batch["rows"]])


def _restore(row: dict[str, Any]) -> dict[str, Any]:
    if isinstance(row.get("embedding"), list):
        row["embedding"] = np.asarray(row["embedding"], dtype=np.float32)
    return row


def _blocks(n: int, batch_size: int) -> int:
    """Enough blocks for the cluster to share the work out, not so many that each is a few files."""
    return max(1, min(n // batch_size, 256))
