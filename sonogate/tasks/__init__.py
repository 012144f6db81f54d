"""Task packages: everything that belongs to one task and to no other.

Each sub-package (``hip_us``, ``hip_xr``, ``rust``, ``knee_kl``, ``bmd``, ``spine``) holds its spec, its phantom
renderer, its network head and in-graph geometry, its decision and its report pieces. Arrows point one way:
task packages import the stages (``phantom``, ``data``, ``models``, ``export``, ``calibration``, ``runtime``,
``device``) and ``core``; a stage never imports a task package (it gets task behaviour from the registry).
"""
