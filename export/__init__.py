"""Export: torch model -> ONNX (+ parity check) -> target artifact -> bundle.

Modules are named by what goes in and what comes out (``torch2onnx``), one per target (``cpu``), and
``pipeline.export_model`` ties them together. Everything here needs torch (the ``export`` extra).
"""
