"""Post-processing per model family: raw head outputs -> ``Poses``.

Each family has a numba module (``kapao``) and a plain-numpy reference beside it (``kapao_reference``)
that the tests use as the oracle. Import the module you need; nothing heavy is imported here.
"""
