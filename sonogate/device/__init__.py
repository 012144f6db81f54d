"""Capture sources (``capture``), the latest-frame grabber (``grabber``) and compute devices (``compute``).

Import the submodules directly; nothing here imports torch.
"""
