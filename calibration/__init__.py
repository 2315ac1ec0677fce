"""Calibration and quantization: from a user's images to an INT8 model that is checked before it ships.

- ``data``: calibration data readers (a folder, a video, a COCO file or synthetic people) that give
  the images quantizers see, through the runtime's own letterbox pre-processing, plus held-back
  images that calibration never sees;
- per-target quantizers: Q/DQ ONNX for ONNX Runtime and TensorRT, NNCF for OpenVINO IR;
- sensitivity analysis: which layers lose the most in INT8 and are better kept in float;
- accuracy gate: INT8-vs-FP32 pose agreement on the held-back images, refusing a model that drifts.
"""
