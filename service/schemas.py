"""Request and response models of the HTTP API (they are what ``/docs`` shows)."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from shared.constants import EMOTIONS

Emotion = Literal["neutral", "happy", "sad", "angry", "fear", "disgust"]
assert get_args(Emotion) == EMOTIONS, "Emotion must list shared.constants.EMOTIONS in order"


class ErrorBody(BaseModel):
    """Every error reply."""

    error: str = Field(description="What was wrong and, where it helps, what is accepted.")
    error_type: str = Field(
        description="A stable code: unsupported_format, unsupported_media_type, audio_decode_error, "
        "audio_too_short, audio_too_long, audio_silent, invalid_request, invalid_base64, invalid_session_id, too_many_files, "
        "payload_too_large, unauthorized, not_ready, overloaded, timeout, not_found, internal_error...",
        examples=["audio_too_short"],
    )


def _example_clip_base64() -> str:
    """A short voiced clip (0.6 s of 16-bit WAV, generated) that the service accepts and classifies:
    what "Try it out" on /docs sends."""
    import base64
    import io

    import soundfile as sf

    from shared.constants import SAMPLE_RATE
    from shared.signals import speech_like

    buffer = io.BytesIO()
    sf.write(buffer, speech_like(0.6, seed=3), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Base64AudioRequest(BaseModel):
    """One audio file as base64 text (JSON alternative to a multipart upload)."""

    model_config = ConfigDict(extra="forbid")

    audio_base64: str = Field(
        description="The file's bytes in base64 (standard alphabet; a data: URL prefix is accepted). "
        "Any supported format: WAV, FLAC, MP3, OGG/Vorbis, Opus, WebM, M4A/AAC.",
        examples=[_example_clip_base64()],
    )
    filename: str | None = Field(default=None, description="Optional name, echoed in logs.", max_length=255)


class ModelRef(BaseModel):
    """The bundle that answered."""

    name: str
    version: str


class TimingsMs(BaseModel):
    """Where the time went, in milliseconds."""

    decode: float = Field(description="Decoding and checking the upload.")
    queue: float = Field(description="Waiting for a batch to start.")
    inference: float = Field(description="The model call of the batch this utterance was in.")
    total: float = Field(description="From the start of decoding to the result.")


UncertainReason = Literal["out_of_distribution", "low_confidence"]


class SessionInfo(BaseModel):
    """The session an utterance was classified in."""

    id: str | None = Field(description="The client's session_id; None for a batch sent as one session.")
    utterances: int = Field(description="Utterances in the session's statistics, this one included.")
    minimum_utterances: int | None = Field(
        description="From this many utterances on, the session's statistics normalise its utterances "
        "(the 'session' classifier); None when the bundle has no session classifier."
    )


class PredictionResponse(BaseModel):
    """One utterance's emotion."""

    label: Emotion = Field(description="The most probable emotion (the arg-max of probabilities).")
    confidence: float = Field(ge=0, le=1, description="The probability of label.")
    probabilities: dict[str, float] = Field(
        description="All six emotions (neutral, happy, sad, angry, fear, disgust) with their probabilities; "
        "they sum to 1.",
        examples=[{"neutral": 0.1, "happy": 0.5, "sad": 0.1, "angry": 0.1, "fear": 0.1, "disgust": 0.1}],
    )
    uncertain: bool = Field(
        description="True when the prediction should not be acted on: the audio is unlike the training "
        "data (out_of_distribution) or the top probability is under the bundle's confidence threshold "
        "(low_confidence). A client should abstain rather than trust label."
    )
    uncertain_reasons: list[UncertainReason] = Field(description="Why uncertain is true; empty otherwise.")
    ood_percentile: float | None = Field(
        description="How far the audio's features lie from the training data, as a percentile of the "
        "training clips' own distances (100: farther than all of them); above the bundle's ood_percentile "
        "the prediction is out_of_distribution. None for bundles without a feature reference."
    )
    classifier: Literal["single", "session"] = Field(
        description="Which classifier answered: 'single' (the utterance alone) or 'session' (its features "
        "normalised with its session's statistics)."
    )
    session: SessionInfo | None = Field(
        default=None, description="The session, when the request named one (session_id, or session=true)."
    )
    duration_s: float = Field(description="Length of the decoded audio, in seconds.")
    model: ModelRef
    batch_size: int = Field(description="How many utterances shared the model call.")
    timings_ms: TimingsMs
    request_id: str = Field(description="Also in the X-Request-ID response header.")


class BatchItem(BaseModel):
    """The outcome for one file of a batch: a result or an error."""

    index: int = Field(description="Position of the file in the request, from 0.")
    filename: str | None = None
    ok: bool
    status: int = Field(description="The HTTP status this file alone would have had.")
    result: PredictionResponse | None = None
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    """One item per uploaded file, in upload order."""

    results: list[BatchItem]
    request_id: str


class HealthResponse(BaseModel):
    status: Literal["ok", "failed"] = Field(
        default="ok",
        description="'failed' when the model could not be loaded (only seen with SER_STAY_UP_ON_FAILURE).",
    )
    model_state: str = Field(description="starting, loading, warming_up, ready, failed, stopping or stopped.")
    error: str | None = Field(default=None, description="Why the model could not be loaded, when it failed.")


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    model: ModelRef


class LiveStreamInfo(BaseModel):
    """What the live WebSocket accepts (its limits are the stream_* settings)."""

    path: str = Field(default="/v1/stream", description="The WebSocket's path.")
    formats: list[str] = Field(description="The start message's accepted formats.", examples=[["s16le"]])
    pcm_sample_rates: list[int] = Field(description="Sample rates (Hz) accepted for raw PCM (s16le, f32le).")
    max_channels: int = Field(description="Most channels of raw PCM (they are mixed down).")
    window_seconds: float = Field(description="The windows' length, as in the timeline.")
    hop_seconds: float = Field(description="The step between a region's windows.")


class PrecisionInfo(BaseModel):
    """How the encoder served computes, and why (what ``SER_BACKEND=auto`` chose on this machine)."""

    backend: str = Field(description="torch, onnx, onnx-int8, or egemaps.", examples=["torch"])
    dtype: str = Field(description="The precision of the encoder's matrix products.", examples=["bf16"])
    reason: str | None = Field(
        description="Why this backend and precision.",
        examples=["this CPU has bf16 matrix units (AVX-512 BF16 or AMX): torch in bf16"],
    )


class InfoResponse(BaseModel):
    """What is served and how."""

    service_version: str
    model_state: str
    model: ModelRef | None = Field(description="None until the model is loaded.")
    labels: list[str]
    bundle: dict[str, Any] = Field(
        description="The bundle manifest's summary: backbone, training data, metrics, creation time, path."
    )
    metrics: dict[str, Any] = Field(description="The bundle's evaluation metrics.")
    load_seconds: float | None
    settings: dict[str, Any] = Field(description="The effective settings (API keys are only counted).")
    encoder: dict[str, Any] = Field(
        description="How the speech encoder runs (the encoder options built from the settings: device, "
        "dtype, backend, threads, batch size, window, cache folders, model override, offline)."
    )
    precision: PrecisionInfo | None = Field(description="None until the model is loaded.")
    accepted_formats: str
    live_stream: LiveStreamInfo
    demo: bool = Field(
        description="True when the built-in demo model is served (for trying the service only)."
    )
    notice: str | None = Field(
        default=None, description="What users should know about the model served (set for the demo model)."
    )


# --- long recordings -----------------------------------------------------------------------------

_PROBS_EXAMPLE = {"neutral": 0.08, "happy": 0.05, "sad": 0.04, "angry": 0.71, "fear": 0.07, "disgust": 0.05}


class TimelineWindowModel(BaseModel):
    """One classified window of speech."""

    start: float = Field(description="Seconds from the recording's start.", examples=[12.0])
    end: float = Field(description="Seconds from the recording's start.", examples=[15.0])
    label: Emotion = Field(description="The most probable emotion (after smoothing, where it is on).")
    confidence: float = Field(ge=0, le=1, description="The probability of label.", examples=[0.71])
    probabilities: dict[str, float] = Field(
        description="All six emotions with their probabilities; they sum to 1.", examples=[_PROBS_EXAMPLE]
    )
    uncertain: bool = Field(description="True when the client should not act on this window's label.")
    uncertain_reasons: list[UncertainReason] = Field(default_factory=list)


class TimelineSegmentModel(BaseModel):
    """Consecutive speech with one label."""

    start: float = Field(description="Seconds from the recording's start.", examples=[12.0])
    end: float = Field(description="Seconds from the recording's start.", examples=[31.5])
    label: Emotion = Field(examples=["angry"])
    confidence: float = Field(
        ge=0,
        le=1,
        description="The label's duration-weighted mean probability over the segment.",
        examples=[0.66],
    )
    speech_s: float = Field(
        description="Speech the segment covers (less than end - start where it spans a pause of at most "
        "merge_gap_seconds between two stretches with its label).",
        examples=[17.9],
    )
    windows: int = Field(description="Windows in the segment.", examples=[18])


class TimelineSummaryModel(BaseModel):
    """The whole recording at a glance."""

    duration_s: float = Field(description="Audio decoded, in seconds.", examples=[300.0])
    speech_s: float = Field(description="Time inside speech regions (Silero VAD).", examples=[212.4])
    classified_s: float = Field(
        description="Speech time the windows labelled (regions shorter than the minimum window are not).",
        examples=[211.9],
    )
    emotion_seconds: dict[str, float] = Field(
        description="Classified time per emotion, in seconds.",
        examples=[
            {"neutral": 80.1, "happy": 12.0, "sad": 20.3, "angry": 79.5, "fear": 10.0, "disgust": 10.0}
        ],
    )
    mean_probabilities: dict[str, float] = Field(
        description="Duration-weighted mean probability of every emotion over the classified time.",
        examples=[_PROBS_EXAMPLE],
    )
    dominant: Emotion | None = Field(description="The emotion with the most time (None without speech).")
    changes: int = Field(description="Label changes between consecutive segments.", examples=[7])
    uncertain_s: float = Field(description="Classified time whose window was uncertain.", examples=[15.0])


class SpeechRegionModel(BaseModel):
    start: float
    end: float


class TimelineResponse(BaseModel):
    """A recording's emotion timeline: windows, merged segments and a summary."""

    summary: TimelineSummaryModel
    segments: list[TimelineSegmentModel]
    windows: list[TimelineWindowModel]
    speech_regions: list[SpeechRegionModel] = Field(description="Where the VAD found speech.")
    reason: Literal["no_speech"] | None = Field(
        description="no_speech when the timeline is empty because the recording holds no speech; else null."
    )
    warnings: list[str] = Field(
        description="What to know about the result: 'truncated: ...' (the file is cut short or damaged, "
        "and the timeline covers the part that decoded), 'short_regions: ...' (speech too short to classify)."
    )
    classifier: Literal["single", "session"] = Field(
        description="session: the recording's windows were normalised with their own statistics."
    )
    method: Literal["pooled", "exact"] = Field(
        description="pooled: windows pooled from one encoder pass per speech region; exact: each window "
        "encoded on its own."
    )
    options: dict[str, Any] = Field(description="The window and speech-detection settings used.")
    model: ModelRef | None = None
    filename: str | None = None
    timings_ms: dict[str, float] | None = Field(default=None, description="total: the analysis, in ms.")
    request_id: str | None = None


JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]


class JobResponse(BaseModel):
    """A long-recording job: its state, its progress and, once done, its timeline."""

    id: str = Field(examples=["kq3XHf8Sx2E7kYd3mQ0bqA"])
    state: JobState = Field(
        description="queued, running, done, failed, cancelled, or interrupted (the service restarted while it "
        "was queued or running: submit the file again)."
    )
    progress: float = Field(ge=0, le=1, description="Fraction of the work done.", examples=[0.42])
    audio_seconds_done: float = Field(description="Audio analysed so far, in seconds.", examples=[1260.0])
    filename: str | None = None
    upload_bytes: int = Field(description="Size of the uploaded file.")
    created_at: float = Field(description="Unix time the job was created.")
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = Field(default=None, description="Unix time an ended job is deleted.")
    result: TimelineResponse | None = Field(default=None, description="The timeline, once state is done.")
    error: ErrorBody | None = Field(
        default=None, description="Why the job failed, was cancelled or interrupted."
    )
