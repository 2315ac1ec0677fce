"""Calibration and quantization: calibration data readers, per-target INT8 quantizers, accuracy gate.

Quantization arrives with the INT8 roadmap item; the package exists now so the installed layout
(``edgepose.calibration``) is stable for code and docs that refer to it.
"""
