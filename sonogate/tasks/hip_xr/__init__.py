"""Task ``hip_xr``: acetabular index, centre-edge angle and IHDI grade per hip from an infant pelvic radiograph."""
