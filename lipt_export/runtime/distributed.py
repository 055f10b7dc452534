"""``lipt-export upscale ... --ray [auto|ADDRESS]``: images and videos upscaled across a Ray cluster's workers.

* **Workers.** One actor per node (:class:`UpscaleWorker`), holding one runner, with the node's CPUs (and one of its
  GPUs) and as many runtime threads; the driver (this process) decides everything a local run decides (artifact,
  runtime, tile, overlap, video plans) and the workers run exactly that, so outputs equal a local run's.
* **The export** (the artifact file and its manifest) is put into Ray's object store once and reaches each node
  once; every worker writes it into a private temp folder and opens it through :func:`open_artifact` (the manifest's
  sha256 checked, and every shipped file's own sha256).
* **Shared nothing.** Inputs travel from the driver to the workers and outputs back through the object store; only
  the driver writes outputs, under temp names renamed when complete (``.NAME.<pid>-*.tmp``, as a local run), so a
  retried task can never leave a second or half-written file, and nodes need no shared filesystem.
* **Images** run one per task with :func:`lipt_export.runtime.upscale.upscale_file` (same bytes as a local run).
  **Videos** are cut at keyframes into segments (:mod:`lipt_export.runtime.video_segments`), processed in parallel
  and joined in the driver without re-encoding.
* **Faults.** A worker process that dies is restarted by Ray on its node and its task retried (``max_restarts``,
  ``max_task_retries``); a node that is lost takes its actor with it, and the driver hands that actor's tasks to the
  others (and gives new nodes an actor). A killed driver takes its actors with it; ``--skip-existing`` resumes.
* **Network.** ``auto`` starts a private Ray for this run on 127.0.0.1 only (:func:`ray_session`), with token
  authentication, no dashboard and no usage reporting; an ADDRESS joins an existing cluster as it is configured.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

from lipt_export.catalog import (RAY_AUTO, RAY_CONNECT_TIMEOUT_S, RAY_INSTALL_HINT,
                                 RAY_NO_WORKER_TIMEOUT_S, RAY_READY_TIMEOUT_S, RAY_TASKS_PER_WORKER)
from lipt_export.errors import DiskFullError, LiptExportError, UpscaleError
from lipt_export.fileio import dead_owner_temps, disk_full, save_atomic, sha256_file, temp_prefix
from lipt_export.manifest import MANIFEST_NAME as MANIFEST_FILE
from lipt_export.runtime.loader import Artifact, open_artifact
from lipt_export.runtime.resolve import Plan
from lipt_export.runtime.upscale import is_video_output, upscale_file
from lipt_export.runtime.video import FrameCount, VideoPlan, VideoProbe
from lipt_export.runtime.video_plan import ffmpeg_reason, pyav
from lipt_export.runtime.video_segments import (SegmentInput, SegmentJoiner, SegmentResult, segment_frames,
                                                split_segments, upscale_segment)

log = logging.getLogger(__name__)
WORK_STEM = "lipt-ray-"  # a worker's private folder under the node's temp dir: lipt-ray-<pid>-*
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_TOKEN = secrets.token_hex(24)  # one per driver process: Ray's token loader keeps the first one it reads


def ray_problem() -> Optional[str]:
    """Why ``--ray`` cannot run here (Ray not installed), or None; checked before any work."""
    import importlib.util

    if sys.modules.get("ray", True) is None or importlib.util.find_spec("ray") is None:  # None: import blocked
        return f"--ray needs Ray, which is not installed: {RAY_INSTALL_HINT}"
    return None


def check_address(address: str) -> Tuple[str, int]:
    """``auto`` or ``HOST:PORT`` (a cluster's GCS address, as ``ray start --head`` prints it); a cluster that does
    not answer is refused in one line before any work."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or "://" in address:
        raise UpscaleError(f"--ray {address}: give auto (a local Ray for this run) or a cluster's HOST:PORT as "
                           f"`ray start --head` prints it")
    host = host.strip("[]")
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UpscaleError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
                           f"`ray start --head` or use --ray auto") from None
    return host, int(port)


@contextmanager
def ray_session(address: str) -> Iterator[str]:
    """Connected to Ray for the block; yields a description of the cluster. ``auto``: a Ray started for this run
    and stopped after it, bound to 127.0.0.1 (Ray's own processes listen on loopback ports only: GCS, raylet,
    object manager, runtime-env agent, one per worker process), token-authenticated with a random token, no
    dashboard, no metrics export, no usage stats. ``HOST:PORT``: the existing cluster there."""
    env = {}
    if address == RAY_AUTO:
        # must be set before ray is imported: Ray otherwise replaces 127.0.0.1 by this host's routable address
        env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _TOKEN,
               "RAY_USAGE_STATS_ENABLED": "0"}
    elif check_address(address)[0] in LOOPBACK:
        env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # a loopback cluster is reached over loopback
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import ray  # deferred: Ray is an optional extra, needed only with --ray

    try:
        if address == RAY_AUTO:
            ctx = ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                           log_to_driver=False, logging_level=logging.WARNING)
            ip = ctx.address_info.get("node_ip_address")
            if ip not in LOOPBACK:
                ray.shutdown()
                raise UpscaleError(f"the local Ray came up on {ip}, not 127.0.0.1 (ray was imported before this "
                                   f"run set it up); run --ray auto in a fresh process")
        else:
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            except (OSError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
                raise UpscaleError(f"cannot join the Ray cluster at {address}: {' '.join(str(exc).split())[:200]}"
                                   ) from None
        try:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in nodes)
            where = "a local Ray on 127.0.0.1" if address == RAY_AUTO else f"the Ray cluster at {address}"
            yield f"{where} ({len(nodes)} node(s), {cpus:g} CPU(s))"
        finally:
            ray.shutdown()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class ShippedExport:
    """The files a worker needs to open the artifact as the driver did, with their sha256."""

    files: Dict[str, bytes]
    sha256: Dict[str, str]
    open_name: str  # what open_artifact is given inside the worker's folder ("." for an export directory)
    precision: str
    backend: str  # the driver's choice, by format: the worker runs the same file or says why not


def ship_export(art: Artifact, artifact_arg: str) -> ShippedExport:
    """The artifact file and, when it has one, its manifest (the export's other files stay home)."""
    files = {art.path.name: art.path}
    root = art.manifest.root if art.manifest is not None else None
    if root is not None and (Path(root) / MANIFEST_FILE).is_file():
        files[MANIFEST_FILE] = Path(root) / MANIFEST_FILE
        if art.entry is not None:
            files = {art.entry.path: art.path, MANIFEST_FILE: Path(root) / MANIFEST_FILE}
    is_dir = Path(artifact_arg).is_dir() or Path(artifact_arg).name == MANIFEST_FILE
    open_name = "." if is_dir else (art.entry.path if art.entry is not None else art.path.name)
    backend = {"tensorrt": "tensorrt", "onnx": "onnxruntime"}.get(art.format, "auto")
    return ShippedExport({k: p.read_bytes() for k, p in files.items()}, {k: sha256_file(p) for k, p in files.items()},
                         open_name, art.precision, backend)


@dataclass
class RunSpec:
    """What the driver resolved, run verbatim by every worker."""

    runtime: str
    tile: Optional[int]
    overlap: int
    requested: Tuple[Optional[int], Optional[int], Optional[int]]
    threads: Optional[int]
    alpha_mode: str = "bicubic"


class UpscaleWorker:
    """A Ray actor (``ray.remote`` is applied at run time, so this module imports without Ray): the shipped
    export in a private folder, one runner, and the per-file functions of a local run."""

    def __init__(self, shipped: ShippedExport, spec: RunSpec):
        self.problem: Optional[str] = None  # said by ready(): a worker that cannot open the export stops the run
        tmp = Path(tempfile.gettempdir())
        for stale in dead_owner_temps(tmp, WORK_STEM):  # a killed worker's folder on this node
            shutil.rmtree(stale, ignore_errors=True)
        self.work = Path(tempfile.mkdtemp(prefix=temp_prefix(WORK_STEM), dir=str(tmp)))
        self.spec = spec
        export = self.work / "export"
        try:
            for name, data in shipped.files.items():
                path = export / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                if sha256_file(path) != shipped.sha256[name]:
                    raise UpscaleError(f"{name} arrived on node {socket.gethostname()} changed (sha256 differs); rerun")
            art = open_artifact(export / shipped.open_name, precision=shipped.precision, backend=shipped.backend)
            plan = Plan(art, spec.runtime, "", spec.tile, spec.overlap, [], spec.requested)
            self.runner = plan.tiled_runner(threads=spec.threads)
        except LiptExportError as exc:
            self.problem = f"a Ray worker on {socket.gethostname()} cannot run the export: {exc}"

    def ready(self) -> Optional[str]:
        """None when the worker can run, else why not (one line)."""
        return self.problem

    def image(self, name: str, data: bytes, dst_name: str) -> Tuple[Optional[bytes], List[str], Optional[str]]:
        """(output bytes, notes, None) or (None, notes, the one-line problem with this file)."""
        folder = Path(tempfile.mkdtemp(prefix="image-", dir=str(self.work)))
        notes: List[str] = []
        try:
            src, dst = folder / name, folder / "out" / dst_name
            dst.parent.mkdir()
            src.write_bytes(data)
            try:
                upscale_file(self.runner, src, dst, alpha_mode=self.spec.alpha_mode, progress_bar=False,
                             warn=notes.append)
            except LiptExportError as exc:
                return None, notes, str(exc)
            return dst.read_bytes(), notes, None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def segment(self, probe: VideoProbe, plan: VideoPlan, seg: SegmentInput
                ) -> Tuple[Optional[SegmentResult], Optional[str]]:
        try:
            return upscale_segment(self.runner, probe, plan, seg), None
        except LiptExportError as exc:
            return None, str(exc)

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


@dataclass
class _Video:
    src: Path
    dst: Path
    probe: VideoProbe
    plan: VideoPlan
    joiner: Optional[SegmentJoiner] = None
    segments: Optional[int] = None  # known once the split is complete
    failed: bool = False


@dataclass
class RayRunResult:
    images: int = 0
    videos: int = 0
    frames: int = 0
    failures: List[str] = field(default_factory=list)
    workers: int = 0
    restarts: int = 0  # tasks handed to another worker after theirs was lost


def _node_actors(ray, spec: RunSpec, shipped_ref, have: Dict[str, Any], lost: set) -> Dict[str, Any]:
    """An actor for every live node with CPUs that has none (nodes whose actor was lost are not reused)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # deferred: Ray is optional

    remote = ray.remote(UpscaleWorker)
    new = {}
    for node in ray.nodes():
        node_id, res = node["NodeID"], node.get("Resources", {})
        cpus = res.get("CPU", 0)
        if not node.get("Alive") or node_id in have or node_id in lost or cpus < 1:
            continue
        threads = spec.threads if spec.threads is not None else min(int(cpus), 8)
        node_spec = RunSpec(spec.runtime, spec.tile, spec.overlap, spec.requested, threads, spec.alpha_mode)
        new[node_id] = remote.options(
            num_cpus=cpus, num_gpus=1 if res.get("GPU", 0) >= 1 else 0, max_restarts=2, max_task_retries=2,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(shipped_ref, node_spec)
    return new


def _worker_lost_errors():
    """What Ray raises for a task whose worker is gone (its node lost, or its restarts used up)."""
    from ray.exceptions import ActorUnschedulableError, ObjectLostError, RayActorError  # deferred: Ray is optional

    return RayActorError, ObjectLostError, ActorUnschedulableError


def _check_ready(ray, actors: Dict[str, Any], lost: set) -> None:
    """Wait (a while) until the workers have opened the export: the first that cannot says why, in one line; a
    worker whose node is gone is dropped; one still waiting for its node's CPUs takes its tasks when it starts."""
    refs = {actor.ready.remote(): node for node, actor in actors.items()}
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=RAY_READY_TIMEOUT_S)
    for ref in ready:
        try:
            problem = ray.get(ref)
        except _worker_lost_errors():
            lost.add(refs[ref])
            actors.pop(refs[ref], None)
            continue
        if problem:
            raise UpscaleError(problem)


def upscale_on_ray(art: Artifact, artifact_arg: str, plan: Plan, pairs: Sequence[Tuple[Path, Path]],
                   video_plans: Dict[Path, Tuple[VideoProbe, VideoPlan]], *, threads: Optional[int] = None,
                   alpha_mode: str = "bicubic", progress_bar: bool = True, warn: Callable[[str], None] = lambda w: None,
                   done: Callable[[Path, Path], None] = lambda s, d: None,
                   failed: Callable[[Path, Path, str], None] = lambda s, d, e: None,
                   count: Optional[FrameCount] = None) -> RayRunResult:
    """Run ``pairs`` (images, and videos with their probe and plan) on the connected Ray cluster (inside
    :func:`ray_session`). Outputs are written by this process only, each under a temp name renamed when complete;
    a problem with one file goes to ``failed`` and the rest go on."""
    import ray  # deferred: Ray is an optional extra, needed only with --ray
    from tqdm import tqdm

    result = RayRunResult()
    count = count if count is not None else FrameCount()
    spec = RunSpec(plan.runtime, plan.tile, plan.overlap, plan.requested, threads, alpha_mode)
    shipped_ref = ray.put(ship_export(art, artifact_arg))  # once; each node fetches it once
    actors: Dict[str, Any] = _node_actors(ray, spec, shipped_ref, {}, set())
    if not actors:
        raise UpscaleError("the Ray cluster has no node with a CPU to run workers on; add one (ray start --address)")
    lost: set = set()
    _check_ready(ray, actors, lost)
    result.workers = len(actors)
    videos = [_Video(s, d, *video_plans[d]) for s, d in pairs if is_video_output(d)]
    for video in videos:  # what a local run says about each video's streams
        for note in video.plan.notes:
            warn(note)
    frames_total = sum(v.probe.frames_estimate() for v in videos)
    files_bar = tqdm(total=len(pairs), desc="files", unit="file", file=sys.stderr,
                     disable=not progress_bar or len(pairs) <= 1)
    frames_bar = tqdm(total=frames_total or None, desc="frames", unit="frame", file=sys.stderr,
                      disable=not progress_bar or not videos)

    def items() -> Iterator[Tuple[str, Any, Any]]:
        for src, dst in pairs:
            if not is_video_output(dst):
                yield "image", src, dst
        for video in videos:
            n = 0
            try:
                for seg in split_segments(video.probe, segment_frames(video.probe, max(1, len(actors)))):
                    if video.failed:
                        break
                    n += 1
                    yield "segment", video, seg
            except LiptExportError as exc:
                fail_video(video, str(exc))
                continue
            if n == 0:
                fail_video(video, f"{video.src.name} holds no video packets; nothing written")
                continue
            video.segments = n
            maybe_finish(video)

    def fail_video(video: _Video, message: str) -> None:
        if video.failed:
            return
        video.failed = True
        if video.joiner is not None:
            video.joiner.abort()
        result.failures.append(message)
        failed(video.src, video.dst, message)
        files_bar.update(1)

    def write_output(dst: Path, write: Callable[[], Any]) -> Any:
        """Writing an output here: a full disk stops the run (saying what was finished), an encoder/muxer error
        fails that file; both in one line, nothing half-written."""
        av = pyav()
        try:
            return write()
        except OSError as exc:
            if not disk_full(exc):
                raise
            raise DiskFullError(f"disk full writing {dst} ({exc.strerror}): {result.images} image(s) and "
                                f"{result.videos} video(s) were finished, nothing is half-written under {dst.name}; "
                                f"free space and rerun with --skip-existing") from None
        except av.error.FFmpegError as exc:
            raise UpscaleError(f"writing {dst.name} failed ({ffmpeg_reason(exc)}); nothing is written under "
                               f"{dst.name}") from None

    def maybe_finish(video: _Video) -> None:
        if video.failed or video.segments is None or video.joiner is None or video.joiner.next != video.segments:
            return
        try:
            write_output(video.dst, lambda: video.joiner.finish(video.segments))
        except DiskFullError:
            raise
        except LiptExportError as exc:
            fail_video(video, str(exc))
            return
        result.videos += 1
        done(video.src, video.dst)
        files_bar.update(1)

    def submit(actor, item) -> Any:
        kind, a, b = item
        if kind == "image":
            return actor.image.remote(a.name, a.read_bytes(), b.name)
        return actor.segment.remote(a.probe, a.plan, b)

    def handle(item, value) -> None:
        kind, a, b = item
        if kind == "image":
            data, notes, problem = value
            for note in notes:
                warn(note)
            if problem is not None:
                result.failures.append(problem)
                failed(a, b, problem)
            else:
                write_output(b, lambda: save_atomic(b, lambda tmp: Path(tmp).write_bytes(data)))
                result.images += 1
                done(a, b)
            files_bar.update(1)
            return
        seg_result, problem = value
        if a.failed:
            return
        if problem is not None:
            fail_video(a, problem)
            return
        if a.joiner is None:
            a.joiner = SegmentJoiner(a.probe, a.plan, count)
        try:
            joined = write_output(a.dst, lambda: a.joiner.add(seg_result))
        except DiskFullError:
            raise
        except LiptExportError as exc:
            fail_video(a, str(exc))
            return
        result.frames += joined
        frames_bar.update(joined)
        maybe_finish(a)

    source = items()
    retry: Deque[Tuple[str, Any, Any]] = deque()
    inflight: Dict[Any, Tuple[str, Any]] = {}  # ref -> (node id, item)
    load = {node: 0 for node in actors}
    exhausted = False
    waited_since: Optional[float] = None
    try:
        while True:
            for node in list(actors):  # fill every worker up to its share
                while load[node] < RAY_TASKS_PER_WORKER:
                    item = retry.popleft() if retry else None
                    if item is None and not exhausted:
                        item = next(source, None)
                        exhausted = item is None
                    if item is None:
                        break
                    if item[0] == "segment" and item[1].failed:
                        continue
                    inflight[submit(actors[node], item)] = (node, item)
                    load[node] += 1
            if not inflight:
                if exhausted and not retry:
                    break
                # every worker is gone: wait for a node to (re)join, then go on
                waited_since = waited_since or time.monotonic()
                if time.monotonic() - waited_since > RAY_NO_WORKER_TIMEOUT_S:
                    raise UpscaleError(f"every Ray worker was lost and no node came back within "
                                       f"{RAY_NO_WORKER_TIMEOUT_S:.0f} s; rerun with --skip-existing")
                time.sleep(1.0)
                fresh = _node_actors(ray, spec, shipped_ref, actors, lost)
                _check_ready(ray, fresh, lost)
                actors.update(fresh)
                load.update({n: 0 for n in fresh})
                continue
            waited_since = None
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
            node, item = inflight.pop(ref)
            load[node] = load.get(node, 1) - 1
            try:
                value = ray.get(ref)
            except _worker_lost_errors():
                # its node (or the worker, beyond Ray's restarts) is gone: the task goes to another worker
                retry.append(item)
                result.restarts += 1
                if node in actors:
                    lost.add(node)
                    del actors[node]
                    load.pop(node, None)
                    fresh = _node_actors(ray, spec, shipped_ref, actors, lost)
                    _check_ready(ray, fresh, lost)
                    actors.update(fresh)
                    load.update({n: 0 for n in fresh})
                continue
            handle(item, value)
    except BaseException:
        for video in videos:
            if video.joiner is not None and not video.failed:
                video.joiner.abort()
        raise
    finally:
        files_bar.close()
        frames_bar.close()
        for actor in actors.values():
            try:
                actor.close.remote()
            except Exception:  # noqa: BLE001 - a lost worker has nothing left to clean
                pass
        if actors:
            try:
                ray.wait([a.ready.remote() for a in actors.values()], num_returns=len(actors), timeout=5)
            except Exception:  # noqa: BLE001
                pass
    result.workers = max(result.workers, len(actors))
    return result
