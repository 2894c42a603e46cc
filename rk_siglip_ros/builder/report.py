"""The end-of-build summary table (plain text, fixed-width), built from a manifest alone."""

from __future__ import annotations

from rk_siglip_ros.manifest import Manifest

COLUMNS = ("shard", "layers", "MMACs", "ONNX cos", "RKNN-sim cos", "size", "compile s")


def describe_blocks(labels: list[str], head: bool = True) -> str:
    """['embedding', 'attention0', 'mlp0', 'attention1'] -> 'emb L0 L1.attn' (full layers merged into ranges)."""
    parts: list[str] = []
    full: list[int] = []

    def flush() -> None:
        if full:
            parts.append(f"L{full[0]}" if len(full) == 1 else f"L{full[0]}-{full[-1]}")
            full.clear()

    index = 0
    while index < len(labels):
        label = labels[index]
        if label.startswith("attention") and index + 1 < len(labels) and labels[index + 1] == f"mlp{label[9:]}":
            layer = int(label[9:])
            if full and full[-1] != layer - 1:
                flush()
            full.append(layer)
            index += 2
            continue
        flush()
        if label == "embedding":
            parts.append("emb")
        elif label == "final":
            parts.append("norm+head" if head else "norm")
        elif label.startswith("attention"):
            parts.append(f"L{label[9:]}.attn")
        elif label.startswith("mlp"):
            parts.append(f"L{label[3:]}.mlp")
        index += 1
    flush()
    return " ".join(parts)


def summary_table(manifest: Manifest) -> str:
    per_shard = {entry["name"]: entry for entry in manifest.verification.get("per_shard", [])}
    has_head = manifest.outputs.get("pooled") is not None
    rows = []
    for shard in manifest.shards:
        entry = per_shard.get(shard.name, {})
        size = int(entry.get("onnx_bytes", 0) or 0) + int(entry.get("rknn_bytes", 0) or 0)
        rows.append((
            shard.name,
            describe_blocks(shard.blocks, has_head) or ",".join(map(str, shard.layers)),
            f"{shard.macs / 1e6:.1f}",
            _cos(entry.get("onnx_cos")),
            _cos(entry.get("rknn_sim_cos")),
            _size(size),
            f"{entry['compile_s']:.1f}" if entry.get("compile_s") is not None else "-",
        ))
    end = manifest.verification
    rows.append(("chain", "end to end", f"{sum(s.macs for s in manifest.shards) / 1e6:.1f}",
                 _cos(end.get("onnx_vs_fp32_cos")), _cos(end.get("rknn_sim_vs_fp32_cos")), "", ""))
    widths = [max(len(str(row[i])) for row in (COLUMNS, *rows)) for i in range(len(COLUMNS))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in (COLUMNS, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.insert(len(lines) - 1, lines[1])
    return "\n".join(lines)


def _cos(value: object) -> str:
    return f"{value:.7f}" if isinstance(value, float) else "-"


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"
