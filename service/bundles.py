"""Which bundle the service serves: the configured one, else ``./artifacts``, else the built-in demo."""

from __future__ import annotations

from pathlib import Path

from shared.bundle import list_bundles, resolve_bundle_dir
from shared.demo import demo_bundle_root, is_demo_bundle
from shared.errors import BundleNotFoundError

HOW_TO_TRAIN = (
    "train your own with: python -m training run --corpus ravdess|cremad|csv --data-dir <folder> "
    "--backbone egemaps --out artifacts, then serve it with SER_BUNDLE=artifacts"
)


def resolve_served_bundle(configured: Path | None, artifacts: Path = Path("artifacts")) -> Path:
    """The bundle folder to serve: the configured one (``SER_BUNDLE``); unset, the newest under
    ``artifacts`` (``SER_ARTIFACTS``), else the built-in demo.

    Raises:
        BundleNotFoundError: the configured path holds no bundle (or, unset, neither does anything else).
    """
    if configured is not None:
        return resolve_bundle_dir(configured)
    if artifacts.is_dir() and list_bundles(artifacts):
        return resolve_bundle_dir(artifacts)
    demo = demo_bundle_root()
    if demo is None:
        raise BundleNotFoundError(
            f"no bundle configured (SER_BUNDLE), none in {artifacts} (SER_ARTIFACTS) and no demo model in this "
            "installation; " + HOW_TO_TRAIN
        )
    return resolve_bundle_dir(demo)


def demo_notice(bundle_dir: Path | None) -> str | None:
    """What to tell users when the demo model is served (None for any other bundle)."""
    if not is_demo_bundle(bundle_dir):
        return None
    return (
        "the built-in demo model is in use (eGeMAPS trained on RAVDESS, speaker-independent unweighted "
        "accuracy about 0.50 over six emotions; CC BY-NC-SA 4.0: for trying the service, not for "
        "commercial use); " + HOW_TO_TRAIN
    )
