"""Every serving knob in one place: ``ServiceSettings``, read from ``SER_*`` environment variables.

Each field documents its unit and default; ``GET /v1/info`` echoes the effective values (API keys are
never echoed, only how many there are). List settings (``SER_CORS_ORIGINS``, ``SER_API_KEYS``) accept
a comma-separated string as well as a JSON list.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.backbones.options import EncoderOptions
from shared.constants import DEFAULT_MAX_SECONDS, DEFAULT_MIN_SECONDS, DEFAULT_SILENCE_DBFS
from shared.timeline import TimelineOptions
from shared.vad import VadSettings

MIB = 1024 * 1024


def _default_worker_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def available_memory_bytes() -> int | None:
    """The memory this process may use: the cgroup's limit where one is set, else the machine's."""
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return None


def _default_body_budget() -> int:
    # A request holds about two to three times its body while it is parsed and decoded: 1/64 of the
    # memory, between 32 and 128 MiB, keeps a burst of the largest bodies to a few hundred MB.
    memory = available_memory_bytes() or 8 * 1024 * MIB
    return int(min(128 * MIB, max(32 * MIB, memory // 64)))


class ServiceSettings(BaseSettings):
    """Settings of the inference service (environment prefix ``SER_``)."""

    model_config = SettingsConfigDict(env_prefix="SER_", extra="ignore", validate_default=True)

    # --- model -------------------------------------------------------------------------------
    bundle: Path | None = Field(
        default=None,
        description="A bundle folder (holding manifest.json), a <name> folder of versions, or an artifacts "
        "root: the newest bundle found there is served; it must hold one. Unset: the newest bundle under "
        "SER_ARTIFACTS, else the demo model built into the package (eGeMAPS on RAVDESS; for trying the "
        "service, non-commercial).",
    )
    artifacts: Path = Field(
        default=Path("artifacts"),
        description="Where to look for bundles when SER_BUNDLE is unset; when it holds none (or does not "
        "exist), the built-in demo model is served.",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Where the speech encoder runs: 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'. "
        "eGeMAPS bundles always run on the CPU.",
    )
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="Precision of the speech encoder: 'auto' is the device's fast one (bf16 on GPUs and on "
        "CPUs with bf16 matrix units, else fp32); or fp32, bf16, fp16 (CUDA only). Half precision keeps "
        "matrix weights in 16 bits and activations in fp32. A precision other than the one of the bundle's "
        "training embeddings is logged as a warning.",
    )
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        default="auto",
        description="How the encoder runs: 'auto' chooses by the machine (with SER_DTYPE=auto: torch in bf16 "
        "where the CPU has bf16 units; ONNX Runtime int8 where it has int8 dot products (VNNI) but no bf16 "
        "units, the 'onnx' extra is installed and the int8 graph passes its accuracy check; else torch in "
        "fp32; /v1/info says which and why); 'torch'; or ONNX Runtime on the CPU ('onnx': the same "
        "embeddings as torch fp32; 'onnx-int8': int8 matrix products, faster, embeddings within about 3% "
        "of fp32). The ONNX backends need the 'onnx' extra; their first start exports the encoder to "
        "SER_ONNX_CACHE.",
    )
    backbone_model: str | None = Field(
        default=None,
        description="Load the encoder weights from this local folder instead of the manifest's hub id "
        "(it must hold the same checkpoint).",
    )
    hf_offline: bool = Field(
        default=False,
        description="Never contact the Hugging Face hub: the encoder must be in the local cache or a local "
        "folder. Also implied by HF_HUB_OFFLINE=1.",
    )
    torch_threads: int = Field(
        default=0,
        ge=0,
        description="Compute threads for the encoder (torch or ONNX Runtime); 0 means the CPUs this process "
        "may use (its affinity and any container CPU quota).",
    )
    window_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Utterances longer than this are encoded in consecutive windows of this length "
        "(seconds), so the encoder's memory is bounded by the window.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Folder for derived model files: half-precision weight copies with their corrected "
        "parameters, and ONNX exports; unset means $XDG_CACHE_HOME/ser or ~/.cache/ser.",
    )
    onnx_cache: Path | None = Field(
        default=None,
        description="Folder for ONNX exports alone; unset means <cache folder>/onnx.",
    )

    stay_up_on_failure: bool = Field(
        default=False,
        description="When the bundle or the encoder cannot be loaded, keep the process up and report "
        "'failed' on /health and /ready (503 model_failed, no Retry-After) instead of exiting with status 3.",
    )

    # --- HTTP --------------------------------------------------------------------------------
    host: str = Field(
        default="127.0.0.1", description="Interface to listen on (the Docker image sets 0.0.0.0)."
    )
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to listen on.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (comma-separated); empty disables CORS.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="When set (comma-separated), every /v1 route and /emotion_predict need one of these in "
        "the X-API-Key header, else 401; so does /metrics, unless SER_METRICS_PUBLIC. Keys shorter than 16 "
        "characters are warned about at start.",
    )
    auth_max_failures: int = Field(
        default=10,
        ge=1,
        description="Wrong or missing API keys one client address may send within SER_AUTH_LOCKOUT_S; past "
        "it, its requests get 429 with Retry-After until the period ends.",
    )
    auth_lockout_s: float = Field(
        default=60.0,
        gt=0,
        description="The period, in seconds, over which failed API keys are counted, and how long a client "
        "address that sent too many is refused.",
    )
    metrics_public: bool | None = Field(
        default=None,
        description="Whether GET /metrics answers without an API key; unset: only when no API keys are set.",
    )

    # --- connections -------------------------------------------------------------------------
    max_connections: int = Field(
        default=512,
        ge=1,
        description="Most open client connections; a new one beyond it gets 503 overloaded (with "
        "Retry-After) and is closed. Keep it below the process's file-descriptor limit.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection has to send a whole request head, from its opening or the end of "
        "its previous response; past it, 408 header_timeout and the connection is closed.",
    )
    body_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="Longest pause, in seconds, between two chunks of a request body, and the start-up "
        "allowance before SER_MIN_UPLOAD_RATE applies; a body that stalls gets 408 body_timeout.",
    )
    min_upload_rate: float = Field(
        default=4096.0,
        gt=0,
        description="Slowest average rate a request body may arrive at, in bytes/s, after its first "
        "SER_BODY_TIMEOUT_S seconds; slower gets 408 body_timeout.",
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, description="Seconds an idle keep-alive connection is kept open."
    )
    max_header_bytes: int = Field(
        default=16384, ge=1024, description="Largest request head (request line and headers), in bytes."
    )
    body_budget_bytes: int = Field(
        default_factory=_default_body_budget,
        ge=1,
        description="Most bytes of request bodies held by all requests together (the long-recording routes "
        "stream to disk and are not counted). A body that does not fit gets 503 overloaded with Retry-After "
        "before it is read. Default: 1/64 of the memory (the cgroup limit where set), between 32 and 128 "
        "MiB; at least SER_MAX_UPLOAD_BYTES.",
    )

    # --- limits ------------------------------------------------------------------------------
    max_upload_bytes: int = Field(
        default=25 * MIB,
        ge=1,
        description="Largest request body in bytes (a whole multipart batch, or the JSON with its base64 "
        "text, which is 4/3 of the audio's size); larger requests get 413 before they are read.",
    )
    min_seconds: float = Field(
        default=DEFAULT_MIN_SECONDS,
        gt=0,
        description="Shortest accepted utterance, in seconds; shorter gets 422.",
    )
    max_seconds: float = Field(
        default=DEFAULT_MAX_SECONDS,
        gt=0,
        description="Longest accepted utterance, in seconds; longer gets 422 (decoding stops there).",
    )
    silence_dbfs: float = Field(
        default=DEFAULT_SILENCE_DBFS,
        le=0,
        description="An utterance none of whose 20 ms frames (its constant offset removed) is louder than "
        "this level (dBFS, root mean square) is refused as silent (422 audio_silent).",
    )
    require_speech: bool = Field(
        default=True,
        description="Refuse an utterance in which the voice-activity detector (Silero VAD, SER_VAD_*) finds "
        "no speech (422 audio_no_speech), instead of classifying it.",
    )
    max_batch_files: int = Field(
        default=16, ge=1, description="Most files one POST /v1/predict/batch request may carry."
    )
    request_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A prediction not finished after this many seconds (decoding, queue and inference) "
        "gets 503 with Retry-After.",
    )

    # --- sessions ----------------------------------------------------------------------------
    session_max: int = Field(
        default=1000,
        ge=1,
        description="Most client sessions (session_id) whose feature statistics are kept; a new session in "
        "a full store evicts the least recently used one (logged, and counted in "
        "ser_session_evictions_total).",
    )
    session_memory_mb: float = Field(
        default=32.0,
        gt=0,
        description="Most memory the session statistics may take, in MiB: it caps the number of sessions "
        "further for large embeddings (one session of 1024-d embeddings takes 24 KiB).",
    )
    session_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description="A session unused for this many seconds is forgotten.",
    )

    # --- long recordings: timelines and jobs ----------------------------------------------------
    timeline_max_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Longest recording POST /v1/timeline accepts, in seconds; longer gets 422 audio_too_long "
        "(decoding stops there). Longer recordings go through POST /v1/jobs.",
    )
    timeline_max_bytes: int = Field(
        default=200 * MIB,
        ge=1,
        description="Largest upload POST /v1/timeline accepts, in bytes; larger gets 413. Uploads are "
        "streamed to a temporary file, never held in memory.",
    )
    job_max_seconds: float = Field(
        default=4 * 3600.0,
        gt=0,
        description="Longest recording a job accepts, in seconds; longer fails the job with audio_too_long.",
    )
    job_max_bytes: int = Field(
        default=2048 * MIB,
        ge=1,
        description="Largest upload POST /v1/jobs accepts, in bytes; larger gets 413.",
    )
    jobs_max: int = Field(
        default=16,
        ge=1,
        description="Most long-recording analyses at once: jobs queued or running, plus POST /v1/timeline "
        "requests in progress; beyond it a new one gets 503 with Retry-After.",
    )
    job_workers: int = Field(
        default=1,
        ge=1,
        description="Jobs analysed at the same time (the model runs one piece of work at a time anyway; "
        "more workers only overlap decoding and speech detection).",
    )
    job_ttl_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="A finished, failed, cancelled or interrupted job (and its result) is deleted this many "
        "seconds after it ended.",
    )
    jobs_dir: Path = Field(
        default_factory=lambda: (
            Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "ser" / "jobs"
        ),
        description="Where the job database (jobs.sqlite3) and job uploads are kept; a restart finds "
        "finished results here. Default: $XDG_DATA_HOME/ser/jobs, else ~/.local/share/ser/jobs.",
    )
    timeline_window_s: float = Field(
        default=3.0,
        ge=0.5,
        le=30.0,
        description="Timeline window length in seconds (the classifier was trained on 1.3-5 s utterances).",
    )
    timeline_hop_s: float = Field(
        default=1.0, ge=0.1, le=30.0, description="Seconds between the starts of consecutive windows."
    )
    timeline_method: Literal["pooled", "exact"] = Field(
        default="pooled",
        description="pooled: a speech encoder runs once over each speech region and every window is pooled "
        "from its frames; exact: each window's audio is encoded on its own (as /v1/predict would). "
        "eGeMAPS always works as exact.",
    )
    timeline_smoothing: int = Field(
        default=1, ge=1, le=15, description="Windows averaged around each window (1: no smoothing)."
    )
    timeline_session: bool = Field(
        default=True,
        description="When the bundle has a session classifier, normalise each recording's windows with their "
        "own statistics (the recording is one session); false classifies every window alone.",
    )
    vad_threshold: float = Field(
        default=0.5, gt=0, lt=1, description="Silero VAD speech probability above which a frame is speech."
    )
    vad_min_speech_ms: int = Field(
        default=250, ge=0, description="Speech regions shorter than this (ms) are dropped."
    )
    vad_min_silence_ms: int = Field(
        default=300, ge=0, description="A pause must last this long (ms) to end a speech region."
    )
    vad_pad_ms: int = Field(
        default=200, ge=0, description="Each speech region is widened by this much (ms) on both sides."
    )
    vad_max_region_s: float = Field(
        default=30.0,
        ge=1.0,
        description="Speech regions are split to at most this long (s), at a pause where there is one.",
    )

    # --- live streams (WebSocket /v1/stream) ------------------------------------------------------
    stream_max: int = Field(
        default=8,
        ge=1,
        description="Most live streams open at once; one more is closed with code 1013 and the reason.",
    )
    stream_max_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Longest live stream, in seconds of audio; at the limit the stream gets its summary and "
        "is closed (stream_too_long, code 1008).",
    )
    stream_idle_s: float = Field(
        default=15.0,
        gt=0,
        description="A stream that sends nothing (no start, no audio, no stop) for this many seconds is "
        "closed (stream_idle, code 1008).",
    )
    stream_max_lead_s: float = Field(
        default=10.0,
        gt=0,
        description="How far ahead of real time a stream's audio may run, in seconds (a burst after a "
        "network stall); further ahead, it is closed (stream_too_fast, code 1008): files go to "
        "POST /v1/timeline or /v1/jobs.",
    )
    stream_max_frame_bytes: int = Field(
        default=512 * 1024,
        ge=1024,
        description="Largest WebSocket message, in bytes; a larger one closes the stream with code 1009. "
        "100 ms of 48 kHz stereo float32 is 38 KiB.",
    )
    stream_max_delay_s: float = Field(
        default=3.0,
        gt=0,
        description="A live window whose turn with the model has not come this many seconds after its audio "
        "arrived is skipped (a window_dropped warning): a live view wants the present, not a backlog.",
    )
    stream_max_pending: int = Field(
        default=4,
        ge=1,
        description="Windows of one stream waiting for the model; a window beyond it is skipped (a "
        "window_dropped warning) rather than queued, so a stream never falls ever further behind.",
    )

    # --- batching and concurrency ----------------------------------------------------------------
    max_batch_size: int = Field(default=8, ge=1, description="Most utterances the model runs in one batch.")
    max_batch_wait_ms: float = Field(
        default=10.0,
        ge=0,
        description="How long the batcher waits for a batch to fill before running it (ms).",
    )
    queue_depth: int = Field(
        default=64,
        ge=1,
        description="Most utterances admitted for the model at once, whether still being decoded or waiting; "
        "a request whose utterances do not all fit gets 503 with Retry-After before anything is decoded, "
        "instead of queueing.",
    )
    worker_threads: int = Field(
        default_factory=_default_worker_threads,
        ge=1,
        description="Threads decoding uploads (default: the number of cores, at most 4).",
    )
    retry_after_s: int = Field(
        default=1,
        ge=0,
        description="Seconds sent in Retry-After when the service is overloaded or not ready.",
    )
    shutdown_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, how long in-flight requests may take to finish before the server stops.",
    )

    keep_freed_memory: bool = Field(
        default=True,
        description="Keep the memory a batch frees for the next batch instead of returning it to the system "
        "(glibc only: one malloc arena, no trimming): the next batch then does not fault it back in, which "
        "costs a share of every batch's time on small VMs. Read once, when the process starts.",
    )

    # --- logging -----------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level of the log lines written."
    )
    log_json: bool = Field(default=False, description="Write one JSON object per log line instead of text.")

    @field_validator("cors_origins", "api_keys", mode="before")
    @classmethod
    def _split_comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_limits(self) -> ServiceSettings:
        if self.min_seconds >= self.max_seconds:
            raise ValueError(
                f"min_seconds ({self.min_seconds}) must be below max_seconds ({self.max_seconds})"
            )
        if "body_budget_bytes" not in self.model_fields_set:
            self.body_budget_bytes = max(self.body_budget_bytes, self.max_upload_bytes)
        elif self.body_budget_bytes < self.max_upload_bytes:
            raise ValueError(
                f"body_budget_bytes ({self.body_budget_bytes}) must be at least max_upload_bytes "
                f"({self.max_upload_bytes}), or the largest accepted request could never be read"
            )
        return self

    @property
    def metrics_open(self) -> bool:
        """True when ``GET /metrics`` answers without an API key."""
        return not self.api_keys if self.metrics_public is None else self.metrics_public

    def timeline_options(self) -> TimelineOptions:
        """How recordings are cut into windows and speech regions, as these settings say."""
        return TimelineOptions(
            window_seconds=self.timeline_window_s,
            hop_seconds=min(self.timeline_hop_s, self.timeline_window_s),
            method=self.timeline_method,
            smoothing=self.timeline_smoothing,
            session=self.timeline_session,
            vad=VadSettings(
                threshold=self.vad_threshold,
                min_speech_ms=self.vad_min_speech_ms,
                min_silence_ms=self.vad_min_silence_ms,
                pad_ms=self.vad_pad_ms,
                max_region_seconds=self.vad_max_region_s,
            ),
        )

    def encoder_options(self) -> EncoderOptions:
        """How the encoder runs, as these settings say (``/v1/info`` echoes it as ``encoder``)."""
        return EncoderOptions(
            device=self.device,
            dtype=self.dtype,
            backend=self.backend,
            threads=self.torch_threads or None,
            max_batch_size=self.max_batch_size,
            window_seconds=self.window_seconds,
            cache_dir=self.cache_dir,
            onnx_cache_dir=self.onnx_cache,
            model_override=self.backbone_model,
            offline=self.offline,
        )

    @property
    def offline(self) -> bool:
        """True when the hub must not be contacted (``hf_offline`` or ``HF_HUB_OFFLINE`` set)."""
        env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
        return self.hf_offline or env in ("1", "true", "yes", "on")

    def public_dict(self) -> dict[str, Any]:
        """The effective settings as JSON values, without secrets (API keys are only counted)."""
        data = self.model_dump(mode="json", exclude={"api_keys"})
        data["api_keys_configured"] = len(self.api_keys)
        data["hf_offline_effective"] = self.offline
        return data
