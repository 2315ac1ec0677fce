"""Data sources: seeded synthetic people (``synthetic``) and COCO keypoint annotation files (``coco``).

Submodules are imported explicitly (``from edgepose.data.synthetic import render_sample``) so that
importing the package stays cheap.
"""
