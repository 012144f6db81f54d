"""Task ``hip_us``: Graf alpha, beta and femoral-head coverage from a live infant-hip ultrasound, per-sweep bounds."""
