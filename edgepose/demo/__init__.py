"""The real-time demo: frame sources, a threaded pipeline, an overlay and output sinks.

``edgepose demo`` is ``run.run_demo``; the pieces are separate so examples and benchmarks reuse them.
"""

from edgepose.demo.pipeline import FrameResult, Pipeline
from edgepose.demo.sources import FrameSource, open_source

__all__ = ["FrameResult", "FrameSource", "Pipeline", "open_source"]
