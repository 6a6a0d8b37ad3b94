"""Generator interface, fake back end, factory, optional back ends, and the local SmolLM2 back end."""

from __future__ import annotations

import builtins
import sys

import pytest

from prismatic.config import GeneratorConfig
from prismatic.synth.generators import (
    FakeGenerator,
    LocalGenerator,
    OpenAICompatibleGenerator,
    make_generator,
    request_seed,
)
from prismatic.synth.types import Generation, GeneratorError


def test_request_seed_is_stable_and_distinct():
    assert request_seed(0, "p", 0) == request_seed(0, "p", 0)
    seeds = {request_seed(s, p, j) for s in (0, 1) for p in ("a", "b") for j in range(3)}
    assert len(seeds) == 12 and all(0 <= x < 2**31 for x in seeds)


def test_fake_generator_scripts():
    gen = FakeGenerator(["first", "second"])
    out = gen.generate(["a", "b"], n=3, temperature=1.0, top_p=0.9, max_tokens=8, seed=0)
    assert [[g.text for g in row] for row in out] == [["first", "second", "first"]] * 2
    gen = FakeGenerator({"q": ["x y z"]})
    assert gen.generate(["q"])[0][0] == Generation("x y z", 1, 3, "stop")
    with pytest.raises(GeneratorError, match="no scripted answer"):
        gen.generate(["unknown"])
    gen = FakeGenerator(lambda p, j, s: f"{p}-{j}-{s}")
    assert gen.generate(["p"], n=2, seed=4)[0][1].text == f"p-1-{request_seed(4, 'p', 1)}"
    # long outputs are cut at max_tokens (words) and marked
    g = FakeGenerator(["one two three four"]).generate(["p"], max_tokens=2)[0][0]
    assert (g.text, g.completion_tokens, g.finish_reason) == ("one two", 2, "length")
    # default script depends on the seed, deterministically
    d = FakeGenerator()
    assert d.generate(["p"], seed=1) == d.generate(["p"], seed=1) != d.generate(["p"], seed=2)
    assert d.calls == 3


def test_fake_failures_raise_or_mark():
    with pytest.raises(GeneratorError, match="scripted failure"):
        FakeGenerator(fail={"bad"}).generate(["ok", "bad"])
    out = FakeGenerator(fail=lambda p: p == "bad", skip_bad_requests=True).generate(["ok", "bad"], n=2)
    assert out[0][0].ok and [g.error for g in out[1]] == ["scripted failure"] * 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FakeGenerator().generate(["p"], **kwargs)


def test_prompts_must_be_a_list_of_strings():
    with pytest.raises(TypeError, match="list of strings"):
        FakeGenerator().generate("one prompt")
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        FakeGenerator().generate(["a", 2])
    assert FakeGenerator().generate([]) == []


def test_factory_builds_each_backend(monkeypatch):
    assert isinstance(make_generator(GeneratorConfig(backend="local")), LocalGenerator)  # lazy: nothing loaded yet
    gen = make_generator(GeneratorConfig(backend="openai", base_url="http://127.0.0.1:1/v1", model="m"))
    assert isinstance(gen, OpenAICompatibleGenerator) and gen.url == "http://127.0.0.1:1/v1/chat/completions"
    fake = make_generator(GeneratorConfig(backend="fake", skip_bad_requests=True), script=["s"])
    assert isinstance(fake, FakeGenerator) and fake.skip_bad_requests and fake.generate(["p"])[0][0].text == "s"


def _block_import(monkeypatch, name):
    real = builtins.__import__

    def fake_import(mod, *a, **kw):
        if mod == name or mod.startswith(name + "."):
            raise ImportError(f"No module named {name!r}")
        return real(mod, *a, **kw)

    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_missing_vllm_names_the_extra(monkeypatch):
    _block_import(monkeypatch, "vllm")
    with pytest.raises(ImportError, match=r"pip install 'prismatic\[vllm\]'"):
        make_generator(GeneratorConfig(backend="vllm"))


def test_missing_httpx_names_the_extra(monkeypatch):
    _block_import(monkeypatch, "httpx")
    with pytest.raises(ImportError, match=r"pip install 'prismatic\[http\]'"):
        make_generator(GeneratorConfig(backend="openai", base_url="http://x/v1"))


def test_generators_pickle_without_their_heavy_state():
    import pickle

    local = LocalGenerator(batch_size=2)
    local._lm = object()  # stands in for a loaded model: it must not travel
    clone = pickle.loads(pickle.dumps(local))
    assert clone._lm is None and clone.batch_size == 2
    remote = OpenAICompatibleGenerator("http://127.0.0.1:1/v1", "m", api_key="sk-secret-value-123")
    remote._get_client()
    clone = pickle.loads(pickle.dumps(remote))
    assert clone._client is None and clone.url == remote.url and clone._api_key.reveal() == "sk-secret-value-123"
    remote.close()


def test_local_cuda_requested_without_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(GeneratorError, match="no CUDA device"):
        LocalGenerator(device="cuda").generate(["p"])


@pytest.fixture
def one_thread():
    """One intra-op thread: modest CPU use, and no OpenMP spinning on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.model
def test_local_smollm2_generates_reproducibly(one_thread):
    gen = LocalGenerator("builtin:smollm2", batch_size=4)
    prompts = ["What is 2 + 3? Answer briefly.", "Name a color."]
    kw = dict(n=2, temperature=1.0, top_p=0.95, max_tokens=8, seed=11)
    first = gen.generate(prompts, **kw)
    assert all(g.text.strip() for row in first for g in row)
    assert all(1 <= g.completion_tokens <= 8 and g.prompt_tokens > 10 for row in first for g in row)
    assert all(g.finish_reason in ("stop", "length") for row in first for g in row)
    assert "<|im_start|>user\nName a color.<|im_end|>" in gen.render("Name a color.")
    # same seed -> same texts
    assert gen.generate(prompts, **kw) == first
    # a request's text does not depend on its batch neighbours (here: no left padding when alone)
    alone = gen.generate([prompts[1]], **kw)
    assert alone[0] == first[1]
    # another seed samples something else
    other = gen.generate([prompts[1]], **{**kw, "seed": 12})
    assert [g.text for g in other[0]] != [g.text for g in first[1]]
    # greedy decoding: every sample is the same whatever its seed
    greedy = gen.generate(prompts[:1], n=2, temperature=0.0, top_p=1.0, max_tokens=6, seed=0)
    assert greedy[0][0] == greedy[0][1]


def _nucleus_reference(row, top_p):
    """Top-p by a plain sort over the whole row: {token id: kept probability}."""
    order = sorted(range(len(row)), key=lambda i: -row[i])
    kept, mass = {}, 0.0
    for i in order:
        if mass >= top_p:
            break
        kept[i] = row[i]
        mass += row[i]
    return kept


@pytest.mark.parametrize("k", [3, 1024])
def test_nucleus_keeps_the_same_set_as_a_full_sort(k):
    import torch

    from prismatic.synth.generators import nucleus

    gen = torch.Generator().manual_seed(0)
    peaked = torch.softmax(torch.randn(4, 50, generator=gen) * 4, dim=-1)
    flat = torch.softmax(torch.randn(2, 50, generator=gen) * 0.1, dim=-1)  # top 3 hold far less than top_p
    for probs in (peaked, flat):
        for top_p in (0.5, 0.9, 0.95):
            vals, ids = nucleus(probs, top_p, k=k)
            for r in range(probs.shape[0]):
                got = {int(i): float(v) for v, i in zip(vals[r], ids[r], strict=True) if v > 0}
                want = _nucleus_reference(probs[r].tolist(), top_p)
                assert got.keys() == want.keys()
                assert all(abs(got[i] - want[i]) < 1e-6 for i in want)


def test_torch_threads_caps_then_restores():
    import torch

    from prismatic.synth.generators import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be"):
        LocalGenerator(threads=0)


def test_registered_secrets_are_masked_in_every_generation():
    from prismatic.synth.secrets import Secret, forget_secrets

    key = "sk-live-0123456789abcdef"
    try:
        Secret(key)  # registered, as resolve_api_key does with the configured key
        gen = FakeGenerator(
            lambda p, j, s: f"Problem: {p} ... Bearer {key}", fail=lambda p: p == "bad", skip_bad_requests=True
        )
        out = gen.generate(["ok", "bad"], n=2)
        assert [g.text for g in out[0]] == ["Problem: ok ... Bearer ***"] * 2
        assert all(key not in (g.text + (g.error or "")) for row in out for g in row)
    finally:
        forget_secrets()
