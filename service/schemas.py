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


class Base64AudioRequest(BaseModel):
    """One audio file as base64 text (JSON alternative to a multipart upload)."""

    model_config = ConfigDict(extra="forbid")

    audio_base64: str = Field(
        description="The file's bytes in base64 (standard alphabet; a data: URL prefix is accepted). "
        "Any supported format: WAV, FLAC, MP3, OGG/Vorbis, Opus, WebM, M4A/AAC.",
        examples=["UklGRiQAAABXQVZFZm10IBAAAAABAAEAgD4AAAB9AAACABAAZGF0YQAAAAA="],
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
    accepted_formats: str
    demo: bool = Field(
        description="True when the built-in demo model is served (for trying the service only)."
    )
    notice: str | None = Field(
        default=None, description="What users should know about the model served (set for the demo model)."
    )
