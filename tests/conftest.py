"""Shared pytest fixtures: tiny seeded pipelines saved once per test session.

Building and saving takes about a second each; session scope shares one folder between
all tests, which must therefore treat it as read-only (copy it to modify it).
"""

from __future__ import annotations

import os

# Tests never download: any hub access fails at once instead of retrying for seconds.
# Set before anything imports huggingface_hub, which reads it at import.
os.environ["HF_HUB_OFFLINE"] = "1"

# The CPU kernels the lpo command pins (lpo.core.cpu_dispatch), set before anything imports
# torch: tests that compute here and the `lpo` subprocesses they start use the same ones.
from lpo.core.cpu_dispatch import pin as _pin_cpu_dispatch  # noqa: E402

_pin_cpu_dispatch()

# The composition root of the tests: the `world` model alias and the world's gap scorers
# are registered as the CLI registers them (real-mode code never imports the world).
from lpo.world import install as _install_world  # noqa: E402

_install_world()

from pathlib import Path

import pytest

from tiny_models import tiny_sd15_pipeline, tiny_sdxl_pipeline


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1.5-style diffusers pipeline folder (see tests/tiny_models.py)."""
    return tiny_sd15_pipeline(tmp_path_factory.mktemp("tiny-sd15"))


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL-style diffusers pipeline folder (see tests/tiny_models.py)."""
    return tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread for the whole suite.

    Tiny models gain nothing from more; on a busy 2-core machine OpenMP spin-waiting made
    them 4-5x slower (measured), and float results depend on the thread count, so one
    count for every test keeps determinism checks meaningful.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world pipeline from the `tiny` pretrain preset (seconds; samples are blobs)."""
    from lpo.world.pretrain import pretrain_preset, pretrain_world

    return pretrain_world(pretrain_preset("tiny"), tmp_path_factory.mktemp("world") / "tiny").folder


@pytest.fixture(scope="session")
def tiny_flow_world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flow-matching world pipeline from the `flow-tiny` pretrain preset on the quick world's VAE (seconds)."""
    from lpo.world.pretrain import pretrain_preset, resolve_world_alias
    from lpo.world.pretrain_flow import pretrain_world_flow

    return pretrain_world_flow(pretrain_preset("flow-tiny"), resolve_world_alias("world:quick"),
                               tmp_path_factory.mktemp("world-flow") / "flow-tiny").folder


@pytest.fixture(autouse=True)
def _isolated_lpo_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read or write the user's cache."""
    monkeypatch.setenv("LPO_HOME", str(tmp_path_factory.getbasetemp() / "lpo-home"))


@pytest.fixture(scope="module")
def sd15(tiny_sd15_dir: Path):
    """The tiny SD1.5 folder loaded through lpo.models.components.load_components."""
    from lpo.models.components import load_components

    return load_components(tiny_sd15_dir)


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir: Path):
    """The tiny SDXL folder loaded through lpo.models.components.load_components."""
    from lpo.models.components import load_components

    return load_components(tiny_sdxl_dir)


@pytest.fixture(params=["sd15", "sdxl"])
def components(request):
    """Each tiny real-mode pipeline in turn."""
    return request.getfixturevalue(request.param)
