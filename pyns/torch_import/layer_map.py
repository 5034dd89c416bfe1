"""The importer's layer map: which module of the original model each counted IR layer came from.

The map travels in the imported .arch text as `# pyns-torch-layers:` comment lines, so an Arch read back
from a file can still take the original model's state_dict (`pyns prune ARCH --weights FILE`) without
the model's code. A hand-edited file whose layers no longer match the map is refused by the layer count
check of load_weights, never loaded wrongly.
"""
from __future__ import annotations

MAP_PREFIX = "# pyns-torch-layers:"
_LINE = 100  # wrap the map like the rest of the file, so it stays readable in an editor


def map_comment(layers) -> str:
    """The layer map as comment lines for the end of an imported .arch file."""
    words = []
    for kind, path in layers:
        words.append(f"{kind}={'+'.join(path) if isinstance(path, tuple) else path}")
    lines, line = [], MAP_PREFIX
    for word in words:
        if len(line) + 1 + len(word) > _LINE and line != MAP_PREFIX:
            lines.append(line)
            line = MAP_PREFIX
        line += " " + word
    lines.append(line)
    return "\n".join(lines) + "\n"


def map_from_text(text: str):
    """The layer map written by map_comment, or None when the text has none (a hand-written file)."""
    layers = []
    for line in text.splitlines():
        if not line.startswith(MAP_PREFIX):
            continue
        for word in line[len(MAP_PREFIX):].split():
            kind, _, path = word.partition("=")
            layers.append((kind, tuple(path.split("+")) if kind == "se" else path))
    return layers or None
