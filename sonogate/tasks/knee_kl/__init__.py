"""Task ``knee_kl``: Kellgren-Lawrence osteoarthritis grade 0-4 from one knee radiograph (real-image proving ground
of the ordinal radiograph path that ``rust`` uses)."""
