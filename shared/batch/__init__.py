"""Predictions and embeddings for many files: on this machine, or on a Ray cluster.

The pieces, each usable on its own:

* ``inputs``: which files a command means (files, folders, glob patterns, CSV/JSONL manifests).
* ``rows``: one flat row per file (or per timeline window), the same in every output format.
* ``output``: JSONL, CSV and Parquet files that are valid after any interruption and resumable.
* ``pipeline``: decoding (``Decoder``), the models that turn decoded files into rows
  (``PredictionModel``, ``TimelineModel``, ``EmbeddingModel``) and the local engine (``run_local``:
  decoding in a process pool, the model batched on this thread).
* ``ray_engine``: the same decoder and models on Ray Data (``run_ray``: decoding in CPU tasks, the model
  in an actor pool of replicas).

Both engines give the same rows for the same files; a file that cannot be read, decoded or analysed
becomes a row with its ``error_type`` and message, never the end of the run.
"""
