"""The ``/v1`` JSON answers, written from a request's arrays (:class:`~service.device.assembly.Answer`).

Top-k rows are sparse: each row's support in descending output order (ties: lower index first),
the output there, the JVP there, and the VJP dense. Dense rows (sort, rank, isotonic) give every
entry. orjson writes the float32 slices directly (``OPT_SERIALIZE_NUMPY``), so a number is the
float32 the kernel computed, printed in full.
"""

from __future__ import annotations

import numpy as np
import orjson

from service.device.assembly import Answer

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def topk_json(answer: Answer, operator: str, output: str) -> bytes:
    """``{"operator", "output", "rows": [{"indices", "values", "jvp"?, "vjp"?, "n", "k"}]}``."""
    batch = answer.batch
    support = batch.support
    assert support is not None and batch.sorted_out is not None, "a top-k batch has its support"
    order, counts = support.order, support.counts
    sorted_out, sorted_jvp, vjp = batch.sorted_out, batch.sorted_jvp, batch.vjp
    rows: list[dict[str, object]] = []
    for i, n, k in zip(range(answer.start, answer.stop), answer.lengths, answer.k, strict=True):
        size = counts[i]
        row: dict[str, object] = {"indices": order[i, :size], "values": sorted_out[i, :size]}
        if sorted_jvp is not None:
            row["jvp"] = sorted_jvp[i, :size]
        if vjp is not None:
            row["vjp"] = vjp[i, :n]
        row["n"] = n
        row["k"] = k
        rows.append(row)
    return orjson.dumps({"operator": operator, "output": output, "rows": rows}, option=_NUMPY)


def dense_json(answer: Answer, operator: str) -> bytes:
    """``{"operator", "rows": [{"values", "jvp"?, "vjp"?, "n"}]}``, every entry of every row."""
    batch = answer.batch
    rows: list[dict[str, object]] = []
    for i, n in zip(range(answer.start, answer.stop), answer.lengths, strict=True):
        row: dict[str, object] = {"values": np.ascontiguousarray(batch.out[i, :n])}
        if batch.jvp is not None:
            row["jvp"] = np.ascontiguousarray(batch.jvp[i, :n])
        if batch.vjp is not None:
            row["vjp"] = np.ascontiguousarray(batch.vjp[i, :n])
        row["n"] = n
        rows.append(row)
    return orjson.dumps({"operator": operator, "rows": rows}, option=_NUMPY)
