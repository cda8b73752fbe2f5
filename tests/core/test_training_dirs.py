"""Training folders (HF Trainer checkpoint-N, accelerate save_state, PEFT adapters, model folders
with config.json) opened as one checkpoint: every tensor of every file against torch.load /
safetensors of that file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import builders
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.values.torch_bridge import read_tensor


def reference(path: str) -> dict:
    """{key: tensor or ndarray} of one file, as its own loader returns it."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    numpy_globals = [
        np._core.multiarray._reconstruct,
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]
    with torch.serialization.safe_globals(numpy_globals):
        return flatten(torch.load(path, weights_only=True, map_location="cpu"))


def flatten(obj, prefix="") -> dict:
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return {prefix: obj}
    items = (
        obj.items()
        if isinstance(obj, dict)
        else enumerate(obj)
        if isinstance(obj, (list, tuple))
        else ()
    )
    out = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def bits(tensor: torch.Tensor) -> bytes:
    return tensor.detach().contiguous().flatten().view(torch.uint8).numpy().tobytes()


def assert_parts_match(checkpoint, folder, parts):
    """Every tensor of each part file, keyed `file.key`, bit for bit as its loader gives it."""
    listed = {key: info for key, info, _ in checkpoint.tensors()}
    for part in parts:
        expected = reference(os.path.join(folder, part))
        mine = {k[len(part) + 1 :]: v for k, v in listed.items() if k.startswith(part + ".")}
        tensors = {k: v for k, v in expected.items() if isinstance(v, torch.Tensor)}
        assert set(tensors) <= set(mine) <= set(expected), part
        for key, value in tensors.items():
            info = mine[key]
            assert (info.shape, info.dtype) == (
                tuple(value.shape),
                str(value.dtype).removeprefix("torch."),
            ), (part, key)
            assert info.nbytes == value.numel() * value.element_size(), (part, key)
            assert bits(read_tensor(info)) == bits(value), (part, key)


def file_sizes(folder, names):
    return sum(os.path.getsize(os.path.join(folder, n)) for n in names)


# --- folders made by the libraries themselves -----------------------------------------------


@pytest.fixture(scope="module")
def trainer_checkpoint(tmp_path_factory):
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("trainer")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8)
    )
    data = [
        {"input_ids": torch.randint(0, 16, (8,)), "labels": torch.randint(0, 16, (8,))}
        for _ in range(4)
    ]
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=2,
        save_steps=2,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        disable_tqdm=True,
    )
    transformers.Trainer(model=model, args=args, train_dataset=data).train()
    return str(out / "checkpoint-2")


def test_trainer_checkpoint_is_one_checkpoint(trainer_checkpoint):
    folder = trainer_checkpoint
    checkpoint = open_checkpoint(folder)
    parts = [
        "model.safetensors",
        "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt",
        "trainer_state.json",
        "training_args.bin",
    ]
    assert checkpoint.format == "hf-trainer" and checkpoint.path == folder
    assert [c.name for c in checkpoint.root.children] == parts
    assert checkpoint.file_bytes == file_sizes(folder, parts)
    assert_parts_match(
        checkpoint, folder, ["model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt"]
    )
    # the optimizer and the model it trains are siblings under the root
    assert [o.key for o in checkpoint.optimizers] == ["optimizer.pt"]
    assert checkpoint.find("optimizer.pt").kind == "optimizer"
    scalars = checkpoint.scalars()
    with open(os.path.join(folder, "trainer_state.json")) as f:
        state = json.load(f)
    assert scalars["trainer_state.json.global_step"] == state["global_step"] == 2
    assert scalars["trainer_state.json.epoch"] == state["epoch"]
    assert checkpoint.find("trainer_state.json.best_metric").value is None
    assert scalars["trainer_state.json.log_history.entries"] == len(state["log_history"])
    assert (
        scalars["trainer_state.json.log_history.last_train_log.loss"]
        == state["log_history"][-1]["loss"]
    )
    # training_args.bin: a TrainingArguments dataclass decoded as data, never run
    assert checkpoint.find("training_args.bin").type_name.endswith("TrainingArguments")
    assert scalars["training_args.bin.max_steps"] == 2
    assert "transformers.training_args.TrainingArguments" in checkpoint.unsafe_globals
    assert any(w.startswith("training_args.bin: ") for w in checkpoint.warnings)
    assert checkpoint.metadata["config.model_type"] == "gpt2"


@pytest.fixture(scope="module")
def accelerate_states(tmp_path_factory):
    accelerate = pytest.importorskip("accelerate")
    out = tmp_path_factory.mktemp("accelerate")
    torch.manual_seed(0)
    acc = accelerate.Accelerator(cpu=True)
    first = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2)
    )
    second = torch.nn.Linear(2, 2)
    adam = torch.optim.AdamW(first.parameters())
    sgd = torch.optim.SGD(second.parameters(), lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.StepLR(adam, 2)
    first, second, adam, sgd, schedule = acc.prepare(first, second, adam, sgd, schedule)

    class Counter:
        n = 3

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    acc.register_for_checkpointing(Counter())
    second(first(torch.randn(5, 4))).sum().backward()
    adam.step(), sgd.step(), schedule.step()
    acc.save_state(str(out / "safetensors"))
    acc.save_state(str(out / "bin"), safe_serialization=False)
    return str(out)


@pytest.mark.parametrize(
    "flavour, models",
    [
        ("safetensors", ["model.safetensors", "model_1.safetensors"]),
        ("bin", ["pytorch_model.bin", "pytorch_model_1.bin"]),
    ],
)
def test_accelerate_save_state(accelerate_states, flavour, models):
    folder = os.path.join(accelerate_states, flavour)
    checkpoint = open_checkpoint(folder)
    state = [
        "custom_checkpoint_0.pkl",
        "optimizer.bin",
        "optimizer_1.bin",
        "random_states_0.pkl",
        "scheduler.bin",
    ]
    assert checkpoint.format == "accelerate"
    assert [c.name for c in checkpoint.root.children] == models + state
    assert checkpoint.file_bytes == file_sizes(folder, models + state)
    assert_parts_match(checkpoint, folder, models + state)
    assert sorted(o.key for o in checkpoint.optimizers) == ["optimizer.bin", "optimizer_1.bin"]
    assert checkpoint.scalars()["custom_checkpoint_0.pkl.n"] == 3
    assert checkpoint.scalars()["scheduler.bin.last_epoch"] == 1


@pytest.mark.parametrize("safe", [True, False])
def test_peft_adapter_folder(tmp_path, safe):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    base = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8)
    )
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["c_attn"]))
    model.save_pretrained(str(tmp_path), safe_serialization=safe)
    weights = "adapter_model.safetensors" if safe else "adapter_model.bin"
    checkpoint = open_checkpoint(str(tmp_path))
    # one weights file: the adapter's own tensor names, its config as metadata
    expected = reference(str(tmp_path / weights))
    listed = {key: info for key, info, _ in checkpoint.tensors()}
    assert set(listed) == set(expected)
    for key, value in expected.items():
        assert bits(read_tensor(listed[key])) == bits(value)
    assert checkpoint.metadata["adapter_config.peft_type"] == "LORA"
    assert checkpoint.metadata["adapter_config.r"] == 2
    assert checkpoint.metadata["adapter_config.target_modules"] == "c_attn"


# --- folders laid out by hand (the same file names), when the libraries are absent -----------


def test_single_weights_file_shows_its_config(tmp_path):
    builders.safetensors_file(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "tiny",
                "hidden_size": 4,
                "architectures": ["TinyModel"],
                "nested": {"ignored": 1},
            }
        )
    )
    checkpoint = open_checkpoint(str(tmp_path))
    assert checkpoint.format == "safetensors"
    assert {k for k, _, _ in checkpoint.tensors()} == {
        "encoder.weight",
        "encoder.bias",
        "head.weight",
    }
    assert checkpoint.metadata["config.model_type"] == "tiny"
    assert checkpoint.metadata["config.architectures"] == "TinyModel"
    assert not any("nested" in k for k in checkpoint.metadata)
    assert "config.model_type" not in open_checkpoint(str(tmp_path / "model.safetensors")).metadata


def hand_made_trainer_folder(folder, sharded=False):
    """The files HF Trainer writes, made with torch itself."""
    model, optimizer = builders.trained(torch.optim.AdamW)
    if sharded:
        builders.hf_directory(folder)
    else:
        os.makedirs(folder, exist_ok=True)
        builders.safetensors_file(
            os.path.join(folder, "model.safetensors"),
            {k: v.contiguous() for k, v in model.state_dict().items()},
        )
    torch.save(optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    torch.save(scheduler.state_dict(), os.path.join(folder, "scheduler.pt"))
    torch.save({"cpu": torch.get_rng_state()}, os.path.join(folder, "rng_state_1.pth"))
    torch.save(torch.amp.GradScaler("cpu").state_dict(), os.path.join(folder, "scaler.pt"))
    history = [{"loss": 2.5 - s / 10, "step": s, "epoch": s / 4} for s in range(1, 9)]
    history.insert(4, {"eval_loss": 2.0, "eval_runtime": 0.1, "step": 4, "epoch": 1.0})
    history.append({"train_runtime": 1.5, "train_loss": 2.2, "step": 8, "epoch": 2.0})
    with open(os.path.join(folder, "trainer_state.json"), "w") as f:
        json.dump(
            {
                "global_step": 8,
                "epoch": 2.0,
                "best_metric": 2.0,
                "best_model_checkpoint": "out/checkpoint-4",
                "log_history": history,
            },
            f,
        )
    return str(folder)


def test_hand_made_trainer_folder(tmp_path):
    folder = hand_made_trainer_folder(tmp_path / "checkpoint-8")
    checkpoint = open_checkpoint(folder)
    parts = [
        "model.safetensors",
        "optimizer.pt",
        "rng_state_1.pth",
        "scaler.pt",
        "scheduler.pt",
        "trainer_state.json",
    ]
    assert checkpoint.format == "hf-trainer"
    assert [c.name for c in checkpoint.root.children] == parts
    assert_parts_match(checkpoint, folder, parts[:-1])
    scalars = checkpoint.scalars()
    assert scalars["trainer_state.json.best_metric"] == 2.0
    assert scalars["trainer_state.json.log_history.entries"] == 10
    assert scalars["trainer_state.json.log_history.first_step"] == 1
    assert scalars["trainer_state.json.log_history.last_step"] == 8
    assert scalars["trainer_state.json.log_history.min_loss"] == pytest.approx(1.7)
    assert scalars["trainer_state.json.log_history.last_eval_log.eval_loss"] == 2.0
    assert scalars["trainer_state.json.log_history.train_summary.train_runtime"] == 1.5
    assert not any(".log_history.5" in k for k in scalars)  # summarised, not listed
    assert [o.key for o in checkpoint.optimizers] == ["optimizer.pt"]


def test_sharded_model_inside_a_training_folder(tmp_path):
    folder = hand_made_trainer_folder(tmp_path / "checkpoint-8", sharded=True)
    checkpoint = open_checkpoint(folder)
    names = [c.name for c in checkpoint.root.children]
    assert names[0] == "model.safetensors.index.json"
    assert not any(n.startswith("model-0000") for n in names)
    assert {k for k, _, _ in checkpoint.tensors() if k.startswith(names[0])} == {
        f"{names[0]}.{k}"
        for k in ("embed.weight", "layers.0.weight", "layers.1.weight", "lm_head.weight")
    }
    assert checkpoint.metadata["config.model_type"] == "tiny"


def test_an_unreadable_part_is_a_warning_and_the_rest_is_shown(tmp_path):
    folder = hand_made_trainer_folder(tmp_path / "checkpoint-8")
    with open(os.path.join(folder, "scheduler.pt"), "wb") as f:
        f.write(b"PK\x03\x04 not really a zip")
    checkpoint = open_checkpoint(folder)
    assert checkpoint.find("scheduler.pt").type_name == "unreadable"
    assert any(w.startswith("scheduler.pt: cannot be read") for w in checkpoint.warnings)
    assert checkpoint.find("model.safetensors") is not None


def test_a_folder_of_unreadable_parts_is_one_line_error(tmp_path):
    (tmp_path / "optimizer.pt").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="optimizer.pt") as info:
        open_checkpoint(str(tmp_path))
    assert "\n" not in str(info.value)


def test_hostile_part_reports_its_globals_with_its_file_name(tmp_path):
    folder = hand_made_trainer_folder(tmp_path / "checkpoint-8")
    torch.save(
        {"args": builders.Call(os.system, "echo owned")}, os.path.join(folder, "training_args.bin")
    )
    checkpoint = open_checkpoint(folder)
    assert any(g.endswith(".system") for g in checkpoint.unsafe_globals)
    assert any(
        w.startswith("training_args.bin: refers to") and "system" in w for w in checkpoint.warnings
    )


def test_verify_reads_every_part(tmp_path):
    from ckpt_viewer.core.analysis.verify import verify

    def run(path):
        steps = verify(path)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    folder = hand_made_trainer_folder(tmp_path / "checkpoint-8")
    report = run(folder)
    assert report.ok and "5 files" in report.notes
    from ckpt_viewer.core.listing.readers.zip_directory import data_offset, read_directory

    path = os.path.join(folder, "optimizer.pt")
    record = next(m for m in read_directory(path) if m.name.endswith("/data/1"))
    data = bytearray(open(path, "rb").read())
    data[data_offset(record)] ^= 1
    open(path, "wb").write(bytes(data))
    report = run(folder)
    assert not report.ok and report.problem.startswith("optimizer.pt: ")


@pytest.mark.parametrize(
    "name",
    [
        "training_args.bin",
        "optimizer.pt",
        "rng_state_1.pth",
        "scheduler.pt",
        "pytorch_model-00002-of-00002.bin",
    ],
)
def test_every_file_the_trainer_unpickles_is_triaged_and_never_run(tmp_path, name):
    """A payload in any file of a training folder, or in a .bin shard of its model, is `code`
    named by its file, in globals, inspect and verify; the canary never appears."""
    import subprocess
    import sys

    from ckpt_viewer.core.listing.globals import triage

    folder = tmp_path / "checkpoint-8"
    hand_made_trainer_folder(folder, sharded=name.endswith(".bin") and "model" in name)
    if "model" in name:
        builders.hf_directory(folder, shard_format="bin")
        os.remove(folder / "model.safetensors.index.json")
    canary = tmp_path / "CANARY"
    target = folder / name
    content = torch.load(target, weights_only=True) if target.exists() else {}
    torch.save({**content, "evil": builders.Call(os.system, f"touch {canary}")}, target)
    checkpoint = open_checkpoint(str(folder))
    code = [u for u in triage(checkpoint) if u.category == "code"]
    assert code and any(name in key for u in code for key in u.keys), [
        (u.name, u.keys) for u in code
    ]
    assert "posix.system" in checkpoint.unsafe_globals
    for command in (["inspect", "--json"], ["globals"], ["verify"]):
        result = subprocess.run(
            [sys.executable, "-m", "ckpt_viewer", *command, str(folder)],
            capture_output=True,
            text=True,
        )
        assert "posix.system" in result.stdout, (command, result.stdout, result.stderr)
    assert not canary.exists()


def test_a_part_we_cannot_read_still_names_its_payload(tmp_path):
    """torch.load runs a payload before it finds a record missing: the part is unreadable here,
    and its pickle is still walked for globals."""
    import zipfile

    from ckpt_viewer.core.listing.globals import triage

    folder = hand_made_trainer_folder(tmp_path / "checkpoint-8")
    canary = tmp_path / "CANARY"
    source = tmp_path / "full.pt"
    torch.save({"evil": builders.Call(os.system, f"touch {canary}"), "w": torch.ones(2)}, source)
    with (
        zipfile.ZipFile(source) as zin,
        zipfile.ZipFile(os.path.join(folder, "scheduler.pt"), "w") as zout,
    ):
        for info in zin.infolist():
            if not info.filename.endswith("/data/0"):
                zout.writestr(info, zin.read(info))
    checkpoint = open_checkpoint(folder)
    assert checkpoint.find("scheduler.pt").type_name == "unreadable"
    code = [u for u in triage(checkpoint) if u.category == "code"]
    assert [u.name for u in code] == ["posix.system"] and "scheduler.pt" in code[0].keys
    assert not canary.exists()
