"""The export destination proposed by default lies beside what was opened, never inside it."""

import os

import torch

import builders
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.writing.destination import default_destination


def test_a_model_folder_exports_beside_itself(tmp_path):
    index = builders.hf_directory(tmp_path / "gpt2_hf")
    checkpoint = open_checkpoint(str(tmp_path / "gpt2_hf"))
    beside = str(tmp_path / "gpt2_hf-export.pth")
    assert default_destination(str(tmp_path / "gpt2_hf") + "/", checkpoint) == beside
    assert default_destination(index, open_checkpoint(index)) == beside  # the index: its folder


def test_a_file_exports_beside_itself(tmp_path):
    path = builders.save({"w": torch.zeros(2)}, tmp_path / "w.pt")
    assert default_destination(path, open_checkpoint(path)) == str(tmp_path / "w-export.pth")


def test_a_url_exports_to_the_home_folder(tmp_path):
    path = builders.save({"w": torch.zeros(2)}, tmp_path / "w.pt")
    url = "https://example.com/models/model.safetensors?download=1"
    expected = os.path.join(os.path.expanduser("~"), "model-export.pth")
    assert default_destination(url, open_checkpoint(path)) == expected
