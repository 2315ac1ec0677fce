"""Export: torch model -> ONNX (+ parity check) -> target artifact -> bundle.

Modules are named by what goes in and what comes out (``torch2onnx``), one per target (``cpu``), and
``pipeline.export_model`` ties them together; ``options`` checks the flags without torch, so a mistake
is refused at once. The torch-facing modules (``torch2onnx``, ``parity``, ``random_init``,
``pipeline``) need the ``export`` extra; ``onnx2openvino``, ``onnx2tensorrt`` and ``plans`` do not, so
``edgepose build`` runs on a Jetson without torch.
"""
