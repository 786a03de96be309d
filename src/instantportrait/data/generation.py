"""The pair generation job (InstantPortrait, App. B.2): target first, then the input from it.

For each prompt row: the **target** from the target prompt (SDXL, no adapters); its canny
edges; the **input** from the identity prompt, the edges (ControlNet) and the target itself
(IP-Adapter), so the input shows the same person and composition without the edit (the
settings, the backend that draws and each row's generators: :mod:`.pair_drawing`); then
the filters (:mod:`.filters`). Kept pairs go into shards of the pair format
(:mod:`.pairs`): ``KEY.input.EXT``, ``KEY.target.EXT`` and ``KEY.json`` (instruction, the
input's landmarks, with SCRFD or MTCNN its keypoints, the prompts, attributes, the filter's
measures); ``manifest.json`` records the detector under ``face_points``.

**Shards, resume, ranks.** Rows are cut into shards of ``shard_size`` consecutive rows;
shard ``s`` holds the kept pairs of rows ``s*K .. s*K+K-1``, keyed by their row position, so
a pair's key is fixed before it is drawn and no key can appear twice. A shard is written to a
temporary file and renamed: ``shard-NNNNNN.json`` (the shard's report, every row with its
verdict) first, then ``shard-NNNNNN.tar``, whose appearance marks the shard complete. A job
killed at any moment and restarted skips complete shards and redoes the others from
scratch; every row draws from generators seeded by ``(seed, row)``, so a redone shard is
the one an uninterrupted job would have written. Under ``accelerate launch`` process ``r``
of ``n`` takes the shards ``s`` with ``s % n == r``: disjoint, no coordinator; whichever
process finds every shard complete writes ``manifest.json`` (counts by reason, throughput).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import InputError
from ..writer import atomic_write, prepare_output
from .canny import canny_image
from .filters import REASONS, FilterConfig, PairFilter
from .pair_drawing import IMAGE_FORMATS, Backend, GenerationSettings, row_generators
from .pairs import SHARD_PATTERN
from .prompts import read_prompts

JOB_FILE = "job.json"
MANIFEST_FILE = "manifest.json"
REPORT_PATTERN = "shard-{:06d}.json"


@dataclass
class ShardReport:
    """What one shard did: every row's verdict and the time spent per phase."""

    shard: int
    first_row: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(r["reason"] or "kept" for r in self.rows)
        return {k: c.get(k, 0) for k in ("kept", *REASONS)}


def _encode(image: Image.Image, settings: GenerationSettings) -> bytes:
    fmt, _ = IMAGE_FORMATS[settings.image_format]
    buf = io.BytesIO()
    options = {"quality": settings.jpeg_quality} if fmt in ("JPEG", "WEBP") else {}
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_WORKER_FILTER: PairFilter | None = None


def _init_filter_worker(config: FilterConfig) -> None:
    global _WORKER_FILTER
    torch.set_num_threads(1)
    _WORKER_FILTER = PairFilter(config)


def _filter_in_worker(input_image: Image.Image, target_image: Image.Image):
    t0 = time.perf_counter()
    verdict = _WORKER_FILTER(input_image, target_image)  # type: ignore[misc]
    return verdict, time.perf_counter() - t0


class GenerationJob:
    """A resumable, rank-sharded generation job writing into ``output``.

    Args:
        prompts: a prompts JSONL file (``data prompts``).
        output: the dataset folder (shards, reports, ``job.json``, ``manifest.json``).
        backend: what draws the images (:class:`.models.DiffusersBackend` for real models).
        settings: resolution, steps, seeds, image format.
        filters: the filter thresholds (``FilterConfig(enabled=False)``: ``--no-filter``).
        shard_size: rows per shard.
        limit: use only the first ``limit`` rows.
        rank, world_size: this process's share (shards ``s % world_size == rank``).
        describe: what is recorded about the models in ``job.json`` (resume checks it).
        filter_workers: run the filters in this many worker processes, overlapping the
            generation of the next pairs (0: in this process, one pair after another).
    """

    def __init__(
        self,
        prompts: str | os.PathLike,
        output: str | os.PathLike,
        backend: Backend,
        settings: GenerationSettings | None = None,
        filters: FilterConfig | None = None,
        shard_size: int = 1000,
        limit: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        describe: dict[str, Any] | None = None,
        pair_filter: PairFilter | None = None,
        filter_workers: int = 0,
    ):
        if shard_size < 1:
            raise InputError(f"--shard-size: must be at least 1, got {shard_size}")
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} outside a world of {world_size} processes")
        self.prompts = Path(prompts)
        if not self.prompts.is_file():
            raise InputError(f"{self.prompts}: prompts file not found")
        self.output = Path(output)
        self.backend = backend
        self.settings = settings or GenerationSettings()
        self.filters = filters or FilterConfig()
        self.filter = pair_filter or PairFilter(self.filters)
        self.shard_size = int(shard_size)
        total = sum(1 for _ in read_prompts(self.prompts))  # every row checked up front
        self.total = total if limit is None else min(total, int(limit))
        if self.total == 0:
            raise InputError(f"{self.prompts}: no prompt rows")
        self.num_shards = -(-self.total // self.shard_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.describe = describe or {}
        if filter_workers < 0:
            raise InputError("--filter-workers: must be non-negative")
        self.filter_workers = int(filter_workers)
        self._pool = None

    # ----------------------------------------------------------------- bookkeeping
    def job_spec(self) -> dict[str, Any]:
        """What must be equal for a restart to continue this job (not start a new one)."""
        return {
            "prompts": str(self.prompts.resolve()),
            "prompts_sha256": _file_digest(self.prompts),
            "rows": self.total,
            "shard_size": self.shard_size,
            "settings": asdict(self.settings),
            "filters": asdict(self.filters),
            "models": self.describe,
        }

    def shard_path(self, shard: int) -> Path:
        return self.output / SHARD_PATTERN.format(shard)

    def report_path(self, shard: int) -> Path:
        return self.output / REPORT_PATTERN.format(shard)

    def is_complete(self, shard: int) -> bool:
        return self.shard_path(shard).is_file() and self.report_path(shard).is_file()

    def my_shards(self) -> list[int]:
        return [s for s in range(self.num_shards) if s % self.world_size == self.rank]

    def prepare(self, overwrite: bool = False) -> None:
        """Create or resume the output folder; refuse a different job's folder.

        With ``overwrite`` the folder is removed first (call on one process only).
        """
        spec = self.job_spec()
        job_file = self.output / JOB_FILE
        if overwrite:
            prepare_output(self.output, overwrite=True, kind="dir")
        if not job_file.is_file():
            try:
                prepare_output(self.output, overwrite=False, kind="dir")
            except InputError:
                if not job_file.is_file():  # another rank may have just started the job
                    raise
            else:
                text = json.dumps(spec, indent=2) + "\n"
                atomic_write(job_file, lambda p: p.write_text(text, encoding="utf-8"))
        try:
            old = json.loads(job_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = None
        if old != spec:
            raise InputError(
                f"{self.output}: holds another generation job (different prompts, settings "
                "or models); pass --overwrite to replace it or choose another folder"
            )
        # temporary files of this rank's interrupted shards
        mine = {SHARD_PATTERN.format(s) for s in self.my_shards()}
        mine |= {REPORT_PATTERN.format(s) for s in self.my_shards()}
        for tmp in self.output.glob(".shard-*.tmp"):
            if tmp.name[1:].rsplit(".", 2)[0] in mine:
                tmp.unlink(missing_ok=True)

    # ----------------------------------------------------------------- the work
    def _shard_rows(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """(shard, rows) for every shard in order, streaming the prompts file once."""
        chunk: list[dict[str, Any]] = []
        shard = 0
        for position, row in enumerate(read_prompts(self.prompts)):
            if position >= self.total:
                break
            row["_position"] = position
            chunk.append(row)
            if len(chunk) == self.shard_size:
                yield shard, chunk
                shard, chunk = shard + 1, []
        if chunk:
            yield shard, chunk

    def _generate(self, shard: int, rows: list[dict], progress: Callable[[int], None]):
        s = self.settings
        report = ShardReport(shard, shard * self.shard_size)
        seconds = Counter()
        gens = [row_generators(s.seed, r["_position"], self.backend.device) for r in rows]
        batches = [
            range(i, min(i + s.batch_size, len(rows))) for i in range(0, len(rows), s.batch_size)
        ]
        targets: list[Image.Image] = []
        with self.backend.phase("target"):
            for b in batches:
                t0 = time.perf_counter()
                targets += self.backend.targets([rows[i] for i in b], [gens[i][0] for i in b])
                seconds["target"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        edges = [canny_image(t, s.canny_low, s.canny_high) for t in targets]
        seconds["canny"] += time.perf_counter() - t0
        members: list[tuple[str, bytes]] = []
        pending: list[tuple[int, Image.Image, Any]] = []
        ext = IMAGE_FORMATS[s.image_format][1]
        with self.backend.phase("input"):
            for b in batches:
                t0 = time.perf_counter()
                inputs = self.backend.inputs(
                    [rows[i] for i in b],
                    [targets[i] for i in b],
                    [edges[i] for i in b],
                    [gens[i][1] for i in b],
                )
                seconds["input"] += time.perf_counter() - t0
                for i, image in zip(b, inputs):
                    if self._pool is not None:
                        pending.append(
                            (i, image, self._pool.submit(_filter_in_worker, image, targets[i]))
                        )
                    else:
                        t0 = time.perf_counter()
                        pending.append((i, image, self.filter(image, targets[i])))
                        seconds["filter"] += time.perf_counter() - t0
                    progress(1)
        for i, image, outcome in pending:
            if self._pool is not None:
                verdict, spent = outcome.result()
                seconds["filter"] += spent
            else:
                verdict = outcome
            row = rows[i]
            key = f"{row['_position']:09d}"
            report.rows.append(
                {
                    "key": key,
                    "prompt_index": row.get("index"),
                    "reason": verdict.reason,
                    "metrics": verdict.metrics,
                }
            )
            if verdict.kept:
                t0 = time.perf_counter()
                meta = {
                    "instruction": row["instruction"],
                    "identity": row["identity"],
                    "target_prompt": row["target"],
                    "prompt_index": row.get("index"),
                    "category": row.get("category"),
                    "attributes": row.get("attributes"),
                    "filter": verdict.metrics,
                }
                if verdict.landmarks is not None:
                    meta["landmarks"] = verdict.landmarks
                if verdict.keypoints is not None:
                    meta["keypoints"] = verdict.keypoints
                members += [
                    (f"{key}.input{ext}", _encode(image, s)),
                    (f"{key}.target{ext}", _encode(targets[i], s)),
                    (f"{key}.json", json.dumps(meta).encode()),
                ]
                seconds["encode"] += time.perf_counter() - t0
        report.seconds = dict(seconds)
        return report, members

    def _write(self, report: ShardReport, members: list[tuple[str, bytes]]) -> None:
        data = json.dumps(
            {
                "shard": report.shard,
                "rank": self.rank,
                "first_row": report.first_row,
                "counts": report.counts,
                "seconds": report.seconds,
                "wall_seconds": report.wall,
                "rows": report.rows,
            }
        )
        atomic_write(self.report_path(report.shard), lambda p: p.write_text(data, "utf-8"))

        def write_tar(tmp: Path) -> None:
            with tarfile.open(tmp, "w") as tar:
                for name, blob in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    info.mtime = 0
                    tar.addfile(info, io.BytesIO(blob))

        atomic_write(self.shard_path(report.shard), write_tar)

    def run(self, progress: bool = True) -> dict[str, Any] | None:
        """Draw every unfinished shard of this rank; returns the manifest when all are done."""
        from tqdm.auto import tqdm

        todo = {s for s in self.my_shards() if not self.is_complete(s)}
        pending_rows = sum(min(self.shard_size, self.total - s * self.shard_size) for s in todo)
        bar = tqdm(
            total=pending_rows,
            unit="pair",
            desc=f"pairs (rank {self.rank})" if self.world_size > 1 else "pairs",
            disable=not progress,
            smoothing=0.0,
            dynamic_ncols=True,
        )
        if self.filter_workers and self.filters.enabled and todo:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                self.filter_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_filter_worker,
                initargs=(self.filters,),
            )
        try:
            with bar:
                for shard, rows in self._shard_rows():
                    if shard not in todo:
                        continue
                    t0 = time.perf_counter()
                    report, members = self._generate(shard, rows, bar.update)
                    report.wall = time.perf_counter() - t0
                    self._write(report, members)
                    bar.set_postfix(shard=shard, kept=report.counts["kept"])
        finally:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
                self._pool = None
        if all(self.is_complete(s) for s in range(self.num_shards)):
            return self.write_manifest()
        return None

    def write_manifest(self) -> dict[str, Any]:
        """Summarise every shard report into ``manifest.json`` (idempotent)."""
        totals: Counter = Counter()
        seconds: Counter = Counter()
        wall = 0.0
        shards = []
        for s in range(self.num_shards):
            rep = json.loads(self.report_path(s).read_text(encoding="utf-8"))
            totals.update(rep["counts"])
            seconds.update(rep["seconds"])
            wall += rep.get("wall_seconds") or sum(rep["seconds"].values())
            shards.append({"file": self.shard_path(s).name, "pairs": rep["counts"]["kept"]})
        manifest = {
            "format": "instantportrait-pairs/shards",
            "rows": self.total,
            "pairs": totals["kept"],
            "filtered": {r: totals.get(r, 0) for r in REASONS},
            "seconds": dict(seconds),
            "wall_seconds": wall,
            "rows_per_second": self.total / wall if wall > 0 else None,
            "shards": shards,
            "settings": asdict(self.settings),
            "filters": asdict(self.filters),
            "models": self.describe,
            "face_points": face_points_record(self.filters.detector),
        }
        text = json.dumps(manifest, indent=2) + "\n"
        atomic_write(self.output / MANIFEST_FILE, lambda p: p.write_text(text, "utf-8"))
        return manifest


def face_points_record(detector: str) -> dict[str, Any]:
    """What the rows' face points are, for ``manifest.json``: the detector's spec, and the
    source of the rows' ``keypoints`` (SCRFD's or MTCNN's own; ``None`` with dlib's detectors,
    whose rows hold dlib's 5 ``landmarks`` only)."""
    name = (detector or "hog").partition(":")[0]
    own = None if name in ("hog", "mmod") else ("mtcnn" if name == "mtcnn" else "scrfd")
    return {"detector": detector or "hog", "landmarks": "dlib 5 points", "keypoints": own}


def summary_table(manifest: dict[str, Any]) -> str:
    """The manifest as a small text table: kept / filtered by reason, time per phase."""
    rows = manifest["rows"]
    lines = [f"{'outcome':<16}{'pairs':>10}{'share':>9}"]

    def pct(n: int) -> str:
        return f"{100.0 * n / rows:8.1f}%" if rows else "       -"

    lines.append(f"{'kept':<16}{manifest['pairs']:>10}{pct(manifest['pairs'])}")
    for reason, n in manifest["filtered"].items():
        lines.append(f"{reason:<16}{n:>10}{pct(n)}")
    lines.append(f"{'total rows':<16}{rows:>10}")
    secs = manifest["seconds"]
    busy = sum(secs.values())
    wall = manifest.get("wall_seconds") or busy
    if busy > 0 and wall > 0:
        lines.append("")
        lines.append(f"{'phase':<16}{'seconds':>10}{'share':>9}")
        for name, value in sorted(secs.items(), key=lambda kv: -kv[1]):
            lines.append(f"{name:<16}{value:>10.1f}{100 * value / busy:8.1f}%")
        lines.append(
            f"throughput: {rows / wall:.3f} rows/s, {manifest['pairs'] / wall:.3f} kept pairs/s "
            f"(over {wall:.1f} s of wall time)"
        )
    return "\n".join(lines)


def distributed_rank() -> tuple[int, int, Any]:
    """``(rank, world_size, device)`` of this process under ``accelerate launch`` / torchrun
    (their ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``); ``(0, 1, None)`` alone.

    Shards need no process group: each process derives its share from its rank alone.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, None
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    device = torch.device("cuda", local) if torch.cuda.is_available() else None
    return rank, world, device


def iter_reports(output: str | os.PathLike) -> Iterable[dict[str, Any]]:
    """Every shard report of a generated dataset folder, in shard order."""
    for path in sorted(Path(output).glob("shard-*.json")):
        yield json.loads(path.read_text(encoding="utf-8"))
