"""Offline training: corpus recipes, embedding extraction, evaluation and bundle export (``python -m training``)."""
