"""Decoders for live audio: raw PCM frames, or a WebM/Opus stream from a browser's MediaRecorder.

Each decoder takes the stream's binary frames in order and gives back 16 kHz mono float32 samples as
they become available (channels averaged, resampled with soxr's streaming resampler, as files are).

- ``PcmDecoder``: 16-bit signed or 32-bit float little-endian samples, interleaved by channel. A frame
  must hold whole samples of every channel; float samples must be finite and within [-2, 2] (past full
  scale by at most 6 dB): anything else is not audio in the declared format.
- ``WebmDecoder``: PyAV (FFmpeg) reads the stream on a thread of its own from a pipe that the frames
  are written into, so a container is decoded as it grows; the pipe holds at most ``max_buffered_bytes``
  not yet read.
"""

from __future__ import annotations

import io
import queue
import threading
from typing import Any, Literal

import av
import numpy as np
import soxr

from shared.audio import ffmpeg_reason, frame_to_mono
from shared.constants import SAMPLE_RATE
from shared.errors import AudioDecodeError

Format = Literal["s16le", "f32le", "webm"]
FORMATS: tuple[str, ...] = ("s16le", "f32le", "webm")
#: The sample rates a raw PCM stream may declare.
PCM_RATES: tuple[int, ...] = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_CHANNELS = 8
#: The first four bytes of every WebM (EBML) stream.
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
#: A WebM stream that gives no audio in this many bytes is refused (MediaRecorder's first chunk holds
#: the header and the first fraction of a second).
MAX_SILENT_BYTES = 64 * 1024
_FLOAT_LIMIT = 2.0


class _Resampler:
    """A streaming resampler to 16 kHz (none where the rate is already 16 kHz)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._stream = (
            None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, "float32", "HQ")
        )

    def __call__(self, mono: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return mono
        return np.asarray(self._stream.resample_chunk(mono, last=last), dtype=np.float32).reshape(-1)


class PcmDecoder:
    """Raw PCM frames to 16 kHz mono float32."""

    def __init__(self, fmt: Literal["s16le", "f32le"], sample_rate: int, channels: int) -> None:
        self.format = fmt
        self.channels = channels
        self._dtype = np.dtype("<i2") if fmt == "s16le" else np.dtype("<f4")
        self._frame_bytes = self._dtype.itemsize * channels
        self._resample = _Resampler(sample_rate)

    def feed(self, data: bytes) -> np.ndarray:
        if len(data) % self._frame_bytes:
            raise AudioDecodeError(
                f"a binary frame of {len(data)} bytes does not hold whole {self.format} samples of "
                f"{self.channels} channel(s) ({self._frame_bytes} bytes each); send whole samples in each frame"
            )
        samples = np.frombuffer(data, dtype=self._dtype).reshape(-1, self.channels)
        if self.format == "s16le":
            mono = samples.astype(np.float32).mean(axis=1) / 32768.0
        else:
            mono = samples.astype(np.float32).mean(axis=1)
            if not np.all(np.isfinite(mono)) or (mono.size and float(np.abs(mono).max()) > _FLOAT_LIMIT):
                raise AudioDecodeError(
                    "the frame is not f32le audio: float samples must be finite and within [-1, 1]; "
                    "send 32-bit float little-endian samples, or declare format s16le or webm"
                )
        return self._resample(np.ascontiguousarray(mono, dtype=np.float32))

    def finish(self) -> np.ndarray:
        return self._resample(np.zeros(0, dtype=np.float32), last=True)

    def close(self) -> None:
        """Nothing to release."""


class _Pipe(io.RawIOBase):
    """A blocking byte pipe: ``write`` from the stream, ``readinto`` from the decoding thread."""

    def __init__(self, max_bytes: int) -> None:
        self._chunks: queue.Queue[bytes | None] = queue.Queue()
        self._buffer = b""
        self._eof = False
        self._lock = threading.Lock()
        self._pending = 0
        self.max_bytes = max_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer and not self._eof:
            chunk = self._chunks.get()
            if chunk is None:
                self._eof = True
            else:
                self._buffer = chunk
                with self._lock:
                    self._pending -= len(chunk)
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def put(self, data: bytes) -> None:
        with self._lock:
            if self._pending + len(data) > self.max_bytes:
                raise AudioDecodeError(
                    f"the WebM stream is not being decoded as fast as it arrives ({self._pending} bytes wait); "
                    "send it at the pace it is recorded"
                )
            self._pending += len(data)
        self._chunks.put(data)

    def end(self) -> None:
        self._chunks.put(None)


class WebmDecoder:
    """A WebM/Opus (or any FFmpeg-readable) stream to 16 kHz mono float32, decoded as it arrives."""

    def __init__(self, max_buffered_bytes: int = 4 * 1024 * 1024) -> None:
        self._pipe = _Pipe(max_buffered_bytes)
        self._out: queue.Queue[np.ndarray] = queue.Queue()
        self._error: AudioDecodeError | None = None
        self._resample: _Resampler | None = None
        self._container: Any = None
        self.received = 0
        self.decoded = 0
        self._thread = threading.Thread(target=self._run, name="ser-stream-webm", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            container = self._container = av.open(
                self._pipe,
                mode="r",
                format="matroska,webm",
                options={"probesize": "4096", "analyzeduration": "0"},
                buffer_size=4096,
            )
            if not container.streams.audio:
                raise AudioDecodeError("the WebM stream has no audio track")
            for frame in container.decode(audio=0):
                mono = frame_to_mono(frame)
                if self._resample is None or self._resample.rate != frame.sample_rate:
                    self._resample = _Resampler(int(frame.sample_rate))
                self._out.put(self._resample(np.ascontiguousarray(mono, dtype=np.float32)))
        except AudioDecodeError as exc:
            self._error = exc
        except (av.FFmpegError, ValueError, OSError) as exc:
            reason = ffmpeg_reason(exc) if isinstance(exc, av.FFmpegError) else str(exc)
            self._error = AudioDecodeError(
                f"the stream is not WebM/Opus audio that can be decoded ({reason}); send a MediaRecorder "
                "audio/webm stream from its first chunk on, or declare format s16le or f32le"
            )
        finally:
            if self._resample is not None:
                self._out.put(self._resample(np.zeros(0, dtype=np.float32), last=True))
            if self._container is not None:
                self._container.close()

    def _take(self) -> np.ndarray:
        pieces = []
        while True:
            try:
                pieces.append(self._out.get_nowait())
            except queue.Empty:
                break
        if self._error is not None:
            raise self._error
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def feed(self, data: bytes) -> np.ndarray:
        """Write a frame into the pipe; the samples decoded so far (this frame's may follow later)."""
        if self._error is not None:
            raise self._error
        if self.received == 0 and data and not data.startswith(EBML_MAGIC[: len(data)]):
            raise AudioDecodeError(
                "the stream is not WebM: its first bytes are not the EBML header (1A 45 DF A3); send a "
                "MediaRecorder audio/webm stream from its first chunk on, or declare format s16le or f32le"
            )
        self.received += len(data)
        self._pipe.put(data)
        samples = self._take()
        self.decoded += samples.shape[0]
        self.check_progress()
        return samples

    def check_progress(self, min_bytes: int = MAX_SILENT_BYTES) -> None:
        """Raise if ``min_bytes`` have arrived and nothing has decoded: not a WebM audio stream."""
        if self.decoded == 0 and self.received >= min_bytes:
            raise AudioDecodeError(
                f"nothing could be decoded from the first {self.received} bytes of the WebM stream; send a "
                "MediaRecorder audio/webm (Opus) stream from its first chunk on, or declare format s16le or f32le"
            )

    def finish(self, timeout: float = 5.0) -> np.ndarray:
        """The end of the stream: the rest of the samples once the decoder has read everything."""
        self._pipe.end()
        self._thread.join(timeout)
        return self._take()

    def close(self) -> None:
        """Stop the decoding thread (it ends once it has read what was written)."""
        self._pipe.end()


Decoder = PcmDecoder | WebmDecoder


def make_decoder(fmt: str, sample_rate: int, channels: int) -> Decoder:
    """The decoder for a stream that declared ``fmt``, ``sample_rate`` and ``channels`` (checked before)."""
    if fmt == "webm":
        return WebmDecoder()
    return PcmDecoder("s16le" if fmt == "s16le" else "f32le", sample_rate, channels)
