"""Prometheus text exposition (version 0.0.4) of the summed metrics cells."""

from __future__ import annotations

from appliance.observe.metrics import FAMILIES, HISTOGRAM, SUM_SCALE, Entry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _sample(name: str, label_text: str, value: float) -> str:
    return f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}"


def render(entries: list[Entry], totals: list[int]) -> str:
    """One HELP/TYPE block per family, its samples in registration order."""
    grouped: dict[str, dict[str, list[tuple[str, int]]]] = {name: {} for name in FAMILIES}
    for (family, label_text, part), value in zip(entries, totals, strict=True):
        grouped[family].setdefault(label_text, []).append((part, value))
    out: list[str] = []
    for family, series in grouped.items():
        kind, doc = FAMILIES[family]
        out.append(f"# HELP {family} {doc}")
        out.append(f"# TYPE {family} {kind}")
        for label_text, parts in series.items():
            if kind != HISTOGRAM:
                out.append(_sample(family, label_text, parts[0][1]))
                continue
            count, total = 0, 0.0
            sep = "," if label_text else ""
            for part, value in parts:
                if part == "sum":
                    total = value / SUM_SCALE
                else:
                    count += value  # cells hold one bucket each; Prometheus buckets are cumulative
                    out.append(f'{family}_bucket{{{label_text}{sep}le="{part}"}} {count}')
            out.append(_sample(f"{family}_sum", label_text, total))
            out.append(_sample(f"{family}_count", label_text, count))
    return "\n".join(out) + "\n"
