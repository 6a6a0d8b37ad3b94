"""Request cache and CachedGenerator (prismatic.synth.cache)."""

from __future__ import annotations

import multiprocessing
import pickle

import pytest

from prismatic.config import GeneratorConfig
from prismatic.synth.cache import (
    CachedGenerator,
    MemoryRequestCache,
    SQLiteRequestCache,
    request_key,
)
from prismatic.synth.generators import FakeGenerator, make_generator
from prismatic.synth.types import Generation


def script(prompt: str, j: int, seed: int) -> str:
    return f"answer {j} to {prompt} ({seed})"


def test_request_key_covers_every_field():
    base = dict(backend="local", model="m", prompt="p", n=3, temperature=0.75, top_p=0.95, max_tokens=64, seed=0)
    k = request_key(**base)
    assert len(k) == 64 and k == request_key(**base)
    for field, other in [
        ("backend", "openai-chat"),
        ("model", "m2"),
        ("prompt", "p "),
        ("n", 2),
        ("temperature", 1.0),
        ("top_p", 1.0),
        ("max_tokens", 65),
        ("seed", 1),
    ]:
        assert request_key(**{**base, field: other}) != k, field
    assert request_key(**{**base, "temperature": 1}) == request_key(**{**base, "temperature": 1.0})


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_cache_hit_avoids_a_second_call(tmp_path, kind):
    store = MemoryRequestCache() if kind == "memory" else SQLiteRequestCache(tmp_path / "cache")
    fake = FakeGenerator(script)
    gen = CachedGenerator(fake, store)
    first = gen.generate(["a", "b"], n=2, temperature=1.0, top_p=0.95, max_tokens=16, seed=7)
    assert fake.calls == 1 and fake.prompts_served == ["a", "b"]
    again = gen.generate(["b", "a"], n=2, temperature=1.0, top_p=0.95, max_tokens=16, seed=7)
    assert fake.calls == 1  # nothing new reached the generator
    assert again == [first[1], first[0]]
    assert (gen.hits, gen.misses) == (2, 2)
    # a partly new batch sends only the misses
    mixed = gen.generate(["a", "c", "c"], n=2, temperature=1.0, top_p=0.95, max_tokens=16, seed=7)
    assert fake.calls == 2 and fake.prompts_served[-1:] == ["c"]
    assert mixed[0] == first[0] and mixed[1] == mixed[2]
    # any change of the request misses
    gen.generate(["a"], n=2, temperature=1.0, top_p=0.95, max_tokens=16, seed=8)
    assert fake.calls == 3
    assert len(store) == 4


def test_sqlite_cache_survives_a_restart(tmp_path):
    folder = tmp_path / "c"
    gen = CachedGenerator(FakeGenerator(script), SQLiteRequestCache(folder))
    out = gen.generate(["x"], n=3, temperature=0.7, top_p=1.0, max_tokens=8, seed=1)
    gen.cache.close()
    fresh = FakeGenerator(script)
    again = CachedGenerator(fresh, SQLiteRequestCache(folder)).generate(
        ["x"], n=3, temperature=0.7, top_p=1.0, max_tokens=8, seed=1
    )
    assert again == out and fresh.calls == 0
    assert isinstance(again[0][0], Generation)


def test_errors_are_not_cached(tmp_path):
    fake = FakeGenerator(script, fail={"bad"}, skip_bad_requests=True)
    gen = CachedGenerator(fake, MemoryRequestCache())
    out = gen.generate(["ok", "bad"], n=2, temperature=1.0, top_p=1.0, max_tokens=8, seed=0)
    assert out[1][0].error and not out[0][0].error
    fake.fail = None
    out2 = gen.generate(["ok", "bad"], n=2, temperature=1.0, top_p=1.0, max_tokens=8, seed=0)
    assert fake.prompts_served == ["ok", "bad", "bad"]  # the failed prompt is asked again, "ok" is not
    assert out2[1][0].ok


def _write_from_process(folder: str, i: int) -> None:
    cache = SQLiteRequestCache(folder)
    cache.put(f"key{i}", [Generation(f"text {i}", 1, 2)])


def test_sqlite_cache_is_shared_by_processes_and_picklable(tmp_path):
    folder = str(tmp_path / "shared")
    cache = SQLiteRequestCache(folder)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_from_process, args=(folder, i)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert cache.get("key0")[0].text == "text 0" and cache.get("key1")[0].text == "text 1"
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.get("key1")[0].completion_tokens == 2


def test_factory_wraps_with_cache_only_when_enabled():
    store = MemoryRequestCache()
    gen = make_generator(GeneratorConfig(backend="fake"), store)
    assert isinstance(gen, CachedGenerator) and gen.params()["cache"] == "MemoryRequestCache"
    assert isinstance(make_generator(GeneratorConfig(backend="fake", cache=False), store), FakeGenerator)
    assert isinstance(make_generator(GeneratorConfig(backend="fake")), FakeGenerator)


def test_output_affecting_settings_are_part_of_the_key():
    class SystemPromptFake(FakeGenerator):
        def __init__(self, system_prompt):
            super().__init__(lambda p, j, s: f"{system_prompt}: {p}")
            self.system_prompt = system_prompt

        def fingerprint(self):
            return self.system_prompt

    store = MemoryRequestCache()
    a = CachedGenerator(SystemPromptFake("terse"), store).generate(["q"])
    b_inner = SystemPromptFake("verbose")
    b = CachedGenerator(b_inner, store).generate(["q"])
    assert b_inner.calls == 1 and a[0][0].text == "terse: q" and b[0][0].text == "verbose: q"
    k = dict(backend="b", model="m", prompt="p", n=1, temperature=1.0, top_p=1.0, max_tokens=1, seed=0)
    assert request_key(**k, variant="") == request_key(**k) != request_key(**k, variant="x")
