"""Training side (needs the ``train`` extra: torch, torchvision).

Nothing is imported here on purpose: ``sonogate.models.cli`` must import without torch so the torch-free
runtime install can still build the full command line. Import the submodules directly:

- ``encoder``:  1-channel ResNet-18 trunk returning layer3 / layer4 maps and the 512-d pooled feature
- ``augment``:  batched grayscale augmentations for SimSiam (no flips for Graf orientation)
- ``simsiam``:  SimSiam pretraining (single process or torchrun / DistributedDataParallel)
- ``heads``:    measurement MLP, plane-quality MLP, landmark heatmap head
- ``geometry``: Graf alpha / beta / coverage from landmarks in torch (exportable: atan2 -> ONNX)
- ``network``:  the fused inference network that is exported (image -> measurements, plane_logit, features)
- ``trainer``:  the generic trainer (device, SimSiam pretraining, the head-fitting loop, checkpoints); each task's
               recipe on it is named by its spec (``parts["trainer"]``: ``sonogate/tasks/<id>/train.py``); the hip_us
               network and Graf geometry stay here because the bench harness measures them by these names
- ``cli``:      ``register(subparsers)`` adding ``train`` (``export`` is ``sonogate.export.cli``)
"""
