"""What a build of the extra router rows writes: the row files, a manifest with provenance and counts, and
SOURCES.md, so that every row's source, commit and licence can be traced and the balance checked at a glance."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from training.extra_build import HIGH, SOURCES
from training.extra_sources import Mirror
from training.metrics import auroc


def write(out: Path, families: dict[str, list[dict[str, Any]]], mirrors: dict[str, Mirror]) -> dict[str, Any]:
    """Write ``<family>.jsonl``, ``manifest.json`` and ``SOURCES.md`` under ``out``; return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    for family, rows in families.items():
        with open(out / f"{family}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    manifest = summary(families, mirrors)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "SOURCES.md").write_text(sources_markdown(manifest), encoding="utf-8")
    return manifest


def _lengths(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    values = np.array([len(r["prompt"]) for r in rows])
    if not len(values):
        return {}
    return {f"p{q}": int(np.percentile(values, q)) for q in (10, 25, 50, 75, 90)} | {"n": int(len(values))}


def summary(families: dict[str, list[dict[str, Any]]], mirrors: dict[str, Mirror]) -> dict[str, Any]:
    """Counts per source/kind/language/label and the length distribution per label, per family."""
    out: dict[str, Any] = {"sources": [], "families": {}}
    for s in SOURCES:
        if s.name in mirrors:
            out["sources"].append(
                {
                    "name": s.name,
                    "repo": s.repo,
                    "commit": mirrors[s.name].commit,
                    "license": s.license,
                    "family": s.family,
                    "note": s.note,
                }
            )
    for family, rows in families.items():
        table: Counter[str] = Counter(
            f"{r['source']}|{r['kind']}|{r['language']}|{int(r['target'] >= HIGH)}" for r in rows
        )
        labels = [int(r["target"] >= HIGH) for r in rows]
        out["families"][family] = {
            "rows": len(rows),
            "length_auroc": round(auroc([len(r["prompt"]) for r in rows], labels), 4) if rows else None,
            "counts": dict(sorted(table.items())),
            "length_low": _lengths(r for r in rows if r["target"] < HIGH),
            "length_high": _lengths(r for r in rows if r["target"] >= HIGH),
        }
    return out


def sources_markdown(manifest: dict[str, Any]) -> str:
    """SOURCES.md: each source with its commit, licence and row counts, and the length distribution per label."""
    lines = [
        "# Extra router rows: sources",
        "",
        "Built by `scripts/data/build_router_extra.py`.",
        "",
        "| source | repository | commit | licence | rows (low / high) |",
        "|---|---|---|---|---|",
    ]
    for s in manifest["sources"]:
        counts = manifest["families"][s["family"]]["counts"]
        low = sum(n for k, n in counts.items() if k.startswith(s["name"] + "|") and k.endswith("|0"))
        high = sum(n for k, n in counts.items() if k.startswith(s["name"] + "|") and k.endswith("|1"))
        lines.append(f"| {s['name']} | {s['repo']} | `{s['commit'][:12]}` | {s['license']} | {low} / {high} |")
    for family, info in manifest["families"].items():
        lines += [
            "",
            f"## {family}.jsonl: {info['rows']} rows",
            "",
            "| source | kind | language | label | rows |",
            "|---|---|---|---|---|",
        ]
        for key, n in info["counts"].items():
            lines.append("| " + " | ".join(key.split("|")) + f" | {n} |")
        lines += [
            "",
            f"Prompt length (characters), label 0: {info['length_low']}",
            f"label 1: {info['length_high']}",
            f"AUROC of length alone: {info['length_auroc']}",
        ]
    return "\n".join(lines) + "\n"
