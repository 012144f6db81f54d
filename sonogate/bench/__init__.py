"""``sonogate bench``: encoder+heads latency per backend / precision / size / threads, end to end through the
real runtime, accuracy of each precision, FLOPs and the machine's measured compute peak (benchmarks/README.md).

Modules, one concern each (nothing heavy is imported here, nor at import time of ``cli``; torch is never needed):

- ``cli``:       ``register(subparsers)`` adding ``sonogate bench``, its options and ``handler(args)``
- ``harness``:   ``run_bench(options)``: which configurations run, in which order, with a progress bar
- ``workers``:   the subprocess worker protocol (``python -m sonogate.bench.workers SPEC``) and the worker tasks
                 latency, build, peak, e2e, accuracy, each run in a fresh interpreter with its thread count set
- ``models``:    the model factory: seeded torch network and its ONNX export, the torch-free ``onnx.helper``
                 ResNet-18, calibration tensors, INT8 / NNCF through ``sonogate.export.quantize``, peak kernels
- ``endtoend``:  one ``sonogate run``-like process over a phantom cine, polled for CPU, RSS and first decision
- ``flops``:     2 x MACs of the Conv / Gemm / MatMul nodes of an ONNX graph
- ``machine``:   CPU model, flags, cores, library versions
- ``report``:    percentiles, speed-ups and peak shares, goal verdicts, ``latest.json``, ``results.md``, plots
"""
