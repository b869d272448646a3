"""A multi-task model suite for S2M3: 12 models over 5 tasks, built from shared parts.

Real weights where they exist offline (all-MiniLM-L6-v2 as the text encoder); the vision and
audio encoders are built from their published configs with seeded random weights (ViT-B/16,
ViT-S/16, Whisper-tiny's encoder), as are the projectors and heads; the captioning head is a
small GPT-2-style decoder (4 layers, 256 wide, 8000 tokens) from config, shared by both
captioning models. A part is named by what
builds it ("vit-b16", "classifier:768x1000:seed11"), so two models that name the same part get
byte-identical weights and the registry shares them; heads trained for different jobs have
different seeds and stay separate.

`size="tiny"` shrinks every config (tests); `size="full"` is the real shapes (benchmarks).
Each model is a task DAG over its module names (`prism_ops.s2m3.placement.Task`).

The built-in suite (`MODELS`, `BUILTIN`) is immutable. User-defined models (a tasks file's or a
plan's `custom`) make a new `Catalog` with `BUILTIN.with_custom(custom)`, which is passed to
whatever builds or looks up models; nothing global changes.
"""

from __future__ import annotations

import hashlib
import json
import re
from types import MappingProxyType

import torch

from ..models import load, minilm_path
from .modules import Module, Registry, module_bytes
from .checks import mapping, name, names, only, shown
from .placement import PlacementError, Task

TASKS = ("image classification", "text classification", "audio classification", "cross-modal retrieval",
         "captioning")

# model -> (task, {node: (part, inputs)}); inputs are node names or "input:<modality>".
_BUILTIN_MODELS = {
    "imagenet-vitb16": ("image classification", {
        "vit-b16": ("vit-b16", ("input:image",)), "cls": ("classifier:768x1000:seed11", ("vit-b16",))}),
    "cifar100-vitb16": ("image classification", {
        "vit-b16": ("vit-b16", ("input:image",)), "cls": ("classifier:768x100:seed12", ("vit-b16",))}),
    "cifar10-vits16": ("image classification", {
        "vit-s16": ("vit-s16", ("input:image",)), "cls": ("classifier:384x10:seed13", ("vit-s16",))}),
    "food101-vits16": ("image classification", {
        "vit-s16": ("vit-s16", ("input:image",)), "cls": ("classifier:384x101:seed14", ("vit-s16",))}),
    "sentiment-minilm": ("text classification", {
        "minilm": ("minilm", ("input:text",)), "cls": ("classifier:384x2:seed15", ("minilm",))}),
    "topic-minilm": ("text classification", {
        "minilm": ("minilm", ("input:text",)), "cls": ("classifier:384x20:seed16", ("minilm",))}),
    "audioset-whisper": ("audio classification", {
        "whisper-tiny": ("whisper-tiny", ("input:audio",)), "cls": ("classifier:384x527:seed17", ("whisper-tiny",))}),
    "keywords-whisper": ("audio classification", {
        "whisper-tiny": ("whisper-tiny", ("input:audio",)), "cls": ("classifier:384x12:seed18", ("whisper-tiny",))}),
    "image-text-retrieval": ("cross-modal retrieval", {
        "vit-b16": ("vit-b16", ("input:image",)), "minilm": ("minilm", ("input:text",)),
        "img-proj": ("projector:768x256:seed19", ("vit-b16",)), "txt-proj": ("projector:384x256:seed20", ("minilm",)),
        "sim": ("similarity", ("img-proj", "txt-proj"))}),
    "audio-text-retrieval": ("cross-modal retrieval", {
        "whisper-tiny": ("whisper-tiny", ("input:audio",)), "minilm": ("minilm", ("input:text",)),
        "aud-proj": ("projector:384x256:seed21", ("whisper-tiny",)), "txt-proj": ("projector:384x256:seed22", ("minilm",)),
        "sim": ("similarity", ("aud-proj", "txt-proj"))}),
    "image-captioning": ("captioning", {
        "vit-s16": ("vit-s16", ("input:image",)), "proj": ("projector:384x256:seed23", ("vit-s16",)),
        "decoder": ("decoder-small", ("proj",))}),
    "audio-captioning": ("captioning", {
        "whisper-tiny": ("whisper-tiny", ("input:audio",)), "proj": ("projector:384x256:seed24", ("whisper-tiny",)),
        "decoder": ("decoder-small", ("proj",))}),
}



def _freeze(models: dict):
    """{model: (task, {node: (part, inputs)})} as read-only mappings of tuples."""
    return MappingProxyType({name: (str(task), MappingProxyType({node: (part, tuple(inputs))
                                                                 for node, (part, inputs) in nodes.items()}))
                             for name, (task, nodes) in models.items()})


MODELS = _freeze(_BUILTIN_MODELS)  # the built-in suite, read-only
SUITE = tuple(MODELS)  # the 12 built-in models

# (full, tiny) config sizes of the encoders.
_VIT = {"vit-b16": (dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
                    dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)),
        "vit-s16": (dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
                    dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32))}
FULL_INPUTS = dict(image=(3, 224, 224), text=64, audio=(80, 3000))
TINY_INPUTS = dict(image=(3, 32, 32), text=12, audio=(80, 40))
_IMAGE = ((224, 16), (32, 8))  # (full, tiny) ViT image size and patch size


def encoder_tokens(part: str, size: str) -> int:
    """The tokens a transformer encoder (vit-*, minilm) reads for one example input: its
    sequence, which PRISM splits over the ranks of a group."""
    if part in _VIT:
        image, patch = _IMAGE[size == "tiny"]
        return (image // patch) ** 2 + 1  # the patches and the CLS token
    return (TINY_INPUTS if size == "tiny" else FULL_INPUTS)["text"]


def build_part(part: str, size: str = "full", in_width: int | None = None) -> Module:
    """The module a part name stands for, with its deterministic weights."""
    kind, net, cfg = _make(part, size, in_width)
    return Module(part, kind, net, cfg)


def part_bytes(part: str, size: str = "full", in_width: int | None = None) -> int:
    """A part's parameter and buffer bytes from its config alone: built on the meta device, so
    nothing is allocated or read from disk (checks before anything loads)."""
    with torch.device("meta"):
        return module_bytes(_make(part, size, in_width, meta=True)[1])


def _make(part, size, in_width, meta=False):
    """(kind, torch module or None, config) of a part."""
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    tiny = size == "tiny"
    torch.manual_seed(0)
    if part in _VIT:
        cfg = dict(_VIT[part][tiny], image_size=_IMAGE[tiny][0], patch_size=_IMAGE[tiny][1])
        return "vision", ViTModel(ViTConfig(**cfg), add_pooling_layer=False), cfg
    if part == "minilm":
        if tiny:
            cfg = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, vocab_size=1000)
            return "text", BertModel(BertConfig(**cfg), add_pooling_layer=False), cfg
        if meta:
            return "text", BertModel(BertConfig.from_pretrained(minilm_path()), add_pooling_layer=True), {}
        return "text", load("minilm")[1], {"weights": "all-MiniLM-L6-v2"}
    if part == "whisper-tiny":
        cfg = (dict(d_model=24, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=48, max_source_positions=20)
               if tiny else dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                                 max_source_positions=1500))
        return "audio", WhisperEncoder(WhisperConfig(num_mel_bins=80, **cfg)), cfg
    if part == "similarity":
        return "similarity", None, {}
    if part == "decoder-small":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = (dict(n_embd=256, n_layer=1, n_head=2, vocab_size=100, n_positions=16) if tiny
               else dict(n_embd=256, n_layer=4, n_head=4, vocab_size=8000, n_positions=64))
        return "decoder", GPT2LMHeadModel(GPT2Config(bos_token_id=0, eos_token_id=0, **cfg)), cfg
    kind, dims, seed = part.split(":")
    d_in, d_out = (int(x) for x in dims.split("x"))
    d_in = in_width if in_width is not None else d_in
    torch.manual_seed(int(seed.removeprefix("seed")))
    return kind, torch.nn.Linear(d_in, d_out), {"d_in": d_in, "d_out": d_out}


ENCODERS = ("vit-b16", "vit-s16", "minilm", "whisper-tiny", "decoder-small")
MODALITIES = ("image", "text", "audio")
READS = {"vit-b16": "image", "vit-s16": "image", "minilm": "text", "whisper-tiny": "audio"}  # encoder -> modality
DECODER_WIDTH = 256  # decoder-small's embedding width, at both sizes
MAX_CUSTOM, MAX_NODES = 32, 16  # custom models, nodes of one: the placement program grows with them
_HEAD = re.compile(r"(classifier|projector):([1-9][0-9]{0,6})x([1-9][0-9]{0,6}):seed([0-9]{1,18})")


def check_part(part: str) -> None:
    """ValueError unless `part` names something build_part can build."""
    if part in ENCODERS or part == "similarity":
        return
    if not (isinstance(part, str) and _HEAD.fullmatch(part)):
        raise ValueError(f"unknown module {part!r}: use one of {ENCODERS + ('similarity',)} or "
                         "classifier:INxOUT:seedN / projector:INxOUT:seedN")


def output_width(part: str, size: str) -> int | None:
    """The feature width a part outputs at `size`; None for a similarity (scores) or the decoder
    (token ids), whose outputs no module reads."""
    if part in _VIT:
        return _VIT[part][size == "tiny"]["hidden_size"]
    if part in ("minilm", "whisper-tiny"):
        return 24 if size == "tiny" else 384
    return int(part.split(":")[1].split("x")[1]) if ":" in part else None


def input_width(part: str, size: str) -> int | None:
    """The input width a head that reads `part` is built with: in the tiny suite heads take their
    input's width; at full size None (the width their name declares)."""
    return output_width(part, size) if size == "tiny" else None


def check_wiring(nodes: dict, size: str, where: str) -> None:
    """PlacementError unless every node reads what its part takes, at `size`: an encoder its one
    modality; a classifier or projector one node of the width its name declares (the tiny suite
    adapts it); the decoder one node of width 256; a similarity two nodes of equal width. `nodes`
    is {node: (part, inputs)} of a graph already known to be acyclic with no dangling input."""
    for node, (part, inputs) in nodes.items():
        at = f"{where}.nodes[{node!r}] ({part})"
        if part in READS:
            if list(inputs) != [f"input:{READS[part]}"]:
                raise PlacementError(f"{at} must read exactly ['input:{READS[part]}'], got {list(inputs)}")
            continue
        count = 2 if part == "similarity" else 1
        if len(inputs) != count or any(s.startswith("input:") for s in inputs):
            raise PlacementError(f"{at} must read exactly {count} node(s) of the model, not a modality, "
                                 f"got {list(inputs)}")
        widths = [output_width(nodes[s][0], size) for s in inputs]
        for s, w in zip(inputs, widths):
            if w is None:
                raise PlacementError(f"{at} reads {s!r}, whose output ({nodes[s][0]}: scores or token ids) "
                                     "no module can read")
        if part == "similarity":
            want = widths[0]
        elif part == "decoder-small":
            want = DECODER_WIDTH
        else:
            want = widths[0] if size == "tiny" else int(part.split(":")[1].split("x")[0])
        if any(w != want for w in widths):
            raise PlacementError(f"{at} needs inputs of width {want} at size {size}, got widths "
                                 f"{dict(zip(inputs, widths))}")


class Catalog:
    """Models by name ({model: (task, {node: (part, inputs)})}), read-only: the built-in suite
    (`BUILTIN`) or the suite plus user-defined models (`with_custom`, which makes a new one)."""

    def __init__(self, models):
        self._models = _freeze(models)

    @property
    def models(self):
        """{model: (task, {node: (part, inputs)})}, read-only."""
        return self._models

    def __contains__(self, name) -> bool:
        return name in self._models

    def nodes(self, model: str):
        """{node: (part, inputs)} of one model."""
        return self._models[model][1]

    def part(self, model: str, node: str) -> str:
        return self._models[model][1][node][0]

    def dag(self, model: str) -> dict:
        """{node: inputs} of one model."""
        return {node: inputs for node, (_, inputs) in self._models[model][1].items()}

    def with_custom(self, custom: dict | None, size: str = "full", where: str = "custom") -> Catalog:
        """This catalog plus user-defined models ({name: {task, nodes: {node: [part, [inputs]]}}}),
        checked at `size`: every field, the graph (no cycle or dangling input, one output) and the
        wiring (`check_wiring`). PlacementError names the first problem, as `where[model]...`."""
        added = {}
        custom = mapping(custom, where)
        if len(custom) > MAX_CUSTOM:
            raise PlacementError(f"{where} has {len(custom)} models; at most {MAX_CUSTOM} are allowed")
        for model, spec in custom.items():
            at = f"{where}[{model!r}]"
            name(model, f"{at}: a model's name")
            spec = mapping(spec, at, required=True)
            only(spec, ("task", "nodes"), at)
            task = name(spec.get("task", "custom"), f"{at}.task")
            raw = mapping(spec.get("nodes"), f"{at}.nodes", required=True)
            if not raw or len(raw) > MAX_NODES:
                raise PlacementError(f"{at}.nodes must have 1 to {MAX_NODES} nodes, got {len(raw)}")
            nodes = {}
            for node, pair in raw.items():
                nat = f"{at}.nodes[{node!r}]"
                if name(node, f"{nat}: a node's name").startswith("input:"):
                    raise PlacementError(f"{nat}: a node's name must not start with 'input:' (that names a modality)")
                if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    raise PlacementError(f"{nat} must be [part, [inputs]], got {shown(pair)}")
                part = name(pair[0], f"{nat}[0]")
                try:
                    check_part(part)
                except ValueError as e:
                    raise PlacementError(f"{nat}[0]: {e}") from None
                srcs = list(pair[1]) if isinstance(pair[1], tuple) else pair[1]
                inputs = tuple(names(srcs, f"{nat}[1]", limit=8))  # distinct: a node waits for each name once
                for src in inputs:
                    if src.startswith("input:") and src[6:] not in MODALITIES:
                        raise PlacementError(f"{nat} reads {src!r}; modalities are {MODALITIES}")
                nodes[node] = (part, inputs)
            dag = Task(model, {n: i for n, (_, i) in nodes.items()}, {m: 0 for m in MODALITIES})
            try:
                dag.order()
                dag.sink()
            except PlacementError as e:
                raise PlacementError(f"{at}: {e}") from None
            check_wiring(nodes, size, at)
            if model in self._models and self._models[model] != (task, nodes):
                raise PlacementError(f"{at}: custom model {model!r} has the name of a different model of the suite")
            added[model] = (task, nodes)
        return Catalog({**self._models, **added})

    def node_module(self, model: str, node: str, size: str = "full") -> Module:
        """A fresh copy of the module behind one node of a model."""
        nodes = self.nodes(model)
        part, inputs = nodes[node]
        width = input_width(nodes[inputs[0]][0], size) if ":" in part else None
        return build_part(part, size, width)

    def part_bytes(self, names, size: str = "full") -> dict:
        """{part: bytes} of every part the named models use, without building anything."""
        out = {}
        for m in names:
            nodes = self.nodes(m)
            for node, (part, inputs) in nodes.items():
                if part not in out:
                    width = input_width(nodes[inputs[0]][0], size) if ":" in part else None
                    out[part] = part_bytes(part, size, width)
        return out


BUILTIN = Catalog(MODELS)  # the 12 built-in models; custom ones: BUILTIN.with_custom(custom)
# What a plan records of the suite it was made for: a digest of the built-in models and of the
# encoder configs and input shapes they are built from (s2m3-serve refuses a plan made for
# another version: its parts may no longer be the same modules).
SUITE_VERSION = hashlib.sha256(json.dumps([{m: [t, {n: list(v) for n, v in nodes.items()}]
                                            for m, (t, nodes) in MODELS.items()},
                                           _VIT, FULL_INPUTS, TINY_INPUTS], sort_keys=True).encode()).hexdigest()[:12]


class Model:
    """One model of a catalog: its task DAG and its modules (shared through a registry, or not)."""

    def __init__(self, name: str, size: str = "full", registry: Registry | None = None,
                 catalog: Catalog = BUILTIN):
        if name not in catalog:
            raise ValueError(f"model must be one of {sorted(catalog.models)}, got {name!r}")
        self.name, self.task_name = name, catalog.models[name][0]
        self.modules = {}
        for node in catalog.nodes(name):
            m = catalog.node_module(name, node, size)
            self.modules[node] = registry.add(m) if registry is not None else m
        self.dag = catalog.dag(name)

    def task(self, input_bytes: dict | None = None) -> Task:
        """The model as a placement Task over the content-hash names of its modules."""
        key = {node: m.hash[:12] for node, m in self.modules.items()}
        inputs = {key[n]: tuple(s if s.startswith("input:") else key[s] for s in srcs) for n, srcs in self.dag.items()}
        modalities = {s[6:] for srcs in self.dag.values() for s in srcs if s.startswith("input:")}
        return Task(self.name, inputs, {m: (input_bytes or {}).get(m, 0.0) for m in modalities})

    def __call__(self, inputs: dict):
        """Run the DAG in order; inputs maps modality -> tensor. Returns the sink's output."""
        out = {}
        for node in self.task_order():
            args = [inputs[s[6:]] if s.startswith("input:") else out[s] for s in self.dag[node]]
            out[node] = self.modules[node](*args)
        return out[node]

    def task_order(self) -> list[str]:
        return Task(self.name, self.dag, {s[6:]: 0 for srcs in self.dag.values() for s in srcs
                                          if s.startswith("input:")}).order()


def example_inputs(size: str = "full", batch: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    shapes = FULL_INPUTS if size == "full" else TINY_INPUTS
    return {"image": torch.randn(batch, *shapes["image"], generator=g),
            "text": torch.randint(100, 1000, (batch, shapes["text"]), generator=g),
            "audio": torch.randn(batch, *shapes["audio"], generator=g)}
