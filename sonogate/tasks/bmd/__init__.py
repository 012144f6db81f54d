"""Task ``bmd``: femoral-neck bone mineral density per hip from one AP hip/pelvis radiograph (issue 21)."""
