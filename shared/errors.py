"""Domain errors.

Every error carries a stable ``error_type`` code. The service maps codes to HTTP statuses at its
edge (``service/errors.py``); nothing here knows about HTTP. Messages say what was wrong and,
where it helps, what is accepted.
"""

from __future__ import annotations


class SERError(Exception):
    """Base class of every error this project raises on purpose."""

    error_type: str = "ser_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- audio -------------------------------------------------------------------------------------


class AudioError(SERError):
    """The audio could not be used."""

    error_type = "audio_error"


class AudioDecodeError(AudioError):
    """The bytes are not audio in a supported container/codec, or the file is corrupt."""

    error_type = "audio_decode_error"


class UnsupportedAudioFormatError(AudioDecodeError):
    """The bytes are recognisably not audio (text, an image, a video without sound...)."""

    error_type = "unsupported_format"


class AudioTooShortError(AudioError):
    """The utterance is shorter than the minimum duration."""

    error_type = "audio_too_short"


class AudioTooLongError(AudioError):
    """The utterance is longer than the maximum duration."""

    error_type = "audio_too_long"


class AudioSilentError(AudioError):
    """The utterance contains no signal above the silence threshold."""

    error_type = "audio_silent"


class AudioNoSpeechError(AudioError):
    """The utterance has signal, but the voice-activity detector finds no speech in it."""

    error_type = "audio_no_speech"


# --- model bundle ------------------------------------------------------------------------------


class BundleError(SERError):
    """A model bundle is missing, malformed or not trustworthy."""

    error_type = "bundle_error"


class BundleNotFoundError(BundleError):
    error_type = "bundle_not_found"


class BundleIntegrityError(BundleError):
    """A file's sha256 or size does not match the manifest, or a file is missing."""

    error_type = "bundle_integrity"


class BundleFormatError(BundleError):
    """The manifest is malformed, of an unknown format version, or the classifier file is not skops."""

    error_type = "bundle_format"


class BundleLabelError(BundleError):
    """The bundle's labels are not the six emotions this service serves."""

    error_type = "bundle_labels"


class BundleExistsError(BundleError):
    """Refusing to overwrite an existing bundle version."""

    error_type = "bundle_exists"


# --- backbones ---------------------------------------------------------------------------------


class BackboneError(SERError):
    """A speech encoder could not be loaded or run."""

    error_type = "backbone_error"
