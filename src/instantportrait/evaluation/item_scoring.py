"""One item of an evaluation run: its output generated once, then scored by every metric.

An item's output is generated only when the store has no usable one (a stored PNG is
reused); a method failing on one item is recorded as that item's failure (``failed``, with
the first line of the error), and the metrics that define a value for a failed generation
(FFC) get it. The output is written atomically as PNG under ``outputs/METHOD/SUBJECT/``;
each item metric not yet stored under its current key is computed and written as one row
(``ok``, ``n/a`` when it does not apply, ``failed`` with its error). :class:`ItemScoring` is
the part of :class:`~.runner.Evaluator` that does this; the runner plans, claims and orders
the items.
"""

from __future__ import annotations

import time
from typing import Any

from PIL import Image

from ..io import load_image
from ..writer import atomic_write
from . import metrics as M
from .aggregates import first_line
from .run_config import Item, RunSummary
from .store import ResultRow, ResultStore

__all__ = ["ItemScoring"]


class ItemScoring:
    """Generating and scoring items; mixed into :class:`~.runner.Evaluator`, whose state
    (``config``, ``methods``, ``hub``, ``out``, ``available``, ``metric_keys``, ``key()``)
    it reads."""

    def output_relpath(self, item: Item) -> str:
        """Where an item's PNG goes, relative to the output folder (the ``folder`` method
        reads this layout back: ``folder:OUT/outputs/NAME``)."""
        p = item.prompt
        return f"outputs/{item.method}/{item.subject.name}/{p.index:03d}-{p.hash}_s{item.seed}.png"

    def _item_metrics(self) -> list[str]:
        return [m for m in self.available if M.METRICS[m].scope == "item"]

    def _generate(self, item: Item, image: Image.Image) -> Image.Image:
        out = self.methods[item.method].generate(
            image,
            item.prompt.text,
            item.seed,
            face=item.subject.name,
            prompt_index=item.prompt.index,
            prompt_hash=item.prompt.hash,
            subject=item.subject,
        )
        if not isinstance(out, Image.Image):
            out = load_image(out, name=f"{item.method} output")
        return out.convert("RGB")

    def _output(self, item: Item, image: Image.Image, store: ResultStore, summary: RunSummary):
        key = self.key(item)
        rel = self.output_relpath(item)
        stored = store.output(key)
        path = self.out / rel
        if stored and stored[1] == "ok" and stored[0] and (self.out / stored[0]).is_file():
            summary.reused_outputs += 1
            return load_image(self.out / stored[0])
        t0 = time.perf_counter()
        try:
            out = self._generate(item, image)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a method failing on one item is recorded
            error = first_line(exc)
            store.set_output(key, None, "failed", error, time.perf_counter() - t0)
            rows = [
                self._row(item, name, value=M.METRICS[name].on_generation_failure)
                for name in self._item_metrics()
                if M.METRICS[name].on_generation_failure is not None
            ]
            rows = [
                ResultRow(
                    **{**r.__dict__, "error": "generation failed", "detail": {"error": error}}
                )
                for r in rows
            ]
            store.add_rows(rows)
            summary.rows_written += len(rows)
            summary.failed_outputs += 1
            return None
        seconds = time.perf_counter() - t0
        # lossless PNG at zlib level 1: ~8x faster to write than level 6, a little larger
        atomic_write(path, lambda tmp: out.save(tmp, format="PNG", compress_level=1))
        store.set_output(key, rel, "ok", None, seconds)
        summary.generated += 1
        return out

    def _row(self, item: Item, metric: str, **fields: Any) -> ResultRow:
        key = self.key(item)
        base = dict(
            method=key[0],
            face=key[1],
            subject_fp=key[2],
            prompt=key[3],
            seed=key[4],
            metric=metric,
            metric_key=self.metric_keys[metric],
            value=None,
        )
        base.update(fields)
        return ResultRow(**base)

    def _process(self, item: Item, image: Image.Image, store: ResultStore, summary) -> None:
        output = self._output(item, image, store, summary)
        if output is None:
            return
        have = store.done_item(self.key(item))
        ctx = M.ItemContext(
            image,
            output,
            item.prompt.text,
            self.hub,
            text=self.config.text_template.format(prompt=item.prompt.text),
            input_key=str(item.face),
            subject=item.subject,
            face_match=self.config.face_match,
        )
        rows = []
        for name in self._item_metrics():
            if (name, self.metric_keys[name]) in have:
                continue
            rows.append(self._score(name, item, ctx))
        store.add_rows(rows)
        summary.rows_written += len(rows)

    def _score(self, name: str, item: Item, ctx: M.ItemContext) -> ResultRow:
        t0 = time.perf_counter()
        ctx.detail = {}
        try:
            value = M.METRICS[name].fn(ctx)
        except (KeyboardInterrupt, SystemExit):
            raise
        except M.NotApplicable as exc:
            return self._row(item, name, status="n/a", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - recorded as this item's failure
            return self._row(
                item,
                name,
                status="failed",
                error=first_line(exc),
                seconds=time.perf_counter() - t0,
            )
        return self._row(
            item,
            name,
            value=float(value),
            seconds=time.perf_counter() - t0,
            n=1,
            detail=dict(ctx.detail) or None,
        )
