"""Post-processing per model family: raw head outputs -> ``Poses``.

Each family has a numba module (``kapao``) and a plain-numpy reference beside it (``kapao_reference``)
that the tests use as the oracle. Import the module you need; nothing heavy is imported here.

numba's on-disk cache goes to the user's cache folder (``$XDG_CACHE_HOME/edgepose/numba``), not to
``__pycache__`` beside these files: inside an installed package those files outlive ``pip uninstall``
and leave a folder without ``__init__.py`` that shadows a later editable install as an empty namespace
package. ``NUMBA_CACHE_DIR`` set by the user wins; numba reads it when it is first imported.
"""

import os

if "NUMBA_CACHE_DIR" not in os.environ:
    _cache_root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(_cache_root, "edgepose", "numba")
