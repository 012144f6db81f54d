"""Spine task (seed 002, US-X Complete): vertebra shape completion from 3D ultrasound plus one lateral X-ray."""
