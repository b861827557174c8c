"""Shared core of the speech emotion recognition service.

Imported by both ``service`` (online inference) and ``training`` (offline model building);
imports neither of them and knows nothing about HTTP. It holds audio decoding, the speech
encoders ("backbones"), the versioned model bundle and its loader, the predictor and the
domain errors.
"""
