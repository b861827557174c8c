"""The ONNX Runtime backend: export, int8 quantisation, sessions and the encoder (the ``onnx`` extra)."""
