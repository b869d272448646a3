"""S2M3 modules: the suite's models with shared modules equal the monolithic models bitwise."""

import pytest
import torch

pytest.importorskip("transformers")

from prism_ops.s2m3.modules import Module, Registry, content_hash  # noqa: E402
from prism_ops.s2m3.suite import BUILTIN, MODELS, SUITE, TASKS, Model, example_inputs  # noqa: E402


@pytest.fixture(scope="module")
def shared():
    reg = Registry()
    return reg, {n: Model(n, "tiny", reg) for n in SUITE}


def test_suite_size():
    assert len(SUITE) >= 10
    assert "decoder" in {m.kind for m in Model("image-captioning", "tiny").modules.values()}
    assert {MODELS[m][0] for m in SUITE} == set(TASKS) and len(TASKS) >= 4


def test_sharing_never_changes_an_output(shared):
    _, models = shared
    x = example_inputs("tiny", batch=2)
    for name, model in models.items():
        alone = Model(name, "tiny")  # its own copy of every module
        assert torch.equal(model(x), alone(x)), name


def test_identical_modules_are_loaded_once(shared):
    reg, models = shared
    r = reg.memory_report()
    assert r["modules_requested"] == 32 and r["modules_loaded"] == 20
    assert r["bytes_shared"] == sum(m.nbytes for m in reg.by_hash.values()) < r["bytes_one_copy_per_model"]
    # The same encoder object serves every model that uses it; different heads stay apart.
    assert models["imagenet-vitb16"].modules["vit-b16"] is models["image-text-retrieval"].modules["vit-b16"]
    assert models["imagenet-vitb16"].modules["cls"] is not models["cifar100-vitb16"].modules["cls"]
    # Placement sees one node per shared module.
    t1, t2 = models["imagenet-vitb16"].task(), models["image-text-retrieval"].task()
    assert set(t1.inputs) & set(t2.inputs)


def test_hash_covers_weights_and_config():
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    assert content_hash("classifier", a) == content_hash("classifier", b)
    assert content_hash("classifier", a) != content_hash("projector", a)
    assert content_hash("classifier", a, {"x": 1}) != content_hash("classifier", a)
    with torch.no_grad():
        b.bias[0] += 1e-7
    assert content_hash("classifier", a) != content_hash("classifier", b)


def test_bad_names():
    with pytest.raises(ValueError, match="model must be one of"):
        Model("nope", "tiny")
    with pytest.raises(ValueError, match="kind must be one of"):
        Module("x", "speech", None)


CUSTOM = {"tagger": {"task": "audio tagging", "nodes": {
    "whisper-tiny": ["whisper-tiny", ["input:audio"]], "cls": ["classifier:384x50:seed7", ["whisper-tiny"]]}}}


def test_builtin_suite_is_immutable_and_custom_models_make_a_new_catalog():
    with pytest.raises(TypeError):
        MODELS["x"] = MODELS["imagenet-vitb16"]
    with pytest.raises(TypeError):
        MODELS["imagenet-vitb16"][1]["cls"] = ("classifier:768x2:seed1", ("vit-b16",))
    custom = BUILTIN.with_custom(CUSTOM)
    assert "tagger" in custom and "tagger" not in BUILTIN and "tagger" not in MODELS
    assert list(custom.models)[: len(SUITE)] == list(SUITE)
    assert BUILTIN.with_custom({"tagger": CUSTOM["tagger"]}).models == custom.models
    assert custom.with_custom(CUSTOM).models == custom.models  # the same model again: fine
    with pytest.raises(ValueError, match="model must be one of"):
        Model("tagger", "tiny")
    x = example_inputs("tiny", batch=2)
    assert Model("tagger", "tiny", catalog=custom)(x).shape == (2, 50)
    with pytest.raises(ValueError, match="name of a different model of the suite"):
        BUILTIN.with_custom({"imagenet-vitb16": CUSTOM["tagger"]})
