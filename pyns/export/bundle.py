"""The pyns model bundle: one .pyns file that rebuilds a trained network with no pickle anywhere.

A bundle is a zip archive (stored, not compressed: weights barely compress, and zip's per-member CRC-32
then catches damage) holding exactly three members:

    manifest.json        format name and version, pyns version, params, MACs and the cost convention,
                         the input shape, sha256 of the other two members, and provenance: where the
                         weights came from, the accuracy and recipe when they came from a training run
    arch.arch            the concrete .arch text (pyns.export.arch_text): widths, resolution, depth and
                         settings baked in, with the original source file's name and hash in its header
    weights.safetensors  the state_dict (parameters and BatchNorm statistics) as safetensors

A folder holding the same three files reads the same way (an unzipped bundle).

Reading trusts nothing: the format version must be one this pyns reads, both hashes must match, the
text's params and MACs are recounted and must equal the manifest's, and the weights must fit the rebuilt
module tensor by tensor. Anything else is an ExportError; a model is returned complete or not at all.
Writing builds the archive in memory, reads it back through the same checks, and only then replaces the
target file atomically (pyns.runfiles).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyns import __version__
from pyns.arch import Arch, loads
from pyns.cost import COST_CONVENTION
from pyns.dsl.expr import evaluate
from pyns.errors import ExportError, PynsError
from pyns.runfiles import atomic_write_bytes, to_jsonable

__all__ = ["FORMAT", "FORMAT_VERSION", "Bundle", "open_bundle", "is_bundle", "load_model", "bundle_bytes",
           "write_bundle"]

FORMAT = "pyns-bundle"
FORMAT_VERSION = 1  # raise on any change an older reader would misread; readers accept <= their own
MANIFEST = "manifest.json"
ARCH = "arch.arch"
WEIGHTS = "weights.safetensors"
_MEMBERS = (MANIFEST, ARCH, WEIGHTS)
_ZIP_MAGIC = b"PK\x03\x04"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_bundle(path: str | Path) -> bool:
    """Whether `path` looks like a bundle (a zip file, or a folder with a manifest.json) — not yet checked."""
    path = Path(path)
    if path.is_dir():
        return (path / MANIFEST).is_file()
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == _ZIP_MAGIC
    except OSError:
        return False


@dataclass
class Bundle:
    """A read and checked bundle, weights not yet loaded into a module."""

    where: str
    manifest: dict[str, Any]
    arch_text: str
    arch: Arch
    weights: bytes = field(repr=False)

    @property
    def depth_mult(self) -> float:
        return float(self.manifest["arch"]["depth_mult"])

    def state_dict(self):
        """The weights as tensors (CPU)."""
        # local: defers safetensors and torch, so `import pyns` (which imports this module) stays quick
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(self.weights)
        except (SafetensorError, ValueError, OSError) as err:
            raise ExportError(f"{self.where}: the weights are damaged ({err})") from None

    def build(self, device: str = "cpu"):
        """The network with the bundle's weights, in eval mode (the module's `.manifest` is the manifest)."""
        # local: defers torch, so `import pyns` (which imports this module) stays quick
        import torch

        from pyns.export.weights import fit_state_dict  # local: imports torch

        with torch.device("meta"):  # no initialisation: every tensor comes from the weights
            model = self.arch.build(depth=self.depth_mult)
        fit_state_dict(model, self.state_dict(), f"{self.where}: the bundled weights", assign=True)
        leftover = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
        if leftover:
            raise ExportError(f"{self.where}: no weights for {', '.join(leftover[:5])}; the bundle is damaged")
        params = sum(p.numel() for p in model.parameters())
        if params != self.manifest["params"]:
            raise ExportError(f"{self.where}: the rebuilt module has {params:,} parameters, the manifest says "
                              f"{self.manifest['params']:,}; the bundle is damaged or was edited")
        model.manifest = self.manifest
        return model.to(device).eval()


def _read_members(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        members = {}
        for name in _MEMBERS:
            try:
                members[name] = (path / name).read_bytes()
            except OSError as err:
                raise ExportError(f"{path} is not a complete pyns bundle folder: cannot read {name} ({err})") from None
        return members
    try:
        return _zip_members(path.read_bytes(), str(path))
    except OSError as err:
        raise ExportError(f"cannot read {path}: {err}") from None


def _zip_members(data: bytes, where: str) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            missing = [n for n in _MEMBERS if n not in names]
            if missing:
                raise ExportError(f"{where} is not a pyns bundle: it lacks {', '.join(missing)}")
            return {name: archive.read(name) for name in _MEMBERS}  # read() checks each member's CRC-32
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as err:
        raise ExportError(f"{where} is not a readable pyns bundle: it is truncated or damaged ({err})") from None


def _check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{where} is not a pyns bundle (its manifest names no `{FORMAT}` format)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ExportError(f"{where}: the manifest's format_version {version!r} is not a version number; "
                          "the bundle is damaged")
    if version > FORMAT_VERSION:
        raise ExportError(f"{where} was written in bundle format version {version} (by pyns "
                          f"{manifest.get('pyns_version', '?')}); this pyns {__version__} reads format version "
                          f"{FORMAT_VERSION} and older", hint="upgrade pyns to load it")
    required = {("params",): int, ("macs",): int, ("arch", "sha256"): str, ("arch", "depth_mult"): (int, float),
                ("weights", "sha256"): str}
    for keys, kind in required.items():
        value: Any = manifest
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ExportError(f"{where}: the manifest's `{'.'.join(keys)}` is missing or malformed; the bundle "
                              "is damaged")
    return manifest


def _open(members: dict[str, bytes], where: str) -> Bundle:
    try:
        manifest = json.loads(members[MANIFEST].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{where}: the manifest is not valid JSON ({err}); the bundle is damaged") from None
    manifest = _check_manifest(manifest, where)
    for name, section in ((ARCH, "arch"), (WEIGHTS, "weights")):
        if _sha256(members[name]) != manifest[section]["sha256"]:
            raise ExportError(f"{where}: {name} does not match the sha256 in the manifest; the bundle is damaged "
                              "or was edited")
    try:
        text = members[ARCH].decode("utf-8")
        arch = loads(text, filename=f"{where}:{ARCH}")
        cost = arch.count(depth=float(manifest["arch"]["depth_mult"]))
    except UnicodeDecodeError as err:
        raise ExportError(f"{where}: {ARCH} is not UTF-8 text ({err}); the bundle is damaged") from None
    except PynsError as err:
        raise ExportError(f"{where}: the bundled architecture does not load with this pyns: {err}") from None
    if (cost.params, cost.macs) != (manifest["params"], manifest["macs"]):
        raise ExportError(f"{where}: the bundled architecture counts {cost.params:,} params / {cost.macs:,} MACs "
                          f"but the manifest says {manifest['params']:,} / {manifest['macs']:,}; the bundle was "
                          "edited or this pyns counts differently")
    return Bundle(where, manifest, text, arch, members[WEIGHTS])


def open_bundle(path: str | Path) -> Bundle:
    """Read and check a bundle (file or folder) without building the module; ExportError if anything is off."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"there is no bundle at {path}")
    return _open(_read_members(path), str(path))


def load_model(path: str | Path, *, device: str = "cpu"):
    """The network stored in the bundle at `path` with its trained weights, in eval mode.

    Nothing is unpickled. The module's `.manifest` holds the manifest (params, MACs, accuracy, provenance).
    """
    return open_bundle(path).build(device)


def _manifest(concrete, model, source: dict[str, Any], weights: bytes) -> dict[str, Any]:
    arch = concrete.arch
    network = arch.ir(concrete.depth_mult)
    searchable = set(arch.searchable)
    outputs = int(evaluate(network.out_features, arch.defaults)) if network.out_features is not None else None
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pyns_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "name": arch.source.name,
        "params": concrete.params,
        "macs": concrete.macs,
        "flops": 2 * concrete.macs,
        "convention": COST_CONVENTION,
        "input": {"shape": ["batch", network.in_channels, network.resolution, network.resolution],
                  "dtype": "float32"},
        "outputs": outputs,
        "arch": {"file": ARCH, "sha256": _sha256(concrete.text.encode("utf-8")), "depth_mult": concrete.depth_mult,
                 "resolution": network.resolution,
                 "widths": {k: v for k, v in arch.defaults.items() if k in searchable},
                 **source.get("arch", {})},
        "weights": {"file": WEIGHTS, "sha256": _sha256(weights), "tensors": len(model.state_dict()),
                    **source.get("weights", {})},
        "source": source.get("source", {}),
        "accuracy": source.get("accuracy"),
        "recipe": source.get("recipe"),
        "data": source.get("data"),
        "notes": list(source.get("notes", [])),
    }


def bundle_bytes(concrete, model, source: dict[str, Any] | None = None) -> tuple[bytes, dict[str, Any]]:
    """(the bundle file's bytes, its manifest) for `model` built from `concrete` (pyns.export.arch_text).

    `source` adds provenance: optional "arch" and "weights" entries merged into those sections, and
    "source", "accuracy", "recipe", "data", "notes". The bytes are read back and checked before returning.
    """
    # local: defers torch and safetensors, so `import pyns` (which imports this module) stays quick
    import torch
    from safetensors.torch import save as save_safetensors

    source = dict(source or {})
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = save_safetensors(state)
    manifest = to_jsonable(_manifest(concrete, model, source, weights))
    members = {MANIFEST: (json.dumps(manifest, indent=2) + "\n").encode("utf-8"),
               ARCH: concrete.text.encode("utf-8"), WEIGHTS: weights}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in _MEMBERS:
            archive.writestr(name, members[name])
    data = buffer.getvalue()
    # Read back through every check a later load makes: a bundle that would not load is never written.
    reloaded = _open(_zip_members(data, "<new bundle>"), "<new bundle>").build()
    again = reloaded.state_dict()
    if set(again) != set(state) or not all(torch.equal(again[k], state[k]) for k in state):
        raise ExportError("internal error: the bundle read back holds other weights than the model; please report it")
    return data, manifest


def write_bundle(path: str | Path, concrete, model, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the bundle of `model` to `path` atomically (see `bundle_bytes`); returns its manifest."""
    data, manifest = bundle_bytes(concrete, model, source)
    atomic_write_bytes(path, data)
    return manifest
