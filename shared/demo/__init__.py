"""The demo model built into the package: eGeMAPS trained on all of RAVDESS with the project's recipe.

It lets a fresh install answer a first prediction with no corpus in hand: the service serves it when no
bundle is configured and ``./artifacts`` holds none. It is for trying the service, not for real use:
trained on acted North-American English speech from 24 actors, it scores a speaker-independent
unweighted accuracy of about 0.50 (six emotions) and is licensed, like RAVDESS, CC BY-NC-SA 4.0: no
commercial use (see ``NOTICE.md`` in the bundle folder). Rebuild it with
``python -m training build-demo --data-dir <RAVDESS folder>``.
"""

from __future__ import annotations

from pathlib import Path

#: The folder holding the demo bundle (``<name>/<version>/`` below it).
DEMO_ROOT = Path(__file__).resolve().parent
DEMO_NAME = "demo-ravdess-egemaps"

#: The attribution and licence shipped beside the demo bundle's files (as ``NOTICE.md``).
NOTICE = """# Demo model: eGeMAPS on RAVDESS

This bundle was trained with this project's recipe (`python -m training build-demo`) on the speech
part of RAVDESS, the six emotions used here (1,056 clips, 24 actors):

> Livingstone SR, Russo FA (2018). The Ryerson Audio-Visual Database of Emotional Speech and Song
> (RAVDESS): A dynamic, multimodal set of facial and vocal expressions in North American English.
> PLoS ONE 13(5): e0196391. https://doi.org/10.1371/journal.pone.0196391
> Data: https://zenodo.org/records/1188976

RAVDESS is licensed under the Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International
licence (CC BY-NC-SA 4.0, https://creativecommons.org/licenses/by-nc-sa/4.0/). This model is derived
from it and is shared under the same licence: you may use and adapt it for non-commercial purposes,
with attribution, and share adaptations under the same terms.

It is a demo, for trying the service: acted speech from 24 actors, speaker-independent unweighted
accuracy about 0.50 over six emotions (see report.md). Train a model on your own data, or on CREMA-D
(ODbL), for real use.
"""


def demo_bundle_root() -> Path | None:
    """The demo folder when it holds a bundle (a source checkout or an installed package), else None."""
    return DEMO_ROOT if any(DEMO_ROOT.glob("*/*/manifest.json")) else None


def is_demo_bundle(path: Path | None) -> bool:
    """Whether ``path`` (a bundle folder) is the built-in demo."""
    if path is None:
        return False
    try:
        return Path(path).resolve().is_relative_to(DEMO_ROOT)
    except OSError:
        return False
