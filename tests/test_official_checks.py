"""The official import's one-line refusals, without torch: hand-made Hub folders (numpy
safetensors) that are wrong in one way each. Numerical parity: test_official_import.py."""

import builtins
import json

import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from phrase_jax import errors
from phrase_jax.interop import official


def hub_folder(path, tensors, config=None):
    path.mkdir()
    safetensors_numpy.save_file(
        {k: np.zeros(shape, np.float32) for k, shape in tensors.items()},
        str(path / official.WEIGHTS),
    )
    if config is not None:
        (path / official.CONFIG).write_text(json.dumps(config))
    return str(path)


LENGTH = {"length_encoder.length_embedding.weight": (128, 128), "ldm.proj_in.weight": (512, 64)}


@pytest.mark.parametrize(
    "tensors, config, message",
    [
        ({"model.t5.x": (1,), **LENGTH}, None, "unexpected tensors"),
        (LENGTH, {"length_control": False}, "length_control=False but"),
        ({"ldm.proj_in.weight": (512, 64)}, {"length_control": True}, "lacks its encoder"),
        (LENGTH, {"length_bucket_size": 8}, "length_bucket_size=8"),
        (LENGTH, {}, "missing"),  # the backbone is incomplete
    ],
)
def test_ldm_folders_that_do_not_fit_are_one_line_errors(tmp_path, tensors, config, message):
    folder = hub_folder(tmp_path / "ldm", tensors, config)
    with pytest.raises(errors.UserError, match=message) as caught:
        official.ldm_from_hub(folder)
    assert "\n" not in str(caught.value)


def test_vae_folder_without_t5_tensors(tmp_path):
    folder = hub_folder(tmp_path / "vae", {"model.proj.weight": (128, 2048)})
    with pytest.raises(errors.UserError, match="no `model.t5.\\*` T5 tensors"):
        official.vae_from_hub(folder)
    folder = hub_folder(
        tmp_path / "vae2",
        {"model.t5.shared.weight": (1000, 512),
         "model.t5.encoder.block.0.layer.0.SelfAttention.q.weight": (384, 512)},
    )  # fmt: skip
    with pytest.raises(errors.UserError, match="lacks the tensor .*relative_attention_bias"):
        official.vae_from_hub(folder)
    with pytest.raises(errors.UserError, match="model.safetensors not found"):
        official.read_hub_folder(str(tmp_path))


def test_sources_that_are_neither_folders_nor_downloadable(tmp_path, monkeypatch):
    with pytest.raises(errors.UserError, match="no such folder"):
        official.resolve_source(str(tmp_path / "missing" / "deeper"))
    real_import = builtins.__import__

    def no_hub(name, *args, **kwargs):
        if name == "huggingface_hub":
            raise ImportError("no huggingface_hub")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(errors.UserError, match="huggingface-cli download LongshenOu/phrase-vae"):
        official.resolve_source("LongshenOu/phrase-vae")
