"""The speed switch and its fallbacks, on the CPU: what runs where, and that nothing changes what is computed."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from torch.utils._pytree import tree_flatten, tree_unflatten

from sd_core import CancelledError, ControlSpec, EngineSettings, GenerationRequest, ValidationError
from sd_core.acceleration import (
    CompiledGraphAccelerator,
    CudaGraphAccelerator,
    PlainPath,
    _CapturedGraph,
    _with_controlnet_alongside,
    call_key,
    compile_cache_dir,
    fuse_projections_sharing_storage,
    graphable_modules,
    make_accelerator,
    use_compile_cache,
    uses_cuda_graphs,
)
from sd_core.controlnet_condition import ConditionEmbeddings, embeds_once
from sd_core.engine import Engine
from sd_core.preview import PreviewRelay

SIZE = 64
CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def request(tiny_models, **overrides) -> GenerationRequest:
    rng = np.random.default_rng(0)
    fields = {
        "model": str(tiny_models["sd1"]),
        "prompt": "a mossy stone",
        "image": rng.random((SIZE, SIZE, 3), dtype=np.float32),
        "controls": (ControlSpec(str(tiny_models["sd1_controlnet"]), rng.random((SIZE, SIZE, 3), dtype=np.float32)),),
        "strength": 1.0,
        "steps": 3,
        "seed": 11,
    }
    fields.update(overrides)
    return GenerationRequest(**fields)


@pytest.mark.parametrize("mode", ["auto", "cuda_graphs", "compile"])
def test_graphs_only_where_weights_stay_on_a_cuda_gpu(mode):
    available = torch.cuda.is_available()
    assert uses_cuda_graphs(mode, CUDA, cpu_offload=False) is available
    assert not uses_cuda_graphs(mode, CUDA, cpu_offload=True)
    assert not uses_cuda_graphs(mode, CPU, cpu_offload=False)
    assert not uses_cuda_graphs(mode, torch.device("mps"), cpu_offload=False)


def test_off_is_plain_everywhere():
    assert not uses_cuda_graphs("off", CUDA, cpu_offload=False)
    assert isinstance(make_accelerator("off", CUDA, cpu_offload=False), PlainPath)


def test_auto_on_cpu_picks_the_plain_path():
    assert isinstance(Engine(EngineSettings(device="cpu")).accelerator, PlainPath)


def test_unknown_mode_is_an_artist_error():
    with pytest.raises(ValidationError, match="Unknown acceleration 'turbo'"):
        Engine(EngineSettings(device="cpu", acceleration="turbo"))


def test_graphs_requested_on_cpu_give_the_plain_output_bit_for_bit(tiny_models):
    plain = Engine(EngineSettings(device="cpu", acceleration="off")).generate(request(tiny_models))
    fast = Engine(EngineSettings(device="cpu", acceleration="cuda_graphs")).generate(request(tiny_models))
    np.testing.assert_array_equal(plain.images[0].pixels, fast.images[0].pixels)


def test_graph_wrapper_degrades_to_the_module_for_cpu_tensors_and_restores_it(tiny_models):
    """Installed on a CPU pipeline the wrapper must call the real modules: same pixels, nothing captured."""
    engine = Engine(EngineSettings(device="cpu", acceleration="off"))
    expected = engine.generate(request(tiny_models)).images[0].pixels
    accelerator = CudaGraphAccelerator(fuse_qkv=False, channels_last=False)  # layout changes alter the bits
    engine.accelerator = accelerator
    unet = engine.cache.base_pipeline(str(tiny_models["sd1"]))[0].unet
    got = engine.generate(request(tiny_models)).images[0].pixels
    np.testing.assert_array_equal(expected, got)
    assert accelerator.graph_count == 0
    assert "forward" not in unet.__dict__  # the class's forward is back


def test_controlnet_conditioning_is_embedded_once_per_generation_with_the_same_pixels(tiny_models):
    """On the graph path each control image is embedded once, not every step (sd_core/controlnet_condition.py)."""
    rng = np.random.default_rng(1)
    control = str(tiny_models["sd1_controlnet"])
    images = [rng.random((SIZE, SIZE, 3), dtype=np.float32) for _ in range(2)]
    two_controls = request(tiny_models, controls=tuple(ControlSpec(control, image) for image in images), steps=4)
    engine = Engine(EngineSettings(device="cpu", acceleration="off"))
    embedding_layer = engine.cache.controlnet(control).controlnet_cond_embedding.conv_in
    embedded: list[int] = []
    embedding_layer.register_forward_hook(lambda *args: embedded.append(1))
    expected = engine.generate(two_controls).images[0].pixels
    assert len(embedded) == 2 * 4  # stock: every step, for each control
    embedded.clear()
    accelerator = engine.accelerator = CudaGraphAccelerator(fuse_qkv=False, channels_last=False)  # same bits
    through_graph_wrapper: list[str] = []
    call = accelerator._call
    accelerator._call = lambda module, *rest: through_graph_wrapper.append(type(module).__name__) or call(module, *rest)
    np.testing.assert_array_equal(engine.generate(two_controls).images[0].pixels, expected)
    assert len(embedded) == 2  # once per control, though one ControlNet serves both
    # and through the graph wrapper (a graph on CUDA; on the CPU the module itself)
    assert through_graph_wrapper.count("ControlNetConditioningEmbedding") == 2
    embedded.clear()
    engine.generate(two_controls)
    assert len(embedded) == 2  # a new generation embeds its images anew
    embedding = engine.cache.controlnet(control).controlnet_cond_embedding
    assert "forward" not in embedding.__dict__  # the wrapper is gone after each generation


class DoublingGraph:
    """Stands in for a CUDA graph on the CPU: replaying doubles the static input into the static output."""

    def __init__(self, static_input: torch.Tensor, static_output: torch.Tensor) -> None:
        self.static_input, self.static_output = static_input, static_output

    def replay(self) -> None:
        torch.mul(self.static_input, 2, out=self.static_output)


def doubling_graph(static_input: torch.Tensor | None = None) -> _CapturedGraph:
    static_input, static_output = torch.zeros(3) if static_input is None else static_input, torch.zeros(3)
    outputs, spec = tree_flatten((static_output,))
    graph = DoublingGraph(static_input, static_output)
    return _CapturedGraph(graph, [static_input], outputs, spec, 0, rerun=lambda: static_input * 2)


def test_handed_over_outputs_are_the_graphs_buffers_and_are_read_where_they_lie(monkeypatch):
    """A ControlNet serving one control hands its output buffers to the UNet's graph, which reads them in place."""
    controlnet = doubling_graph()
    (cloned,) = controlnet.replay([torch.ones(3)])
    assert cloned is not controlnet.static_outputs[0] and torch.equal(cloned, torch.full((3,), 2.0))
    (handed,) = controlnet.replay([torch.full((3,), 3.0)], clone_outputs=False)
    assert handed is controlnet.static_outputs[0] and torch.equal(handed, torch.full((3,), 6.0))
    unet = doubling_graph(static_input=handed)  # what _capture records for an input it was handed over
    copies: list[int] = []
    foreach_copy = torch._foreach_copy_
    monkeypatch.setattr(torch, "_foreach_copy_", lambda out, src: copies.append(len(out)) or foreach_copy(out, src))
    (result,) = unet.replay([handed])
    assert copies == [] and torch.equal(result, torch.full((3,), 12.0))
    (result,) = unet.replay([torch.ones(3)])  # another tensor (an eager ControlNet's) is copied in as usual
    assert copies == [1] and torch.equal(result, torch.full((3,), 2.0))


@pytest.fixture
def denoisers(tiny_models):
    """The tiny SD1 UNet and ControlNet (copies: these tests install wrappers and hooks on them), and one step's
    inputs: latents, text embeddings, a control image."""
    engine = Engine(EngineSettings(device="cpu"))
    unet = copy.deepcopy(engine.cache.base_pipeline(str(tiny_models["sd1"]))[0].unet).eval()
    controlnet = copy.deepcopy(engine.cache.controlnet(str(tiny_models["sd1_controlnet"]))).eval()
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    image = torch.rand(1, 3, 64, 64, generator=generator)
    samples = [torch.randn(1, 4, 8, 8, generator=generator) for _ in range(3)]
    return unet, controlnet, text, image, samples


def one_step(unet, controlnet, text, image, sample, guess_mode=False):
    """A step as diffusers' ControlNet pipelines make it (without guidance): the ControlNet, then the UNet."""
    down, mid = controlnet(sample, 10, text, controlnet_cond=image, guess_mode=guess_mode, return_dict=False)
    return unet(sample, 10, text, down_block_additional_residuals=down, mid_block_additional_residual=mid)[0]


class ReplayLog:
    """Stands in for CUDA graph capture on the CPU: a "graph" reruns its recorded call into its output buffers
    and notes its network; a UNet graph recorded with a ControlNet alongside first does that ControlNet's work."""

    def __init__(self, monkeypatch, accelerator: CudaGraphAccelerator) -> None:
        self.replays: list[str] = []
        self.captures: list[tuple[str, str | None]] = []
        self.names: dict[int, str] = {}
        self.accelerator = accelerator
        cpu_key = lambda leaves, spec: (str(spec), *(tuple(x.shape) if torch.is_tensor(x) else x for x in leaves))  # noqa: E731
        monkeypatch.setattr("sd_core.acceleration.call_key", cpu_key)
        monkeypatch.setattr(accelerator, "_capture", self.capture)

    def capture(self, module, eager, leaves, spec, alongside=None):
        name = type(module).__name__
        self.captures.append((name, None if alongside is None else self.names[id(alongside.graph)]))
        static_leaves = self.accelerator._static_leaves(leaves)
        static_args, static_kwargs = tree_unflatten(static_leaves, spec)

        def call():
            if alongside is not None:
                results = [leaf for leaf in tree_flatten(alongside.rerun())[0] if torch.is_tensor(leaf)]
                torch._foreach_copy_([leaf for leaf in alongside.static_outputs if torch.is_tensor(leaf)], results)
            return eager(*static_args, **static_kwargs)

        outputs, output_spec = tree_flatten(call())
        graph = SimpleNamespace(replay=lambda: self._replay(name, call, outputs))
        self.names[id(graph)] = name
        static_inputs = [leaf for leaf in static_leaves if torch.is_tensor(leaf)]
        weights_at = next(module.parameters()).data_ptr()
        return _CapturedGraph(graph, static_inputs, outputs, output_spec, weights_at, call, alongside)

    def _replay(self, name, call, outputs) -> None:
        self.replays.append(name)
        for buffer, result in zip(outputs, tree_flatten(call())[0], strict=True):
            buffer.copy_(result)


@torch.no_grad()
def test_a_controlnet_runs_inside_the_unet_graph_that_takes_its_outputs(monkeypatch, denoisers):
    """One step, two networks: the ControlNet's graph is not replayed on its own where the UNet takes its
    residuals as they are; the UNet's graph, recorded with the ControlNet's work alongside, does both, with
    the same result as the two in turn. Anything else that reads them gets the ControlNet replayed first."""
    unet, controlnet, text, image, samples = denoisers
    step = functools.partial(one_step, unet, controlnet, text, image)
    expected = [step(sample) for sample in samples]
    guessed = step(samples[0], guess_mode=True)
    accelerator = CudaGraphAccelerator()
    log = ReplayLog(monkeypatch, accelerator)
    with accelerator._installed(controlnet, "v", hands_over=True), accelerator._installed(unet, "v"):
        for sample, wanted in zip(samples, expected, strict=True):
            torch.testing.assert_close(step(sample), wanted)
        assert log.captures == [("ControlNetModel", None), ("UNet2DConditionModel", "ControlNetModel")]
        assert log.replays == ["UNet2DConditionModel"] * 3  # the ControlNet's graph never on its own
        log.replays.clear()
        torch.testing.assert_close(step(samples[0], guess_mode=True), guessed)  # the pipeline may pad them
        assert log.replays == ["ControlNetModel", "UNet2DConditionModel"]
        log.replays.clear()
        down, mid = controlnet(samples[1], 10, text, controlnet_cond=image, return_dict=False)
        assert log.replays == []  # deferred: its buffers are handed out before they are filled
        torch.testing.assert_close(
            unet(samples[1], 10, text, [d.clone() for d in down], mid_block_additional_residual=mid)[0], expected[1]
        )
        assert log.replays == ["ControlNetModel", "UNet2DConditionModel"]  # not its buffers: replayed first
    accelerator = CudaGraphAccelerator(controlnet_alongside=False)  # the benchmark's ablation
    log = ReplayLog(monkeypatch, accelerator)
    with accelerator._installed(controlnet, "v", hands_over=True), accelerator._installed(unet, "v"):
        torch.testing.assert_close(step(samples[2]), expected[2])
    assert log.replays == ["ControlNetModel", "UNet2DConditionModel"]
    assert log.captures == [("ControlNetModel", None), ("UNet2DConditionModel", None)]


@torch.no_grad()
def test_a_deferred_controlnet_runs_before_a_failed_capture_and_is_forgotten_after_a_generation(monkeypatch, denoisers):
    unet, controlnet, text, image, (sample, *_) = denoisers
    step = functools.partial(one_step, unet, controlnet, text, image)
    expected = step(sample)
    accelerator = CudaGraphAccelerator()
    log = ReplayLog(monkeypatch, accelerator)
    capture = log.capture
    monkeypatch.setattr(
        accelerator, "_capture", lambda module, *rest: None if module is unet else capture(module, *rest)
    )
    with accelerator._installed(controlnet, "v", hands_over=True), accelerator._installed(unet, "v"):
        torch.testing.assert_close(step(sample), expected)  # the UNet eager, on the replayed outputs
    assert log.replays == ["ControlNetModel"]
    pipe = SimpleNamespace(unet=unet, controlnet=controlnet, vae=None)
    monkeypatch.setattr(accelerator, "_prepare", lambda module: None)
    with accelerator.active(pipe, variant="v"):
        controlnet(sample, 10, text, controlnet_cond=image, return_dict=False)  # a generation that stops here
        assert accelerator._deferred is not None
    assert accelerator._deferred is None


@torch.no_grad()
def test_a_unet_graph_made_as_every_graph_is_dropped_does_not_keep_the_dropped_controlnet_graph(monkeypatch, denoisers):
    """Past the graph limit everything is dropped: a UNet graph recorded with the ControlNet's work would hold
    that dropped graph, and with it the whole old memory pool, for nothing."""
    unet, controlnet, text, image, (sample, *_) = denoisers
    step = functools.partial(one_step, unet, controlnet, text, image)
    expected = step(sample)
    monkeypatch.setattr("sd_core.acceleration._MAX_GRAPHS", 1)
    accelerator = CudaGraphAccelerator()
    log = ReplayLog(monkeypatch, accelerator)
    with accelerator._installed(controlnet, "v", hands_over=True), accelerator._installed(unet, "v"):
        torch.testing.assert_close(step(sample), expected)
    assert log.captures == [("ControlNetModel", None), ("UNet2DConditionModel", None)]
    assert log.replays == ["ControlNetModel", "UNet2DConditionModel"]
    assert [graph.alongside for graph in accelerator._graphs.values()] == [None]


class FakeStreams:
    """Stands in for CUDA streams on the CPU: which one is current, and each wait between them, in order."""

    def __init__(self, monkeypatch) -> None:
        self.waits: list[str] = []
        self.main, self.branch = FakeStream("main", self), FakeStream("branch", self)
        self.current = self.main
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: self.current)
        monkeypatch.setattr(torch.cuda, "set_stream", lambda stream: setattr(self, "current", stream))
        monkeypatch.setattr(torch.cuda, "stream", self.using)

    @contextlib.contextmanager
    def using(self, stream):
        before, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = before


class FakeStream:
    def __init__(self, name: str, streams: FakeStreams) -> None:
        self.name, self.streams = name, streams

    def wait_stream(self, other: FakeStream) -> None:
        self.streams.waits.append(f"{self.name} waits for {other.name}")


@torch.no_grad()
def test_the_unet_runs_its_down_and_mid_blocks_beside_the_controlnet_and_sums_the_residuals_on_its_branch(
    monkeypatch, denoisers
):
    """What the UNet's capture records, stream by stream: the ControlNet on the branch; the UNet's down blocks
    and mid block on the main stream; the sums of its down blocks' outputs with the residuals on the branch,
    after the down blocks; the main stream waiting for the branch after its mid block. Hooks and the current
    stream are restored, and the branch joined, also when the UNet fails."""
    unet, controlnet, text, image, (sample, *_) = denoisers
    down, mid = controlnet(sample, 10, text, controlnet_cond=image, return_dict=False)
    expected = unet(sample, 10, text, down_block_additional_residuals=down, mid_block_additional_residual=mid)[0]
    streams = FakeStreams(monkeypatch)
    seen: dict[str, str] = {}

    def rerun():
        seen["controlnet"] = streams.current.name
        return controlnet(sample, 10, text, controlnet_cond=image, return_dict=False)

    buffers, spec = tree_flatten((tuple(torch.zeros_like(d) for d in down), torch.zeros_like(mid)))
    controlnet_graph = _CapturedGraph(None, [], buffers, spec, 0, rerun)
    residuals = {"down_block_additional_residuals": tuple(buffers[:-1]), "mid_block_additional_residual": buffers[-1]}
    call = functools.partial(lambda: unet(sample, 10, text, **residuals)[0])
    hook_counts = lambda: [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules()]  # noqa: E731
    fail = False

    def before_mid(*_):
        seen["sums"], seen["waits before mid"] = streams.current.name, str(len(streams.waits))
        if fail:
            raise RuntimeError("the mid block failed")

    def noting(name):
        return lambda *_: seen.__setitem__(name, streams.current.name)  # returns None: changes no input or output

    unet.conv_in.register_forward_pre_hook(noting("down blocks"))
    unet.mid_block.register_forward_pre_hook(before_mid)  # runs before the branch's own hooks: sees the sums'
    unet.mid_block.register_forward_hook(noting("mid block"))
    hooks_before = hook_counts()
    torch.testing.assert_close(_with_controlnet_alongside(unet, call, controlnet_graph, streams.branch), expected)
    assert seen == {
        "controlnet": "branch", "down blocks": "main", "sums": "branch", "waits before mid": "2", "mid block": "main"
    }  # fmt: skip
    assert streams.waits == ["branch waits for main"] * 2 + ["main waits for branch"] * 2
    assert streams.current is streams.main and hook_counts() == hooks_before
    streams.waits.clear()
    fail = True
    with pytest.raises(RuntimeError, match="mid block failed"):
        _with_controlnet_alongside(unet, call, controlnet_graph, streams.branch)
    assert streams.current is streams.main and hook_counts() == hooks_before
    assert streams.waits[-1] == "main waits for branch"


def test_only_a_pipelines_one_controlnet_hands_its_outputs_over(monkeypatch):
    """A multi-ControlNet holds its first member's outputs while the others replay: any of them may have been
    captured before it, into memory those outputs now occupy."""
    accelerator = CudaGraphAccelerator()
    installed: list[tuple[torch.nn.Module, bool]] = []

    @contextlib.contextmanager
    def record(module, variant, hands_over=False):
        installed.append((module, hands_over))
        yield

    monkeypatch.setattr(accelerator, "_installed", record)
    monkeypatch.setattr(accelerator, "_prepare", lambda module: None)
    unet, first, second = (torch.nn.Linear(1, 1) for _ in range(3))
    for controlnet, hands_over in ((first, True), (SimpleNamespace(nets=[first]), True)):
        installed.clear()
        with accelerator.active(SimpleNamespace(unet=unet, controlnet=controlnet, vae=None), variant="none"):
            pass
        assert installed == [(unet, False), (first, hands_over)]
    for nets in ([first, second], [first, first]):
        installed.clear()
        with accelerator.active(SimpleNamespace(unet=unet, controlnet=SimpleNamespace(nets=nets), vae=None), "none"):
            pass
        assert installed == [(unet, False), *((net, False) for net in dict.fromkeys(nets))]


def test_a_controlnet_serving_two_controls_is_graphed_once():
    """Wrapped twice, its outer wrapper would capture a replay of the inner one's graph under the same key."""
    controlnet, unet = torch.nn.Conv2d(1, 1, 1), torch.nn.Conv2d(1, 1, 1)
    pipe = SimpleNamespace(unet=unet, controlnet=SimpleNamespace(nets=[controlnet, controlnet]), vae=None)
    assert graphable_modules(pipe) == [unet, controlnet]


def test_a_control_image_changed_in_place_is_embedded_again_and_bgr_controlnets_are_left_alone():
    def tiny_controlnet(**config) -> ControlNetModel:
        return ControlNetModel(
            block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            conditioning_embedding_out_channels=(8, 16), norm_num_groups=8,
            cross_attention_dim=16, layers_per_block=1, attention_head_dim=4, **config,
        ).eval()  # fmt: skip

    controlnet = tiny_controlnet()
    embeddings = ConditionEmbeddings()
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        first = embeddings.of(controlnet, image)
        assert embeddings.of(controlnet, image) is first
        image.mul_(0.5)
        again = embeddings.of(controlnet, image)
        assert again is not first and torch.equal(again, controlnet.controlnet_cond_embedding(image))
    assert embeds_once(controlnet)
    assert not embeds_once(tiny_controlnet(controlnet_conditioning_channel_order="bgr"))


def test_compile_requested_on_cpu_is_the_plain_path_and_leaves_the_cache_setting_alone(tiny_models, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    engine = Engine(EngineSettings(device="cpu", acceleration="compile", compile_cache_dir="/nowhere"))
    assert isinstance(engine.accelerator, PlainPath)
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    plain = Engine(EngineSettings(device="cpu", acceleration="off")).generate(request(tiny_models))
    np.testing.assert_array_equal(plain.images[0].pixels, engine.generate(request(tiny_models)).images[0].pixels)


def test_compile_cache_folder_setting_then_environment_then_beside_the_hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert compile_cache_dir() == Path(constants.HF_HOME) / "sd_core" / "torch_compile"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "from-env"))
    assert compile_cache_dir() == tmp_path / "from-env"
    assert compile_cache_dir(str(tmp_path / "set")) == tmp_path / "set"
    assert use_compile_cache(str(tmp_path / "set")) == tmp_path / "set"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "set")  # what inductor reads
    assert (tmp_path / "set").is_dir()


def test_compiled_path_compiles_the_denoisers_only_and_computes_the_same(tiny_models):
    """On CPU tensors the wrapper falls back to the (compiled) module: this runs the compile path end to end.

    The "eager" backend traces with dynamo without building kernels (no C compiler needed), and keeps the
    arithmetic, so the pixels must match the plain path.
    """
    engine = Engine(EngineSettings(device="cpu", acceleration="off"))
    expected = engine.generate(request(tiny_models)).images[0].pixels
    accelerator = CompiledGraphAccelerator(fuse_qkv=False, channels_last=False, backend="eager")
    engine.accelerator = accelerator
    pipe = engine.cache.base_pipeline(str(tiny_models["sd1"]))[0]
    got = engine.generate(request(tiny_models)).images[0].pixels
    np.testing.assert_allclose(expected, got, atol=1e-5)
    compiled_types = {type(compiled.forward.__self__).__name__ for compiled in accelerator._compiled.values()}
    assert compiled_types == {"UNet2DConditionModel", "ControlNetModel"}  # text encoder not compiled
    assert accelerator.graph_count == 0
    assert "forward" not in pipe.unet.__dict__
    accelerator.reset()
    assert not accelerator._compiled


class TinyDenoiser(torch.nn.Module):
    """What the compile path compiles: a network with a timestep embedding, as UNets and ControlNets have."""

    def __init__(self) -> None:
        super().__init__()
        self.time_embedding = torch.nn.Linear(1, 4)
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(self.conv(sample))


def test_a_failing_compile_costs_speed_not_the_result(caplog):
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    torch.manual_seed(0)
    layer = TinyDenoiser()
    inputs = torch.randn(1, 3, 8, 8)
    expected = layer(inputs)
    accelerator = CompiledGraphAccelerator(fuse_qkv=False, channels_last=False, backend=broken_backend)
    with caplog.at_level("WARNING", logger="sd_core.acceleration"):
        forward = accelerator._forward_of(layer)
        torch.testing.assert_close(forward(inputs), expected)
        torch.testing.assert_close(forward(inputs), expected)  # eager from now on, no second attempt
    assert sum("torch.compile failed" in record.message for record in caplog.records) == 1
    accelerator.reset()


def key_of(args: tuple, kwargs: dict) -> tuple | None:
    leaves, spec = tree_flatten((args, kwargs))
    return call_key(leaves, spec)


def test_graph_key_refuses_what_a_graph_cannot_replay():
    assert key_of((torch.zeros(2, 4),), {}) is None  # a CPU tensor: no CUDA graph
    assert key_of((), {"scale": np.ones(2)}) is None  # unhashable: cannot tell whether a recorded value still holds


def test_graph_key_separates_recorded_values():
    assert key_of((), {"scale": 1.0}) == key_of((), {"scale": 1.0})
    assert key_of((), {"scale": 1.0}) != key_of((), {"scale": 0.5})  # a ControlNet scale is baked into the graph
    assert key_of((), {"scale": 1.0}) != key_of((), {"weight": 1.0})


def test_previews_one_per_step_and_cancel_within_a_step(tiny_models):
    engine = Engine(EngineSettings(device="cpu", acceleration="cuda_graphs"))
    seen = []
    engine.generate(request(tiny_models), on_progress=seen.append)
    assert [progress.step for progress in seen] == [1, 2, 3]
    assert all(progress.preview is not None and progress.preview.shape == (8, 8, 3) for progress in seen)

    steps = []
    with pytest.raises(CancelledError):
        engine.generate(
            request(tiny_models),
            on_progress=lambda progress: steps.append(progress.step),
            should_cancel=lambda: bool(steps),
        )
    assert steps == [1]


def test_deferred_previews_hand_over_the_previous_step():
    """On a GPU each step gets the step before's preview, so the host never waits for the current one."""
    torch.manual_seed(0)
    steps = [torch.randn(1, 4, 8, 8) for _ in range(4)]
    immediate = PreviewRelay("sd1", deferred=False)
    deferred = PreviewRelay("sd1", deferred=True)
    own = [immediate.handover(latents) for latents in steps]
    lagged = [deferred.handover(latents) for latents in steps]
    assert lagged[0] is None
    for previous, handed_over in zip(own[:-1], lagged[1:], strict=True):
        np.testing.assert_array_equal(previous, handed_over)
    assert all(preview.shape == (8, 8, 3) and 0.0 <= preview.min() <= preview.max() <= 1.0 for preview in own)


def test_vae_graphed_where_its_weights_stay_put(tiny_models):
    """SD1's VAE encoder and decoder are graphed; stock SDXL's is recast to fp32 around each call (until
    sd_core/vae_precision.py makes it fp32 for good: test_vae_precision.py); VAE tiling varies shapes."""
    engine = Engine(EngineSettings(device="cpu", acceleration="off"))
    sd1 = engine.cache.base_pipeline(str(tiny_models["sd1"]))[0]
    names = [type(module).__name__ for module in graphable_modules(sd1)]
    assert names == ["UNet2DConditionModel", "CLIPTextModel", "Encoder", "Decoder"]
    sd1.vae.enable_tiling()
    try:
        assert "Decoder" not in [type(module).__name__ for module in graphable_modules(sd1)]
    finally:
        sd1.vae.disable_tiling()
    sdxl = engine.cache.base_pipeline(str(tiny_models["sdxl"]))[0]
    assert sdxl.vae.config.force_upcast
    assert "Decoder" not in [type(module).__name__ for module in graphable_modules(sdxl)]
    np.testing.assert_equal(len(graphable_modules(sdxl)), 3)  # UNet and both text encoders


def test_fused_attention_projections_hold_one_copy_of_their_weights(tiny_models):
    """Fusing QKV copies q, k and v into one layer; the originals become views of it: same values, same output."""
    unet = Engine(EngineSettings(device="cpu")).cache.base_pipeline(str(tiny_models["sd1"]))[0].unet
    unet = copy.deepcopy(unet)
    torch.manual_seed(0)
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        expected = unet(sample, 10, text).sample
        originals = {name: tensor.clone() for name, tensor in unet.state_dict().items()}
        assert fuse_projections_sharing_storage(unet) > 0
        got = unet(sample, 10, text).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for name, tensor in originals.items():
        torch.testing.assert_close(unet.state_dict()[name], tensor, atol=0, rtol=0)
    attention = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    storage = attention.to_qkv.weight.untyped_storage().data_ptr()
    assert all(layer.weight.untyped_storage().data_ptr() == storage for layer in (attention.to_q, attention.to_v))
