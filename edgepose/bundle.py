"""Bundles: a folder with model artifacts and the ``edgepose.json`` manifest that describes them.

A bundle is written into a temporary sibling folder and renamed into place, so a crash or an error
never leaves a half-written bundle. Loading checks the format version, every artifact's presence and
sha256, and says exactly what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepose.errors import BundleError, UsageError
from edgepose.skeletons import Skeleton
from edgepose.version import __version__

MANIFEST_NAME = "edgepose.json"
FORMAT = "edgepose-bundle"
FORMAT_VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    """A loaded, verified bundle: its folder and its manifest."""

    path: Path
    manifest: dict[str, Any]

    # -- convenience views over the manifest --------------------------------------------------------
    @property
    def family(self) -> str:
        return self.manifest["model"]["family"]

    @property
    def model_name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def runtime(self) -> str:
        return self.manifest["runtime"]["name"]

    @property
    def skeleton(self) -> Skeleton:
        return Skeleton.from_dict(self.manifest["model"]["skeleton"])

    @property
    def input_size(self) -> tuple[int, int]:
        """(W, H) of the model input."""
        _, _, h, w = self.manifest["input"]["shape"]
        return int(w), int(h)

    @property
    def input_name(self) -> str:
        return self.manifest["input"]["name"]

    @property
    def pad_value(self) -> int:
        return int(self.manifest["input"].get("pad_value", 114))

    @property
    def decoder_config(self) -> dict[str, Any]:
        """The manifest's ``decoder`` section with files it names (DEKR's ``rescore_file``) resolved
        against the bundle folder, so the decoder finds them wherever the bundle was copied."""
        cfg = self.manifest["decoder"]
        file = cfg.get("head", {}).get("rescore_file")
        if file is None or Path(file).is_absolute():
            return cfg
        return {**cfg, "head": {**cfg["head"], "rescore_file": str(self.path / file)}}

    def artifact(self, role: str) -> Path:
        arts = self.manifest.get("artifacts", {})
        if role not in arts:
            raise BundleError(
                f"bundle {self.path} has no '{role}' artifact (it has: {', '.join(arts) or 'none'})"
            )
        return self.path / arts[role]["file"]

    def has_artifact(self, role: str) -> bool:
        return role in self.manifest.get("artifacts", {})


def load_bundle(path: str | Path, verify_hashes: bool = True) -> Bundle:
    """Read and check a bundle folder; raise ``BundleError`` with one sentence on any problem."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist")
    if not path.is_dir():
        raise BundleError(f"{path} is not a bundle folder (bundles are folders with an {MANIFEST_NAME})")
    mpath = path / MANIFEST_NAME
    if not mpath.is_file():
        raise BundleError(f"{path} is not a bundle: it has no {MANIFEST_NAME}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath} is not an edgepose bundle manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        made_by = manifest.get("edgepose_version", "an unknown version")
        raise BundleError(
            f"bundle {path} has format version {version} (made by edgepose {made_by}); this edgepose "
            f"({__version__}) reads version {FORMAT_VERSION}: re-export the model with this version"
        )
    for key in ("model", "input", "outputs", "decoder", "target", "precision", "runtime", "artifacts"):
        if key not in manifest:
            raise BundleError(f"bundle manifest {mpath} lacks the '{key}' field")
    for role, art in manifest["artifacts"].items():
        file = path / art["file"]
        if not file.is_file():
            raise BundleError(f"bundle {path} is missing its {role} file {art['file']}")
        if verify_hashes and art.get("sha256") and sha256_file(file) != art["sha256"]:
            raise BundleError(
                f"bundle file {art['file']} does not match the sha256 in its manifest: the bundle was "
                "modified or corrupted; re-export it"
            )
    return Bundle(path, manifest)


def write_bundle(
    dest: str | Path,
    manifest: Mapping[str, Any],
    artifacts: Mapping[str, Path],
    overwrite: bool = False,
    extra_files: Mapping[str, Path] | None = None,
) -> Bundle:
    """Write a new bundle atomically.

    ``artifacts`` maps a role (``model``, ``weights``, ``plan:<gpu>``...) to a file that is copied into
    the bundle under its own name; the manifest gets ``artifacts`` with file names and sha256 added.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        else:
            raise UsageError(f"output {dest} already exists; choose another --output or remove it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        data = json.loads(json.dumps(dict(manifest)))  # deep copy, and proof it is JSON-serialisable
        data["format"] = FORMAT
        data["format_version"] = FORMAT_VERSION
        data.setdefault("edgepose_version", __version__)
        arts: dict[str, dict[str, str]] = {}
        for role, src in artifacts.items():
            src = Path(src)
            target = tmp / src.name
            if target.exists():
                raise BundleError(f"two bundle artifacts share the file name {src.name}")
            shutil.copy2(src, target)
            arts[role] = {"file": src.name, "sha256": sha256_file(target)}
        for name, src in (extra_files or {}).items():
            shutil.copy2(src, tmp / name)
        data["artifacts"] = arts
        (tmp / MANIFEST_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(dest, data)


def update_bundle(
    bundle: Bundle, new_artifacts: Mapping[str, Path], manifest_updates: Mapping[str, Any]
) -> Bundle:
    """Add artifacts and manifest fields to an existing bundle, atomically (used by ``edgepose build``)."""
    files = {role: bundle.path / art["file"] for role, art in bundle.manifest["artifacts"].items()}
    files.update(new_artifacts)
    manifest = dict(bundle.manifest)
    manifest.update(manifest_updates)
    return write_bundle(bundle.path, manifest, files, overwrite=True)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file: readers never see half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from e


def replace_dir(src: Path, dest: Path) -> None:
    """Move folder ``src`` to ``dest``, replacing ``dest`` if it exists, never leaving neither behind."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        try:
            os.replace(src, dest)
        except BaseException:
            os.replace(old, dest)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dest)
