"""The torch backend: the project's HuBERT/wav2vec 2.0 modules, half-precision weights, and the encoder."""
