"""sonogate: point-of-care selective imaging for infant hip dysplasia.

Ultrasound frames in, Graf alpha / beta / femoral-head coverage with calibrated one-sided bounds out, and a
recommendation: ultrasound sufficient, X-ray recommended, image not usable, or no recommendation.
"""

__version__ = "0.2.0"
