"""``python -m benchmarks``: the project's inference path against the naive one, in one run.

What it measures, on a HuBERT-large architecture with random weights (compute cost does not depend on
the weights' values) saved with ``save_pretrained`` and loaded through the project's own code:

* the machine: peak matrix throughput (a large fp32 and bf16 matmul) and the CPUs available;
* latency for each clip length (``--seconds``) and variant (``--variants``): the naive baseline
  (transformers ``HubertModel``, fp32, eager, batch 1, every layer) and the project's backbones (torch
  fp32/bf16, ONNX Runtime fp32/int8), with clips/s, real-time factor, GFLOP/s (FLOPs counted with
  ``torch.utils.flop_counter``) as a fraction of the measured peak, and the speed-up over naive. The
  variants run interleaved, round after round, so that the machine's drift hits them alike;
* each variant's embedding error against fp32: cosine after subtracting the reference's mean embedding,
  and distance to the fp32 embedding relative to the mean distance between different clips (real speech
  from ``$SER_TEST_DATA/ravdess16k`` when set, else generated speech-like signals);
* what dropping the layers above the one read saves;
* the peak memory of loading the encoder in bf16 (transformers' ``from_pretrained(dtype=bfloat16)``
  against the project's cached bf16 copy), each in a fresh process;
* batched throughput, then the service over HTTP on loopback (``--http-variants``): a real uvicorn server
  in a subprocess serving a bundle fitted over the same model, single-client p50/p95/p99 latency against
  the backbone's own time, throughput and tail latency for 1, 4 and 16 concurrent clients, failures,
  time from start to ready and the server's peak memory (``VmHWM``).

It writes JSON (``--out``, default ``bench-results/benchmark.json``) and prints a summary with the
pass/fail of each target. Timings on shared machines drift; compare the ratios of one run.

``--quick --model tiny`` runs the whole thing in seconds on a tiny HuBERT (a smoke test: its figures mean
nothing). ``serve`` and ``load-peak`` are internal subcommands run in subprocesses.

The modules: ``variants`` (what is compared), ``measure`` (in-process measurements), ``http`` (the
server and the load generator), ``report`` (targets and summary), ``cli`` (flags and the run in order).
"""
