"""GPU speed: replay the denoising networks as CUDA graphs instead of launching their kernels one by one.

Why: on a fast GPU the stock diffusers loop is launch-bound. A UNet step issues well over a thousand
small kernels and the host issues them slower than the GPU runs them, so most of a step is the GPU
waiting. A CUDA graph records a module's kernels once and replays them with one launch.

How: while a generation runs, ``forward`` of the UNet, each ControlNet, the text encoders and the VAE's
encoder and decoder is replaced on the instance by a wrapper. The wrapper flattens the call's arguments;
tensors become the graph's inputs, everything else (floats, flags, None, the tree structure) becomes part
of the graph's key together with every tensor's shape, stride and dtype. A new key is warmed up on a
side stream, captured, and replayed from then on: the arguments are copied into static buffers, the
graph is replayed, and the outputs are cloned, because the next replay overwrites the graph's own output
buffers while diffusers (or the scheduler's history) may still hold the previous result. All graphs of an
engine share one memory pool, since they never run concurrently.

Anything a graph cannot capture (a tensor off the GPU, a random generator or other object argument, a
capture error) runs the plain module instead, so the fast path never changes what is computed, only how it
is launched. The VAE is graphed below the level where diffusers passes the request's random generator
(its encoder and decoder networks), and stays eager where VAE tiling varies the shapes (or where an SDXL
pipeline would still recast it to fp32 around every call, which sd_core/vae_precision.py prevents).

One-time changes to the networks make the replayed kernels themselves faster: fused QKV projections (one
matrix product instead of three), channels-last convolutions (cuDNN's fast fp16 kernels want NHWC), and,
so that activations stay channels-last between convolutions: GroupNorm in Triton that reads and writes
channels-last (PyTorch's converts to NCHW and back around each of the ~100 GroupNorms of a step:
sd_core/group_norm.py), transformer blocks that return their channels-last view instead of an NCHW copy
(sd_core/channels_last.py), a one-pass GEGLU in Triton (sd_core/geglu.py), ResNet blocks whose SiLUs,
conv1 bias and time embedding ride inside those GroupNorms (sd_core/resnet_block.py), transformer blocks
whose residual adds ride inside their LayerNorms (sd_core/transformer_block.py), 1x1 convolutions
run as matmuls with the bias in the epilogue (sd_core/channels_last.py), other convolutions' biases added
in one vectorised pass (sd_core/channel_bias.py), and nearest-neighbour upsampling in one pass
(sd_core/upsample.py). Marginal cost of a step, SD1.5 + ControlNet img2img at 512² on an H100: 17.3 ms
with graphs alone, 13.5 ms with fused QKV and channels-last, 8.7 ms with everything (fifth session). And a
ControlNet embeds its conditioning image once per generation, not every step (sd_core/controlnet_condition.py),
in a graph of its own, and where it serves one control hands its residuals to the UNet's graph in place
(``_installed``), and runs inside the UNet's graph, on a branch beside the UNet's down and mid blocks
(``_capture``): SD1.5 + ControlNet 147.8 -> 133.8 ms a request (seventh session). Autotuned cuDNN
convolutions with cuDNN attention first were measured too and gained nothing. benchmarks/README.md has the
numbers.

Mode "compile" adds kernel fusion: with graphs the step is GPU-bound, so the remaining time is in the
kernels themselves (many small element-wise kernels around the convolutions and matrix products).
The UNet and ControlNets are compiled with torch.compile (inductor, default mode, so without inductor's
own CUDA graphs), and the graph wrapper above records and replays the compiled kernels. Compiling costs
minutes on first use, so inductor's on-disk caches (FX graph cache and AOTAutograd cache, both on by
default) are pointed at a stable folder, not the temporary one inductor picks, so a later process (a
Blender restart) loads the compiled kernels instead of compiling again. Where the folder is:
``compile_cache_dir``. Measured (benchmarks/README.md): SD1.5 + ControlNet 512² marginal step 9.5 ms on an
H100 (auto: 9.6-10.4 ms), but 82 s to the first image on an empty cache and still 26 s with a warm one
(dynamo traces every process); SDXL + ControlNet 1024² 64.1 -> 47.2 ms on an H200 (before the Triton
GroupNorm), 128 s cold, 41 s warm. Hence opt-in, not "auto".
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from diffusers import UNet2DConditionModel
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from sd_core.channel_bias import use_fused_convolution_biases
from sd_core.channels_last import (
    convert_weights_to_channels_last,
    keep_transformer_outputs_channels_last,
    use_matmuls_for_pointwise_convolutions,
)
from sd_core.controlnet_condition import ConditionEmbeddings, embeds_once, forward_with_embedded_condition
from sd_core.errors import ValidationError
from sd_core.geglu import use_fused_geglu
from sd_core.group_norm import use_triton_group_norm
from sd_core.resnet_block import use_fused_resnet_blocks
from sd_core.transformer_block import use_fused_transformer_blocks
from sd_core.upsample import use_triton_upsampling
from sd_core.vae_attention import use_tf32_attention_in_float32_vae
from sd_core.vae_precision import recasts_vae

log = logging.getLogger(__name__)

AccelerationMode = Literal["auto", "off", "cuda_graphs", "compile"]
ACCELERATION_MODES: tuple[AccelerationMode, ...] = ("auto", "off", "cuda_graphs", "compile")
# Where inductor keeps compiled kernels for "compile" when neither the settings nor TORCHINDUCTOR_CACHE_DIR
# name a folder: beside the Hugging Face model cache (a folder users already expect to be large and lasting).
_COMPILE_CACHE_SUBDIR = Path("sd_core", "torch_compile")

# Eager calls on a side stream before a capture: they initialise cuBLAS/cuDNN handles and workspaces and
# let the caching allocator settle, none of which may happen while a graph is being captured.
_WARMUP_CALLS = 2
# GPU memory set aside for the graphs per output pixel and byte of the VAE's dtype: the VAE decoder's activations,
# the largest need of any graph of a request, beside the other graphs' lasting outputs that share the block. The
# smallest multiple of 64 at which SD1.5's fp16 decode at 512² and SDXL's fp32 one at 1024² fit in it, with or
# without a ControlNet (H100, seventh session): at 768 to 896 each decode took a segment of its own besides (128 MiB,
# 1 GiB), so SD1.5 + ControlNet peaked at 3.62 GiB reserved and SDXL + ControlNet at 14.19; at 960, 3.59 and 13.94.
_VAE_DECODE_BYTES_PER_PIXEL_AND_DTYPE_BYTE = 960
# A new image size or batch adds graphs; past this many, all graphs and their pool are dropped and capture
# starts over, so switching sizes all afternoon cannot grow GPU memory without bound.
_MAX_GRAPHS = 20
_PLAIN_VALUES = (bool, int, float, str, torch.dtype, torch.device)


class Accelerator(Protocol):
    """What the engine needs from a speed path: speed up a pipeline for one generation, and forget everything."""

    def active(self, pipe: Any, variant: Hashable, image_pixels: int = 0) -> Any:
        """A context manager within which ``pipe``'s networks run on the fast path (``image_pixels``: the
        request's padded image size, for memory planning)."""
        ...

    def reset(self) -> None:
        """Drop every prepared graph and its memory (models are being unloaded)."""
        ...


class PlainPath:
    """Stock diffusers execution: CPU, MPS, CPU offload, or acceleration turned off."""

    @contextmanager
    def active(self, pipe: Any, variant: Hashable, image_pixels: int = 0) -> Iterator[None]:
        yield

    def reset(self) -> None:
        pass


def uses_cuda_graphs(mode: str, device: torch.device, cpu_offload: bool) -> bool:
    """Whether the graph path applies: every mode but "off" means "on CUDA, if the weights stay there".

    CPU offload moves weights between host and GPU on every call, so captured addresses would go stale;
    CPU and MPS have no CUDA graphs. In those cases the plain path runs, with identical results.
    """
    if mode not in ACCELERATION_MODES:
        raise ValidationError(f"Unknown acceleration '{mode}': use {', '.join(ACCELERATION_MODES)}.")
    return mode != "off" and device.type == "cuda" and not cpu_offload and torch.cuda.is_available()


def make_accelerator(mode: str, device: torch.device, cpu_offload: bool, compile_cache_dir: str = "") -> Accelerator:
    """The speed path an engine with these settings uses. "compile" off CUDA is the plain path, like the others."""
    if not uses_cuda_graphs(mode, device, cpu_offload):
        return PlainPath()
    if mode == "compile":
        use_compile_cache(compile_cache_dir)
        return CompiledGraphAccelerator()
    return CudaGraphAccelerator()


def compile_cache_dir(configured: str = "") -> Path:
    """The folder inductor's persistent caches use: the setting, else TORCHINDUCTOR_CACHE_DIR, else under HF_HOME.

    Inductor's own default is under the temporary folder, which many systems empty at reboot: the minutes of
    compiling would then be paid again.
    """
    if configured:
        return Path(configured).expanduser()
    if from_environment := os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(from_environment)
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / _COMPILE_CACHE_SUBDIR


def use_compile_cache(configured: str = "") -> Path:
    """Point inductor (and the Triton kernels it builds, which live under it) at ``compile_cache_dir``.

    Inductor reads the variable whenever it opens its cache, so this must run before the first compile;
    it is process-wide, which is what a cache shared by every engine of the process should be.
    """
    folder = compile_cache_dir(configured)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


@dataclass
class _CapturedGraph:
    """One recorded call: static input buffers, the graph, and its output buffers with their structure."""

    graph: torch.cuda.CUDAGraph
    static_inputs: list[torch.Tensor]
    static_outputs: list[Any]
    output_spec: TreeSpec
    weights_at: int  # data pointer of the module's first parameter when captured
    rerun: Callable[[], Any]  # the recorded call run eagerly on the static inputs: how another capture records it
    # A UNet graph's ControlNet graph, whose work this graph does alongside the UNet's (``_capture``)
    alongside: _CapturedGraph | None = None

    def load(self, tensors: list[torch.Tensor]) -> None:
        """Copy ``tensors`` into the static inputs. An input that is its static buffer already (another graph's
        output handed over: ``CudaGraphAccelerator._output_buffers``) is not copied."""
        moved = [
            (static, tensor) for static, tensor in zip(self.static_inputs, tensors, strict=True) if static is not tensor
        ]
        if moved:
            torch._foreach_copy_([static for static, _ in moved], [tensor for _, tensor in moved])

    def outputs(self, cloned: bool = True) -> Any:
        """The outputs of the last replay: cloned, or (``cloned=False``) the graph's own buffers, which the next
        replay overwrites."""
        if not cloned:
            return tree_unflatten(self.static_outputs, self.output_spec)
        outputs = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in self.static_outputs]
        return tree_unflatten(outputs, self.output_spec)

    def replay(self, tensors: list[torch.Tensor], clone_outputs: bool = True) -> Any:
        """Run the graph on ``tensors``; its outputs cloned or its own buffers (``outputs``)."""
        self.load(tensors)
        self.graph.replay()
        return self.outputs(clone_outputs)


class CudaGraphAccelerator:
    """Captures and replays CUDA graphs of the denoising networks, keyed by everything that shapes a call."""

    def __init__(
        self,
        fuse_qkv: bool = True,
        channels_last: bool = True,
        triton_kernels: bool = True,
        controlnet_alongside: bool = True,
    ) -> None:
        self.fuse_qkv = fuse_qkv
        self.channels_last = channels_last
        self.triton_kernels = triton_kernels
        self.controlnet_alongside = controlnet_alongside
        self._graphs: dict[tuple[Hashable, ...], _CapturedGraph | None] = {}
        self._pool: Any = None
        self._reservations: list[torch.cuda.CUDAGraph] = []  # graphs that hold the pool's reserved blocks
        self._reserved_bytes = 0
        # One stream for every warm-up and capture: PyTorch keeps a cuBLAS workspace (32 MiB on Hopper) per
        # stream a matrix product ran on, so a fresh stream per capture kept one more each time.
        self._stream: torch.cuda.Stream | None = None
        self._branch: torch.cuda.Stream | None = None  # where a ControlNet's work forks off in a capture
        self._set_up_streams: set[tuple[int, torch.cuda.Stream]] = set()  # (thread, stream) with a cuBLAS workspace
        self._prepared: set[int] = set()
        # Every live graph's output buffers, by id (recorded at capture; held so that no other tensor takes their
        # ids): an input that is one of them was handed over uncloned, and a capture reads it where it lies.
        self._output_buffers: dict[int, torch.Tensor] = {}
        # A ControlNet graph whose inputs are loaded and whose outputs were handed out, not yet replayed: the UNet
        # call that takes them runs it alongside its own work (``_call``), anything else runs it first.
        self._deferred: _CapturedGraph | None = None

    @contextmanager
    def active(self, pipe: Any, variant: Hashable, image_pixels: int = 0) -> Iterator[None]:
        """Within the block, the pipeline's UNet, ControlNets, text encoders and VAE networks replay graphs.

        ``variant`` names module state the arguments do not show (the seamless-tiling padding, for one),
        so graphs recorded under one variant are never replayed under another. ``image_pixels`` sizes the
        memory reserved for the graphs (``_reserve``).
        """
        modules = graphable_modules(pipe)
        prepared_now = [self._prepare(module) for module in modules]  # every one: no short circuit
        if any(prepared_now) and torch.cuda.is_available():
            torch.cuda.empty_cache()  # what the layout changes freed, before the graphs' memory is set aside
        if image_pixels and _vae_stays_put(pipe):
            self._reserve(pipe.vae, image_pixels)
        controlnets = controlnet_members(pipe)
        with ExitStack() as stack:
            stack.callback(self._forget_deferred)
            for module in modules:
                # Only a pipeline's one ControlNet: a multi-ControlNet keeps its first member's outputs while the
                # others replay, and a graph captured earlier may replay over memory a later one returns.
                hands_over = controlnets == [module]
                stack.enter_context(self._installed(module, variant, hands_over))
                if self._embeds_conditions_once(module):  # once a generation, yet a dozen launches: a graph too
                    stack.enter_context(self._installed(module.controlnet_cond_embedding, variant))
            yield

    def reset(self) -> None:
        self._drop_graphs()
        self._prepared.clear()

    def _forget_deferred(self) -> None:
        """A generation ended (or failed) between a ControlNet call and the UNet's: nobody reads those outputs."""
        self._deferred = None

    def _drop_graphs(self) -> None:
        self._graphs.clear()
        self._output_buffers.clear()
        self._reservations.clear()
        self._pool = None
        self._reserved_bytes = 0
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def graph_count(self) -> int:
        """Graphs captured so far (failed captures not counted): what a benchmark reports as prepared work."""
        return sum(graph is not None for graph in self._graphs.values())

    def _reserve(self, vae: torch.nn.Module, image_pixels: int) -> None:
        """Put one free block as large as this size's VAE decode needs into the graphs' pool, before capturing.

        Graphs share one pool and replay one at a time, so each capture may reuse what earlier ones freed, but
        only inside one allocation (a segment): the pool grew a segment per capture, sized to its tensors, and
        the VAE decoder's (1 GiB each at SDXL's 1024² in fp32) fit in none of the encoder's, so both were held
        for good. Carved from one reserved block, every graph reuses the same space: the pool holds the
        largest need, not the sum (on an H100 SDXL + ControlNet's pool was 5.5 GiB; with this and the shared
        projections its steady peak fell from 17.4 to 14.6 GiB, below stock's 16.1).
        """
        weight = next(vae.parameters())
        wanted = _VAE_DECODE_BYTES_PER_PIXEL_AND_DTYPE_BYTE * weight.element_size() * image_pixels
        if weight.device.type != "cuda" or wanted <= self._reserved_bytes:
            return
        # Reserved by capturing a graph that allocates the block and frees it: the pool keeps it, free, for the
        # captures that follow, for as long as that graph lives. A larger size than any before gets a block of
        # its own (blocks of different allocations never merge).
        reservation = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(reservation, pool=self._pool, stream=self._capture_stream()):
                block = torch.empty(wanted, dtype=torch.uint8, device=weight.device)
                block[:1].zero_()  # a graph needs a node
                del block
        except RuntimeError as error:  # out of memory, mostly: captures may still fit, each in segments of its own
            log.warning("Could not reserve %.1f GiB for the CUDA graphs, capturing without: %s", wanted / 2**30, error)
            torch.cuda.synchronize()
            return
        self._pool = reservation.pool()
        self._reservations.append(reservation)
        self._reserved_bytes = wanted

    def _capture_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._set_up(self._stream)

    def _branch_stream(self) -> torch.cuda.Stream:
        if self._branch is None:
            self._branch = torch.cuda.Stream()
        return self._set_up(self._branch)

    def _set_up(self, stream: torch.cuda.Stream) -> torch.cuda.Stream:
        # cuBLAS handles are per thread, and so are their workspaces on a stream: set up in each capturing one
        if (threading.get_ident(), stream) not in self._set_up_streams:
            _set_up_matrix_products(stream)
            self._set_up_streams.add((threading.get_ident(), stream))
        return stream

    def _prepare(self, module: torch.nn.Module) -> bool:
        """One-time layout changes that make the captured kernels themselves faster; whether it made them now."""
        if id(module) in self._prepared:
            return False
        use_tf32_attention_in_float32_vae(module)
        if self.fuse_qkv and hasattr(module, "fuse_qkv_projections"):
            fuse_projections_sharing_storage(module)
        if self.channels_last and _has_convolutions(module):
            convert_weights_to_channels_last(module)
            keep_transformer_outputs_channels_last(module)
            use_matmuls_for_pointwise_convolutions(module)
            if self._uses_triton_kernels(module):
                use_fused_convolution_biases(module)
                use_fused_resnet_blocks(module)
                use_fused_transformer_blocks(module)
                use_triton_group_norm(module)
                use_fused_geglu(module)
                use_triton_upsampling(module)
        self._prepared.add(id(module))
        return True

    def _uses_triton_kernels(self, module: torch.nn.Module) -> bool:
        """Whether the module's GroupNorms and GEGLUs run sd_core's Triton kernels (group_norm.py, geglu.py)."""
        return self.triton_kernels

    def _forward_of(self, module: torch.nn.Module) -> Callable[..., Any]:
        """What the wrapper records and falls back to: the module's own forward here."""
        return module.forward

    def _embeds_conditions_once(self, module: torch.nn.Module) -> bool:
        return embeds_once(module)

    @contextmanager
    def _installed(self, module: torch.nn.Module, variant: Hashable, hands_over: bool = False) -> Iterator[None]:
        """Shadow ``module.forward`` on the instance with the graph wrapper; restore exactly what was there.

        ``hands_over``: the module's outputs are consumed before any other graph replays (a pipeline's only
        ControlNet, whose residuals the UNet takes next), so its graph's own output buffers are handed out
        instead of clones, and a graph given them as inputs (the UNet's) reads them where they are: about 54 MB
        of copies a step fewer for SD1.5 + ControlNet at 512², 13 launches fewer. Graphs share one memory pool,
        so a replay may overwrite what another graph returned: hence never while something else runs between.
        With ``controlnet_alongside`` and unless in guess mode, those buffers are even handed out before they are
        filled: the UNet's graph computes them alongside its own work (``_call``), and copies the residuals into
        them there, on the ControlNet's branch, beside the UNet's own work.
        """
        had_own = "forward" in module.__dict__
        previous = module.__dict__.get("forward")
        eager = self._forward_of(module)
        # A ControlNet's conditioning image is embedded once per generation (sd_core/controlnet_condition.py).
        embeddings = ConditionEmbeddings() if self._embeds_conditions_once(module) else None
        embedded = functools.partial(forward_with_embedded_condition, module, eager)

        def graphed(*args: Any, **kwargs: Any) -> Any:
            image = kwargs.get("controlnet_cond")
            if embeddings is not None and isinstance(image, torch.Tensor):
                kwargs = {**kwargs, "controlnet_cond": embeddings.of(module, image)}
                return self._call(module, embedded, (variant, "embedded condition"), args, kwargs, hands_over)
            return self._call(module, eager, variant, args, kwargs, hands_over)

        module.forward = graphed  # type: ignore[method-assign]
        try:
            yield
        finally:
            if had_own:
                module.forward = previous  # type: ignore[method-assign]
            else:
                del module.forward

    def _call(
        self,
        module: torch.nn.Module,
        eager: Callable[..., Any],
        variant: Hashable,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        hands_over: bool = False,
    ) -> Any:
        leaves, spec = tree_flatten((args, kwargs))
        layout = call_key(leaves, spec)
        replayable = layout is not None and not torch.is_grad_enabled()
        deferred, self._deferred = self._deferred, None
        alongside = deferred if replayable and _takes_controlnet_outputs(module, kwargs, leaves, deferred) else None
        if deferred is not None and alongside is None:
            deferred.graph.replay()  # whatever runs next reads its outputs
        if not replayable:
            return eager(*args, **kwargs)
        key = (id(module), variant, *layout)
        if alongside is not None:
            if len(self._graphs) >= _MAX_GRAPHS and (*key, "alongside", id(alongside)) not in self._graphs:
                alongside.graph.replay()  # dropped below with every graph: run on its own, before its pool goes
                alongside = None
            else:  # the UNet's graph holds ``alongside``, so that id stays its own
                key = (*key, "alongside", id(alongside))
        captured = self._graphs.get(key)
        stale = captured is not None and captured.weights_at != _weights_address(module)
        if key not in self._graphs or stale:
            if stale:
                log.warning("Weights of %s moved since capture: capturing again.", type(module).__name__)
                for leaf in captured.static_outputs:  # type: ignore[union-attr]
                    self._output_buffers.pop(id(leaf), None)
            if len(self._graphs) >= _MAX_GRAPHS:
                self._drop_graphs()
            captured = self._graphs[key] = self._capture(module, eager, leaves, spec, alongside)
            if captured is not None:
                buffers = (leaf for leaf in captured.static_outputs if isinstance(leaf, torch.Tensor))
                self._output_buffers.update((id(leaf), leaf) for leaf in buffers)
        if captured is None:
            if alongside is not None:
                alongside.graph.replay()
            return eager(*args, **kwargs)
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        if hands_over and self.controlnet_alongside and not kwargs.get("guess_mode"):
            # Deferred: in guess mode the pipeline reads the residuals itself (with classifier-free guidance it pads
            # them for the unconditional half); otherwise they go straight into the UNet, whose graph then does
            # this work alongside its own.
            captured.load(tensors)
            self._deferred = captured
            return captured.outputs(cloned=False)
        return captured.replay(tensors, clone_outputs=not hands_over)

    def _capture(
        self,
        module: torch.nn.Module,
        eager: Callable[..., Any],
        leaves: list[Any],
        spec: TreeSpec,
        alongside: _CapturedGraph | None = None,
    ) -> _CapturedGraph | None:
        """Warm up, record one call into the shared pool; None (run eagerly from now on) if it cannot be recorded.

        ``alongside``: a ControlNet graph whose outputs this call (the UNet's) takes. The recording then forks:
        the ControlNet's call runs on a branch stream and writes into that graph's output buffers while the
        UNet runs its down blocks and mid block, which do not read them (``_with_controlnet_alongside``).
        Neither network alone fills an H100 at SD1.5's sizes, so the two together take less time than one
        after the other (a step 8.65 -> 7.77 ms, the same bits: benchmarks/README.md). The allocator gives each
        stream's activations their own blocks, so the branches never share memory.
        """
        static_leaves = self._static_leaves(leaves)
        static_args, static_kwargs = tree_unflatten(static_leaves, spec)
        call = functools.partial(eager, *static_args, **static_kwargs)
        try:
            if alongside is not None:
                call = functools.partial(_with_controlnet_alongside, module, call, alongside, self._branch_stream())
            side = self._capture_stream()
            side.wait_stream(torch.cuda.current_stream())
            device = next(module.parameters()).device
            with torch.cuda.stream(side), _allocating_in(self._pool, device) as in_pool:
                for _ in range(_WARMUP_CALLS):
                    call()
            torch.cuda.current_stream().wait_stream(side)
            if not in_pool:  # the warm-up's activations would otherwise stay cached beside the graph's own pool
                torch.cuda.empty_cache()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=side):
                outputs = call()
        except RuntimeError as error:  # e.g. a host sync inside the module: not capturable
            log.warning("CUDA graph capture of %s failed, running it eagerly: %s", type(module).__name__, error)
            torch.cuda.synchronize()
            return None
        self._pool = graph.pool()
        output_leaves, output_spec = tree_flatten(outputs)
        static_inputs = [leaf for leaf in static_leaves if isinstance(leaf, torch.Tensor)]
        return _CapturedGraph(
            graph, static_inputs, output_leaves, output_spec, _weights_address(module), call, alongside
        )

    def _static_leaves(self, leaves: list[Any]) -> list[Any]:
        """A call's arguments as a graph records them: tensors copied into buffers of their own, except another
        graph's output buffers, which are read where they lie (``_installed``'s hands_over)."""
        return [
            leaf.clone() if isinstance(leaf, torch.Tensor) and self._output_buffers.get(id(leaf)) is not leaf else leaf
            for leaf in leaves
        ]


def _with_controlnet_alongside(
    unet: torch.nn.Module, call: Callable[[], Any], controlnet: _CapturedGraph, branch: torch.cuda.Stream
) -> Any:
    """``call`` (the UNet's) while ``controlnet``'s recorded call runs on ``branch`` into its output buffers.

    The UNet's down blocks run beside the ControlNet. Their outputs get the ControlNet's residuals added on the
    branch, after the ControlNet, while the UNet's mid block (which reads neither) runs on; the UNet waits
    for the branch after its mid block, before it adds the ControlNet's mid residual. Cross-stream memory:
    the down blocks' outputs, read on the branch, are held until that wait, so the mid block cannot reuse
    their memory while the branch still reads them; the sums, made on the branch, are read only after it.
    """
    main = torch.cuda.current_stream()
    branch.wait_stream(main)
    with torch.cuda.stream(branch):
        results = [leaf for leaf in tree_flatten(controlnet.rerun())[0] if isinstance(leaf, torch.Tensor)]
        torch._foreach_copy_([leaf for leaf in controlnet.static_outputs if isinstance(leaf, torch.Tensor)], results)
    layers = _controlnet_join(unet)
    assert layers is not None  # _call pairs only UNets that have them
    first, down_blocks, middle = layers
    held: list[Any] = []

    def add_on_branch(*_: Any) -> None:
        branch.wait_stream(main)
        torch.cuda.set_stream(branch)

    def middle_on_main(*_: Any) -> None:
        torch.cuda.set_stream(main)

    def join(*_: Any) -> None:
        main.wait_stream(branch)
        held.clear()

    hooks = [
        layer.register_forward_hook(lambda _layer, _args, output: held.append(output))
        for layer in (first, *down_blocks)
    ]
    hooks += [
        down_blocks[-1].register_forward_hook(add_on_branch),
        middle.register_forward_pre_hook(middle_on_main),
        middle.register_forward_hook(join),
    ]
    try:
        return call()
    finally:  # also when the UNet fails: a capture must end with every branch joined
        for hook in hooks:
            hook.remove()
        torch.cuda.set_stream(main)
        main.wait_stream(branch)


def _controlnet_join(unet: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.ModuleList, torch.nn.Module] | None:
    """Where a diffusers ``UNet2DConditionModel`` meets a ControlNet's residuals: the layers whose outputs get the
    down residuals (its input convolution and down blocks; the sums are made between the last of them and the
    mid block) and its mid block (whose output gets the mid residual). None for other networks, whose forward
    may read them elsewhere."""
    if not isinstance(unet, UNet2DConditionModel) or unet.mid_block is None or len(unet.down_blocks) == 0:
        return None
    return unet.conv_in, unet.down_blocks, unet.mid_block


def _takes_controlnet_outputs(
    unet: torch.nn.Module, kwargs: dict[str, Any], leaves: list[Any], controlnet: _CapturedGraph | None
) -> bool:
    """Whether this call is a UNet's that takes ``controlnet``'s own output buffers as its residuals, and nothing
    else that its forward adds to the down blocks' outputs (a T2I-Adapter's residuals are added in place)."""
    if controlnet is None or _controlnet_join(unet) is None or kwargs.get("down_intrablock_additional_residuals"):
        return False
    given = {id(leaf) for leaf in leaves if isinstance(leaf, torch.Tensor)}
    outputs = [id(leaf) for leaf in controlnet.static_outputs if isinstance(leaf, torch.Tensor)]
    return bool(outputs) and given.issuperset(outputs)


class CompiledGraphAccelerator(CudaGraphAccelerator):
    """The graph path over torch.compile'd UNet and ControlNets: fused kernels, replayed with one launch.

    The text encoders and the VAE stay uncompiled: called once or twice a request, their graphs already make
    them cheap, and compiling them would only add to the first image's wait.
    """

    def __init__(self, fuse_qkv: bool = True, channels_last: bool = True, backend: str | Callable = "inductor") -> None:
        # The ControlNet beside the UNet relies on forward hooks inside the UNet, which dynamo may not guard on.
        super().__init__(fuse_qkv=fuse_qkv, channels_last=channels_last, controlnet_alongside=False)
        self.backend = backend
        # The UNet's and ControlNet's forwards run through one diffusers decorator frame, so each image size adds
        # two compiled entries to it; torch's default limit of 8 would run the fifth size eagerly.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * _MAX_GRAPHS)
        self._compiled: dict[int, _CompiledForward] = {}

    def reset(self) -> None:
        super().reset()
        self._compiled.clear()
        # Compiled code is kept per forward *function*, shared by every model of a class: forgetting it at unload
        # keeps model switches from piling up recompilations to torch's limit (after which it runs eagerly).
        torch._dynamo.reset()

    def _uses_triton_kernels(self, module: torch.nn.Module) -> bool:
        # Inductor writes its own fused kernels for what it compiles; hand-written ones would only split its graph.
        return self.triton_kernels and not _is_denoiser(module)

    def _embeds_conditions_once(self, module: torch.nn.Module) -> bool:
        return False  # dynamo would trace the swapped embedding layer; untried, so the compiled forward is whole

    def _forward_of(self, module: torch.nn.Module) -> Callable[..., Any]:
        if not _is_denoiser(module):  # text encoders and the VAE
            return module.forward
        compiled = self._compiled.get(id(module))
        if compiled is None:
            compiled = self._compiled[id(module)] = _CompiledForward(module.forward, self.backend)
        return compiled


class _CompiledForward:
    """A module's forward through torch.compile; its own forward from the first compile error on.

    Shapes are static (``dynamic=False``): each image size gets its own specialised kernels, as each gets its
    own CUDA graph anyway. A compile that fails (no C compiler, an unsupported operation) costs speed, never
    the image.
    """

    def __init__(self, forward: Callable[..., Any], backend: str | Callable) -> None:
        self.forward = forward
        self.compiled: Callable[..., Any] | None = torch.compile(forward, backend=backend, dynamic=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as error:  # any compiler failure: fall back, keep generating
                log.warning("torch.compile failed, running %s eagerly: %s", self.forward.__qualname__, error)
                self.compiled = None
        return self.forward(*args, **kwargs)


@contextmanager
def _allocating_in(pool: Any, device: torch.device) -> Iterator[bool]:
    """Within the block this thread's allocations on ``device`` come from the graphs' memory pool; yields whether
    they do.

    The warm-ups before a capture run in the pool the graph is then captured into: their activations take the
    space reserved there (``_reserve``) instead of memory beside it, so a request's first run, which warms
    up and captures every graph, peaks no higher than later ones. Only a pool that live graphs hold (it
    outlives the block), and only where PyTorch offers the routing ``torch.cuda.use_mem_pool`` is made of;
    elsewhere the warm-ups allocate as usual.
    """
    begin = getattr(torch._C, "_cuda_beginAllocateCurrentThreadToPool", None)
    end = getattr(torch._C, "_cuda_endAllocateToPool", None)
    release = getattr(torch._C, "_cuda_releasePool", None)
    if pool is None or begin is None or end is None or release is None or device.type != "cuda":
        yield False
        return
    index = torch.cuda.current_device() if device.index is None else device.index
    begin(index, pool)
    try:
        yield True
    finally:
        end(index, pool)
        release(index, pool)


def _set_up_matrix_products(stream: torch.cuda.Stream) -> None:
    """Run one small matrix product, with and without a bias, on ``stream``, outside any graph pool.

    PyTorch gives each stream its cuBLAS workspace at the stream's first product and keeps it for good. Made
    inside a warm-up routed to the graphs' pool, it would pin that pool's memory for as long as the process
    lives, past the graphs' own release.
    """
    with torch.cuda.stream(stream):
        a = torch.ones(16, 16, device=stream.device, dtype=torch.float16)
        torch.nn.functional.linear(a, a, a[0])
        torch.mm(a, a)
    torch.cuda.current_stream().wait_stream(stream)


def call_key(leaves: list[Any], spec: TreeSpec) -> tuple[Hashable, ...] | None:
    """What a graph is specific to: argument structure, each tensor's layout, every non-tensor value.

    None when the call cannot be a graph: a tensor off the GPU (or needing gradients), or any other object
    than a plain value (a graph records values, so it may only be reused for equal ones; a random generator
    or a mutable object could change behind an equal-looking key).
    """
    parts: list[Hashable] = [str(spec)]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if leaf.device.type != "cuda" or leaf.requires_grad:
                return None
            parts.append((tuple(leaf.shape), leaf.stride(), leaf.dtype, leaf.device.index))
        elif isinstance(leaf, _PLAIN_VALUES) or leaf is None:
            parts.append((type(leaf), leaf))
        else:
            return None
    return tuple(parts)


def controlnet_members(pipe: Any) -> list[torch.nn.Module]:
    """The pipeline's ControlNets, one per control: the same network twice where it serves two controls."""
    controlnet = getattr(pipe, "controlnet", None)
    if controlnet is None:
        return []
    members = getattr(controlnet, "nets", None)
    return list(members) if members is not None else [controlnet]


def graphable_modules(pipe: Any) -> list[torch.nn.Module]:
    """The UNet and every ControlNet (one, or a multi's members), called every step; the text encoders,
    called twice a request (prompt and negative prompt) with hundreds of small kernels each; and the VAE's
    encoder and decoder, the largest part of a request outside the steps, where their weights stay put."""
    modules = [pipe.unet]
    modules.extend(
        encoder for name in ("text_encoder", "text_encoder_2") if (encoder := getattr(pipe, name, None)) is not None
    )
    modules.extend(controlnet_members(pipe))
    if _vae_stays_put(pipe):
        modules.extend([pipe.vae.encoder, pipe.vae.decoder])
    return list(dict.fromkeys(modules))  # one ControlNet may serve several controls: wrap it once


def _vae_stays_put(pipe: Any) -> bool:
    """False where diffusers changes the VAE around each call, which would mean capturing again every request.

    SDXL pipelines recast a VAE whose config asks for it (``force_upcast``) to fp32 around every encode and
    decode, unless sd_core made it fp32 for good (sd_core/vae_precision.py); VAE tiling calls the networks
    on tiles of several sizes, each a graph of its own.
    """
    vae = getattr(pipe, "vae", None)
    if vae is None or getattr(vae, "use_tiling", False):
        return False
    return not recasts_vae(pipe)


def fuse_projections_sharing_storage(module: torch.nn.Module) -> int:
    """``module.fuse_qkv_projections()``, with each attention's separate q/k/v weights made views into its fused
    ones as soon as that attention is fused; returns how many attentions share.

    diffusers copies q, k and v into a new fused layer and keeps the originals (to unfuse), which the fused
    attention never reads: every projection was held twice, 0.15 GiB for SD1.5 + ControlNet and 1.4 GiB for
    SDXL + ControlNet (H100 memory snapshot). As views: same values, one copy. Freed one attention at a time,
    the originals' space takes the next fused layer of the same width; freed all at the end, it stayed
    reserved as holes between other weights.
    """
    shared = 0
    originals: dict[torch.nn.Module, Callable[..., Any]] = {}

    def fuse_then_share(attention: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        nonlocal shared
        originals[attention](*args, **kwargs)
        shared += _share_projection_storage(attention)

    own = {}  # instances with a fuse_projections of their own, put back afterwards
    for attention in module.modules():
        if callable(getattr(attention, "fuse_projections", None)):
            if "fuse_projections" in attention.__dict__:
                own[attention] = attention.__dict__["fuse_projections"]
            originals[attention] = attention.fuse_projections
            attention.fuse_projections = functools.partial(fuse_then_share, attention)  # type: ignore[method-assign]
    try:
        module.fuse_qkv_projections()  # type: ignore[operator]
    finally:
        for attention in originals:
            if attention in own:
                attention.fuse_projections = own[attention]  # type: ignore[method-assign]
            else:
                del attention.fuse_projections
    return shared


def _share_projection_storage(attention: torch.nn.Module) -> bool:
    """Make a fused attention's q/k/v (or, for cross-attention, k/v) weights views into its fused layer's."""
    if not getattr(attention, "fused_projections", False):
        return False
    if hasattr(attention, "to_qkv"):
        fused, parts = attention.to_qkv, (attention.to_q, attention.to_k, attention.to_v)
    elif hasattr(attention, "to_kv"):
        fused, parts = attention.to_kv, (attention.to_k, attention.to_v)
    else:
        return False
    start = 0
    for layer in parts:
        rows = layer.weight.shape[0]
        layer.weight.data = fused.weight.data[start : start + rows]
        if layer.bias is not None and fused.bias is not None:
            layer.bias.data = fused.bias.data[start : start + rows]
        start += rows
    return True


def _is_denoiser(module: torch.nn.Module) -> bool:
    """The UNet and ControlNets: the networks conditioned on the timestep, run every step."""
    return hasattr(module, "time_embedding")


def _has_convolutions(module: torch.nn.Module) -> bool:
    return any(isinstance(layer, torch.nn.Conv2d) for layer in module.modules())


def _weights_address(module: torch.nn.Module) -> int:
    return next(module.parameters()).data_ptr()
