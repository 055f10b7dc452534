"""The one table of names and defaults, as plain data (the idea of Ultralytics' export-format table):

* the model families: variants, scales, default variant, and the facts that decide serving defaults before any
  model is built (minimum input, tile policy, engine profile, how large the graph's tensors grow); each model
  module registers its ModelSpec from its row, so the registry cannot disagree with this table;
* precisions, export backends (what builds engines) and serving backends and CPU runtimes (what runs a file);
* the file names of artifacts per format and precision, image and video suffixes;
* the defaults the command line shows (opset, calibration, PSNR budgets, engine options, parity sizes).

The command line checks its options against this table (and prints its help) without importing torch."""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional, Tuple

from lipt_export.errors import ModelError, UsageError
from lipt_export.tiling import DEFAULT_TILE, RECOMMENDED_TILE


def _esrt_scores(batch: int, h: int, w: int) -> int:
    """ESRT's EMHA score tensor: 8 heads x 4 segments x (N/4)^2 for N = H*W tokens (segments of N // 4)."""
    seg = (h * w) // 4
    return batch * 8 * 4 * seg * seg


class Family(NamedTuple):
    variants: Tuple[str, ...]
    scales: Tuple[int, ...]
    default_variant: str
    # smallest LR side the graph takes (reflect padding to the window needs pad < size)
    min_size: int = 1
    # LR tile for tiled serving; tile_required: whole-image inference is impractical (quadratic attention)
    recommended_tile: int = RECOMMENDED_TILE
    tile_required: bool = False
    # LR tile `upscale`, `eval`, `serve` and the C++ upscaler use when none is asked for (images up to it run
    # whole): measured per family as the least memory at no cost in speed (docs/benchmarks.md, "Default tile per
    # family"); written into each export's manifest (io.tiling.default_tile)
    default_tile: int = DEFAULT_TILE
    # engines default to one static profile at the tile (TensorRT-RTX builds the dynamic graph far slower)
    static_engine_profile: bool = False
    # the largest tensor that grows faster than the image (elements for batch, H, W), or None
    quadratic_tensor: Optional[Callable[[int, int, int], int]] = None

    @property
    def names(self) -> Tuple[Tuple[str, ...], Tuple[int, ...], str]:
        return self.variants, self.scales, self.default_variant

    def tensor_elements(self, scale: int, batch: int, h: int, w: int) -> int:
        """A lower bound of the largest tensor (elements) the graph holds for a (batch, 3, h, w) input, known
        before any model is built: the output itself, or the family's quadratic tensor when larger. The exported
        graph can only be larger (padding, wider features); engines/shapes.py measures it exactly."""
        n = 3 * scale * scale * batch * h * w
        return max(n, self.quadratic_tensor(batch, h, w)) if self.quadratic_tensor else n


FAMILIES: Dict[str, Family] = {
    # default tiles: docs/benchmarks.md "Default tile per family" (1920x1080 x2: least memory at no cost in speed)
    "agileir": Family(("v2", "medium", "normal", "light"), (2, 3, 4), "normal", min_size=9, default_tile=512,
                      static_engine_profile=True),  # TensorRT-RTX, normal x4, cc 8.9: LR 32..128 341 s, static 40 s
    "esrt": Family(("base",), (2, 3, 4), "base", min_size=2, recommended_tile=64, tile_required=True, default_tile=64,
                   quadratic_tensor=_esrt_scores),
    # min 9: pad <= window - 1 and, below one window, pad = window - size < size iff size > window / 2
    "lipt": Family(("tiny", "small", "base"), (1, 2, 3, 4), "small", min_size=9, default_tile=512),
    "smsr": Family(("base",), (2, 3, 4), "base", min_size=1, default_tile=256),
}


# -- artifacts, backends, runtimes ----------------------------------------------------------------------------

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
# the ONNX opset a reduced-precision file is written in (others: the export's --opset): bfloat16 Conv exists from
# opset 22, FLOAT8E4M3FN Q/DQ from opset 19
PRECISION_OPSETS = {"bf16": 22, "fp8": 19}
# CPU runtimes that cannot execute a precision's files, and why (measured: ORT 1.31 CPU refuses Conv(22) bf16)
RUNTIME_CANNOT_RUN = {("onnxruntime", "bf16"): "ONNX Runtime's CPU provider has no bfloat16 Conv (opset 22)"}
FORMATS = ("onnx", "tensorrt")
# what builds engines at export (auto: datacenter TensorRT with a GPU, else TensorRT-RTX, else ONNX only)
EXPORT_BACKENDS = ("auto", "onnxruntime", "tensorrt", "tensorrt-rtx")
# what a consumer runs: auto (an engine this machine can run, else the ONNX file), the ONNX file, an engine
SERVING_BACKENDS = ("auto", "onnxruntime", "tensorrt")
# CPU executions of an ONNX file (OpenVINO always at an explicit inference precision)
CPU_RUNTIMES = ("onnxruntime", "openvino-f32", "openvino-bf16")
# images Pillow reads here (a GIF's first frame) and writes; `upscale` also writes raw float .npy
IMAGE_WRITE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES = IMAGE_WRITE_SUFFIXES + (".gif",)
UPSCALE_OUTPUT_SUFFIXES = IMAGE_WRITE_SUFFIXES + (".npy",)

# -- video (upscale; PyAV with its bundled FFmpeg) ------------------------------------------------------------

# the containers `upscale` writes (suffix -> FFmpeg muxer); it reads whatever FFmpeg demuxes
VIDEO_CONTAINERS: Dict[str, str] = {".mkv": "matroska", ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov",
                                    ".webm": "webm", ".avi": "avi"}
# files a folder run treats as videos (a single INPUT is probed whatever its name when OUTPUT is a video)
VIDEO_SUFFIXES = tuple(VIDEO_CONTAINERS) + (".ts", ".m2ts", ".mts", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
                                            ".ogv", ".y4m", ".nut")
DEFAULT_VIDEO_CODEC = "libx264"
CONTAINER_VIDEO_CODEC = {".webm": "libvpx-vp9"}  # containers whose default differs (WebM takes VP8/VP9/AV1 only)
# --lossless: FFV1 (intra-only, RGB kept as RGB), standardised for Matroska (RFC 9043); AVI also carries it.
# FFmpeg would put it in MP4 too, but no MP4 player plays that: refused there, naming these.
LOSSLESS_VIDEO_CODEC = "ffv1"
LOSSLESS_CONTAINERS = (".mkv", ".avi")
# codecs that take --crf: (default crf, crf range, preset default or None)
VIDEO_CRF: Dict[str, Tuple[int, Tuple[int, int], Optional[str]]] = {
    "libx264": (18, (0, 51), "medium"), "libx265": (20, (0, 51), "medium"),
    "libvpx-vp9": (24, (0, 63), None), "libsvtav1": (28, (1, 63), "8")}
# output pixel format when --pix-fmt is not given: (8-bit source, higher-bit source); "*" for other codecs
VIDEO_PIX_FMTS: Dict[str, Tuple[str, str]] = {
    "*": ("yuv420p", "yuv420p10le"), "ffv1": ("bgr0", "gbrp16le"), "prores_ks": ("yuv422p10le", "yuv422p10le"),
    "png": ("rgb24", "rgb48be")}


def artifact_name(fmt: str, precision: str) -> str:
    """``model.onnx`` (fp32), ``model.<precision>.onnx``, ``model.<precision>.engine``."""
    if fmt == "onnx":
        return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"
    return f"model.{precision}.engine"


# -- defaults the command line shows (the library's dataclasses use these same constants) --------------------

DEFAULT_SCALE = 4
DEFAULT_PARITY_SIZES = ((64, 64), (37, 51))  # the second is not a multiple of any window
CALIB_COUNT, CALIB_SIZE, CALIB_METHOD = 32, 64, "minmax"
CALIB_METHODS = ("minmax", "entropy", "percentile")
MAX_PSNR_DROP_DB = 0.10  # INT8/FP8: PSNR-Y drop vs FP32 on held-out images before nodes fall back to float
# ops kept FP32 in a BF16 file because the engine builder refuses them in BF16 (measured, TensorRT-RTX 1.7.1.116:
# SMSR's ConvTranspose in BF16 fails the build: Myelin "Could not infer output types for operation ... deconv ...
# filterWeightsBFloat"; FP16 and FP32 deconvolutions build)
BF16_FP32_OPS = {"ConvTranspose": "TensorRT-RTX 1.7 builds no BF16 deconvolution (Myelin: could not infer output "
                                  "types for the deconv with bfloat16 weights)"}
BF16_MAX_PSNR_DROP_DB = 0.01  # BF16: the same, before nodes become FP32 islands (BF16 is the accurate fallback)
FLOAT_RUNTIME_BUDGET_DB = 0.01  # |delta PSNR-Y| allowed when a CPU runtime changes an fp32/fp16 file's arithmetic
COMPUTE_CAPABILITIES = ("8.6", "8.9", "12.0")  # TensorRT-RTX targets: RTX 30xx, 40xx/L4/L40, 50xx
# The least compute capability that runs a precision (TensorRT-RTX support matrix: BF16 "Yes" from 8.0/8.6, "No" on
# 7.5; FP8 only "on Ada and later architectures (compute capability 8.9 or later)"). Measured with TensorRT-RTX
# 1.7.1: BF16 builds for 8.0/8.6/8.9/12.0 and not 7.5; FP8 Q/DQ builds for 8.9 and fails for 8.6 ("Cannot compile
# for target(s) sm86, because the model contains HW-specific datatypes: fp8_e4m3").
# INT8 (weight-only on RTX) is "No" on 7.5 in the same matrix.
PRECISION_MIN_CC = {"bf16": (8, 0), "int8": (8, 0), "fp8": (8, 9)}
# --precision auto: cheapest first, as the GPU executes it; a target takes the first within --max-psnr-drop
AUTO_ORDER = ("fp8", "int8", "fp16", "bf16", "fp32")
AUTO_PRECISIONS = ("fp16", "bf16", "int8", "fp8")  # the candidates --precision auto exports and measures
# TensorRT-RTX's support matrix has no activation-INT8 column: its INT8 entry is "INT8 WoQ GEMM" (weight-only
# quantization); the 1.7 release notes: "FP8 and INT8 weight-only-quantized convolutions benefit from smaller engines
# and lower peak GPU memory usage".
RTX_INT8_NOTE = ("TensorRT-RTX runs INT8 as weight-only quantization on RTX GPUs (support matrix: \"INT8 WoQ GEMM\"): "
                 "a smaller engine and less memory, not INT8 tensor-core math")


def precision_skip_reason(capability: str, precision: str) -> Optional[str]:
    """Why a GPU of compute capability ``capability`` ("8.6") cannot run a ``precision`` engine, or None."""
    need = PRECISION_MIN_CC.get(precision)
    try:
        have = tuple(int(v) for v in capability.split("."))
    except ValueError:
        return None
    if need is None or have >= need:
        return None
    return (f"{precision.upper()} needs compute capability {need[0]}.{need[1]} or later (TensorRT-RTX support matrix); "
            f"{capability} has no {precision.upper()} kernels")


def runtime_cannot_run(runtime: str, precision: str) -> Optional[str]:
    """Why the CPU runtime ``runtime`` cannot execute a ``precision`` file, or None."""
    return RUNTIME_CANNOT_RUN.get((runtime, precision))
ENGINE_BATCH, ENGINE_WORKSPACE_GIB, ENGINE_OPT_LEVEL = "1:1:1", 4.0, 3

# ONNX opsets each exporter can write for these graphs (TorchScript: torch's ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET;
# 13 is the first with per-channel Q/DQ; the torch.export-based exporter starts at 18), and the default.
OPSETS: Dict[str, Tuple[int, int]] = {"torchscript": (13, 20), "dynamo": (18, 23)}
DEFAULT_OPSET = 17


def check_opset(opset: int, dynamo: bool = False) -> None:
    exporter = "dynamo" if dynamo else "torchscript"
    low, high = OPSETS[exporter]
    if not low <= opset <= high:
        other = OPSETS["dynamo"]
        hint = f" or --dynamo for up to {other[1]}" if not dynamo and high < opset <= other[1] else ""
        raise UsageError(f"--opset {opset} is outside what the {exporter} exporter writes here ({low}..{high}); use "
                         f"the default {DEFAULT_OPSET}{hint}")


def family(model: str) -> Family:
    found = FAMILIES.get(model.lower())
    if found is None:
        raise ModelError(f"unknown model '{model}'; choose one of: {', '.join(sorted(FAMILIES))}")
    return found


def check_choice(model: str, variant: Optional[str], scale: int) -> None:
    """The registry's errors, word for word, before anything heavy is imported."""
    fam = family(model)
    if variant is not None and variant not in fam.variants:
        raise ModelError(f"model '{model.lower()}' has no variant '{variant}'; choose one of: "
                         f"{', '.join(fam.variants)}")
    if scale not in fam.scales:
        raise ModelError(f"model '{model.lower()}' does not support scale {scale}; supported scales: "
                         f"{', '.join(map(str, fam.scales))}")

# `upscale --ray`: Ray is an optional extra (the default install stays without it)
RAY_INSTALL_HINT = 'pip install "lipt-export[ray]"'
RAY_AUTO = "auto"  # --ray with no address: a private local Ray on 127.0.0.1 for this run
RAY_TASKS_PER_WORKER = 2  # in flight per worker actor: the next input travels while the current one runs
RAY_SEGMENTS_PER_WORKER = 4  # a video is cut (at keyframes) into about this many segments per worker
RAY_MIN_SEGMENT_FRAMES = 8  # no shorter segments than this (nor than one GOP): each costs an encoder start
RAY_CONNECT_TIMEOUT_S = 5.0  # a cluster ADDRESS that does not answer within this is refused in one line
RAY_READY_TIMEOUT_S = 60.0  # how long the start waits for workers to open the export (slower ones join later)
RAY_NO_WORKER_TIMEOUT_S = 300.0  # every worker gone: how long to wait for a node to come back before giving up

# `triton --kserve`: a KServe InferenceService for the repository (the kserve-tritonserver runtime)
KSERVE_RUNTIME = "kserve-tritonserver"
KSERVE_API_VERSION = "serving.kserve.io/v1beta1"
# modelFormat (name, version) as the runtime's supportedModelFormats list them: a repository of one kind of model,
# else the Triton repository format (e.g. --tiled: a Python-backend BLS model beside the model it calls)
KSERVE_MODEL_FORMATS = {"onnx": ("onnx", "1"), "tensorrt": ("tensorrt", "8")}
KSERVE_REPOSITORY_FORMAT = ("triton", "2")
KSERVE_CPU_RESOURCES = {"cpu": "2", "memory": "4Gi"}  # requests for an ONNX model on CPU (limits: twice)
KSERVE_GPU_RESOURCES = {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"}
KSERVE_MANIFEST_SUFFIX = ".inferenceservice.yaml"  # written beside the repository: NAME.inferenceservice.yaml
