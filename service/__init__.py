"""The inference service: a FastAPI edge over ``shared.predictor`` (``python -m service`` runs it).

Importing this package is cheap: the app, the model and the thread pools are built by
``service.app.create_app`` and its lifespan, never at import time.
"""

from __future__ import annotations

__version__ = "0.1.0"
