"""Shared fixtures: tiny random models (built once per session: the Llama the method tests use,
and every decoder family of `tokenleap.models.tiny.FAMILIES`) and the real default model."""

from __future__ import annotations

import pytest
import torch

import tokenleap
from tokenleap.models.tiny import make_tiny, make_tiny_llama

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Make (once) a tiny model checkpoint dir for the given settings; returns its path."""
    made: dict[tuple, str] = {}

    def make(**kwargs) -> str:
        key = tuple(sorted(kwargs.items()))
        if key not in made:
            made[key] = str(make_tiny_llama(tmp_path_factory.mktemp("tiny"), **kwargs))
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """Load a tiny model (fp32, lean runner by default), cached per settings."""
    loaded: dict[tuple, tokenleap.Model] = {}

    def load(runner: str = "auto", **kwargs) -> tokenleap.Model:
        key = (runner,) + tuple(sorted(kwargs.items()))
        if key not in loaded:
            loaded[key] = tokenleap.load_model(tiny_dir(**kwargs), dtype="fp32", runner=runner)
        return loaded[key]

    return load


@pytest.fixture(scope="session")
def tiny_family_dir(tmp_path_factory):
    """Make (once) a tiny checkpoint dir of a family (`make_tiny`) for the given settings."""
    made: dict[str, str] = {}

    def make(family: str, **settings) -> str:
        key = repr((family, sorted(settings.items())))
        if key not in made:
            made[key] = str(make_tiny(tmp_path_factory.mktemp(f"tiny-{family}"), family, **settings))
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_family(tiny_family_dir):
    """Load a tiny model of a family (fp32; runner auto, lean or hf), cached per settings."""
    loaded: dict[str, tokenleap.Model] = {}

    def load(family: str, runner: str = "auto", **settings) -> tokenleap.Model:
        key = repr((family, runner, sorted(settings.items())))
        if key not in loaded:
            loaded[key] = tokenleap.load_model(tiny_family_dir(family, **settings), dtype="fp32", runner=runner)
        return loaded[key]

    return load


@pytest.fixture(scope="session")
def real_fp32():
    """The embedded default model (SmolLM2-135M-Instruct) in fp32, for exactness tests."""
    return tokenleap.load_model(tokenleap.DEFAULT_MODEL, dtype="fp32")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (opt in with pytest.mark.usefixtures("one_thread")): tiny
    models gain nothing from threads, and on a busy machine two threads per tiny op wait on
    each other far longer than they compute."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
