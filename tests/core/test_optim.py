"""Optimizer parameter names: given only when certain (param_names, or one provable mapping
onto the model in the same file), ids otherwise; and fast on hostile files."""

import pytest
import torch

import builders
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.listing.optim import NAMES_FROM_PARAM_NAMES
from ckpt_viewer.core.listing.report import text_report
from ckpt_viewer.core.listing.summary import inspect_dict

nn = torch.nn


def step(model, optimizer, inputs=4):
    model(torch.randn(5, inputs)).sum().backward()
    optimizer.step()


def expected_names(model, optimizer, prefix=""):
    """What torch's state_dict ids stand for: the params of each group, in order."""
    name_of = {id(p): prefix + n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]


def names(info):
    return [p for g in info.param_groups for p in g["params"]]


def only_optimizer(path, key=None):
    optimizers = open_checkpoint(path).optimizers
    if key is None:
        (info,) = optimizers
        return info
    return next(o for o in optimizers if o.key == key)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (torch.optim.Adam, {}),
        (torch.optim.AdamW, {"weight_decay": 0.1}),
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
        (torch.optim.RMSprop, {"centered": True}),
    ],
)
def test_param_names_from_named_parameters(tmp_path, cls, kwargs):
    model = builders.tiny_model()
    optimizer = cls(model.named_parameters(), **kwargs)
    step(model, optimizer)
    path = builders.save({"optimizer": optimizer.state_dict()}, tmp_path / "o.pt")
    info = only_optimizer(path)
    assert info.names_source == NAMES_FROM_PARAM_NAMES
    assert names(info) == expected_names(model, optimizer)
    assert info.type == cls.__name__
    assert info.state["3.weight"].note == "state of 3.weight"


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (torch.optim.Adam, {}),
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
        (torch.optim.RMSprop, {"momentum": 0.9}),
    ],
)
def test_plain_parameters_matched_to_the_model_in_the_file(tmp_path, cls, kwargs):
    model = builders.tiny_model()  # BatchNorm: running_mean/var buffers skipped
    optimizer = cls(model.parameters(), **kwargs)
    step(model, optimizer)
    path = builders.save(
        {"epoch": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict()},
        tmp_path / "c.pt",
    )
    info = only_optimizer(path)
    assert names(info) == expected_names(model, optimizer)
    assert "model parameters at model" in info.names_source
    assert "parameter names: matched to the model parameters at model" in "\n".join(
        text_report(open_checkpoint(path))
    )


@pytest.mark.parametrize("filename", ["optimizer.pt", "optimizer.bin"])
def test_bare_optimizer_file_keeps_ids(tmp_path, filename):
    """HF Trainer's optimizer.pt, accelerate's optimizer.bin: no model, so no names — never
    the optimizer's own state entries ("1.exp_avg"...)."""
    model = builders.tiny_model()
    optimizer = torch.optim.Adam(model.parameters())
    step(model, optimizer)
    path = builders.save(optimizer.state_dict(), tmp_path / filename)
    checkpoint = open_checkpoint(path)
    (info,) = checkpoint.optimizers
    assert info.key == "" and info.names_source == ""
    assert names(info) == [0, 1, 2, 3, 4, 5]
    assert all(not s.note for s in info.state.values())
    assert "parameter names: not provable from this file; ids shown" in "\n".join(
        text_report(checkpoint)
    )


def gan(same_shapes=False):
    torch.manual_seed(0)
    width = 4 if same_shapes else 8
    generator = nn.Sequential(nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, 4))
    discriminator = nn.Sequential(nn.Linear(4, 16), nn.LeakyReLU(), nn.Linear(16, width))
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4)
    opt_d = torch.optim.SGD(discriminator.parameters(), lr=0.1, momentum=0.5)
    step(generator, opt_g, width)
    step(discriminator, opt_d, 4)
    return generator, discriminator, opt_g, opt_d


def lightning_state_dict(*modules):
    return {f"{name}.{k}": v for name, module in modules for k, v in module.state_dict().items()}


@pytest.mark.parametrize("discriminator_first", [False, True])
def test_lightning_gan_each_optimizer_gets_its_own_module(tmp_path, discriminator_first):
    generator, discriminator, opt_g, opt_d = gan()
    modules = [("generator", generator), ("discriminator", discriminator)]
    if discriminator_first:
        modules.reverse()
    path = builders.save(
        {
            "epoch": 3,
            "state_dict": lightning_state_dict(*modules),
            "optimizer_states": [opt_g.state_dict(), opt_d.state_dict()],
        },
        tmp_path / "gan.ckpt",
    )
    g_info = only_optimizer(path, "optimizer_states.0")
    d_info = only_optimizer(path, "optimizer_states.1")
    assert names(g_info) == expected_names(generator, opt_g, "generator.")
    assert names(d_info) == expected_names(discriminator, opt_d, "discriminator.")
    assert d_info.state["discriminator.2.weight"].note == "state of discriminator.2.weight"


def test_gan_with_interchangeable_modules_keeps_ids(tmp_path):
    """Generator and discriminator with the same shapes: both orders fit, so neither is named."""
    generator, discriminator, opt_g, opt_d = gan(same_shapes=True)
    discriminator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 4))
    opt_d = torch.optim.Adam(discriminator.parameters())
    step(discriminator, opt_d)
    path = builders.save(
        {
            "state_dict": lightning_state_dict(
                ("generator", generator), ("discriminator", discriminator)
            ),
            "optimizer_states": [opt_g.state_dict(), opt_d.state_dict()],
        },
        tmp_path / "gan.ckpt",
    )
    for info in open_checkpoint(path).optimizers:
        assert names(info) == [0, 1, 2, 3] and info.names_source == ""


def test_gan_without_the_discriminator_weights_keeps_ids(tmp_path):
    """Only the generator is saved: the two optimizers together do not fit it, and the
    discriminator's optimizer must never get the generator's names."""
    generator, _, opt_g, opt_d = gan()
    path = builders.save(
        {
            "state_dict": lightning_state_dict(("generator", generator)),
            "optimizer_states": [opt_g.state_dict(), opt_d.state_dict()],
        },
        tmp_path / "gan.ckpt",
    )
    for info in open_checkpoint(path).optimizers:
        assert names(info) == [0, 1, 2, 3] and info.names_source == ""


def test_frozen_parameters_without_state(tmp_path):
    model = builders.tiny_model()
    model[0].weight.requires_grad_(False)  # in the optimizer, never gets state
    model[1].bias.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters())
    step(model, optimizer)
    state = optimizer.state_dict()
    assert sorted(state["state"]) == [1, 2, 4, 5]
    path = builders.save({"model": model.state_dict(), "optimizer": state}, tmp_path / "f.pt")
    info = only_optimizer(path)
    assert names(info) == expected_names(model, optimizer)
    assert set(info.state) == {"0.bias", "1.weight", "3.weight", "3.bias"}


def test_frozen_parameters_left_out_of_the_optimizer(tmp_path):
    model = builders.tiny_model()
    model[0].requires_grad_(False)
    optimizer = torch.optim.Adam(p for p in model.parameters() if p.requires_grad)
    step(model, optimizer)
    # a state_dict does not record requires_grad: which two are missing is not provable
    path = builders.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "sd.pt"
    )
    assert names(only_optimizer(path)) == [0, 1, 2, 3]
    # a pickled module does: its Parameters keep requires_grad=False
    path = builders.save({"model": model, "optimizer": optimizer.state_dict()}, tmp_path / "m.pt")
    assert names(only_optimizer(path)) == expected_names(model, optimizer)


class WithBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.register_buffer("scale", torch.ones(3))
        self.proj = nn.Linear(4, 3)

    def forward(self, x):
        return self.proj(self.norm(x)) * self.scale


def test_model_with_buffers(tmp_path):
    model = WithBuffers()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step(model, optimizer)
    # a pickled module marks its buffers: matched
    path = builders.save({"model": model, "optimizer": optimizer.state_dict()}, tmp_path / "m.pt")
    info = only_optimizer(path)
    assert (
        names(info)
        == expected_names(model, optimizer)
        == ["norm.weight", "norm.bias", "proj.weight", "proj.bias"]
    )
    # in a state_dict, `scale` could be a parameter as far as the file tells: ids
    path = builders.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "sd.pt"
    )
    assert names(only_optimizer(path)) == [0, 1, 2, 3]


def test_shape_mismatch_keeps_ids(tmp_path):
    model = builders.tiny_model()
    other = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    optimizer = torch.optim.Adam(other.parameters())
    step(other, optimizer, 5)
    path = builders.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "c.pt"
    )
    info = only_optimizer(path)
    assert names(info) == [0, 1, 2, 3, 4, 5] and info.names_source == ""


def test_tied_weights_counted_once(tmp_path):
    embed = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embed.weight
    model = nn.Sequential(embed, nn.Linear(4, 4), head)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.tensor([[1, 2]])).sum().backward()
    optimizer.step()
    assert list(model.state_dict()) == ["0.weight", "1.weight", "1.bias", "2.weight"]
    path = builders.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "t.pt"
    )
    assert names(only_optimizer(path)) == ["0.weight", "1.weight", "1.bias"]


def test_param_groups_in_model_order_either_way(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    backbone, head = list(model[0].parameters()), list(model[2].parameters())
    for groups in ([backbone, head], [head, backbone]):
        optimizer = torch.optim.SGD([{"params": g} for g in groups], lr=0.1, momentum=0.9)
        step(model, optimizer)
        path = builders.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "g.pt"
        )
        assert names(only_optimizer(path)) == expected_names(model, optimizer)


def test_decay_split_groups_not_in_model_order_keep_ids(tmp_path):
    """nanoGPT-style weight-decay / no-decay groups interleave in model order: no block order
    fits, so ids."""
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    )
    step(model, optimizer)
    path = builders.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "d.pt"
    )
    assert names(only_optimizer(path)) == [0, 1, 2, 3, 4, 5]


def test_ema_copy_beside_the_model(tmp_path):
    model = builders.tiny_model()
    optimizer = torch.optim.Adam(model.parameters())
    step(model, optimizer)
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    path = builders.save(
        {"model": model.state_dict(), "model_ema": ema, "optimizer": optimizer.state_dict()},
        tmp_path / "e.pt",
    )
    info = only_optimizer(path)
    assert names(info) == expected_names(model, optimizer)
    assert "at model " in info.names_source


# Four files that once took seconds to open (a scan per optimizer, an unbounded search);
# tests/perf/bench_optim.py times opening them, the tests check what is found.


def flat_trainer_file(path) -> str:
    """15,000 parameters, 15,000 exp_avg (views of two storages, as a flat-parameter trainer
    would save them), three optimizers."""
    count, state_dict, optimizers = 5000, {}, []
    weights, moments = torch.zeros(3 * count * 15), torch.zeros(3 * count * 15)
    offset = 0
    for k in range(3):
        state = {}
        for i in range(count):
            shape = (k + 1, i % 5 + 1)
            size = shape[0] * shape[1]
            state_dict[f"m{k}.layer{i}.weight"] = weights[offset : offset + size].view(shape)
            state[i] = {"step": 1, "exp_avg": moments[offset : offset + size].view(shape)}
            offset += size
        optimizers.append(
            {"state": state, "param_groups": [{"params": list(range(count)), "lr": 0.1}]}
        )
    return builders.save({"state_dict": state_dict, "optimizer_states": optimizers}, path)


def many_optimizers_file(path) -> str:
    """The old matcher scanned the whole file once per optimizer: 1,500 optimizers and 15,000
    tensors took 35 s."""
    state_dict = {f"w{i}": torch.zeros(1) for i in range(15000)}
    optimizers = [
        {"state": {0: {"exp_avg": torch.zeros(7)}}, "param_groups": [{"params": [0], "lr": 0.1}]}
        for _ in range(1500)
    ]
    return builders.save({"state_dict": state_dict, "optimizer_states": optimizers}, path)


def block_order_file(path) -> str:
    """60 groups with no state fit in any order: the search stops at the second fit."""
    state_dict = {f"w{i}": torch.zeros(2) for i in range(6000)}
    groups = [{"params": list(range(i * 100, (i + 1) * 100)), "lr": 0.1} for i in range(60)]
    return builders.save(
        {"state_dict": state_dict, "optimizer": {"state": {}, "param_groups": groups}}, path
    )


def late_failure_file(path) -> str:
    """20 groups that fit in every order until the very last tensor: 20! orders; the search
    has a linear budget and then gives ids."""
    state_dict = {f"w{i}": torch.zeros(2) for i in range(1999)}
    state_dict["last"] = torch.zeros(3)
    state = {i: {"momentum_buffer": torch.zeros(2)} for i in range(2000)}
    groups = [{"params": list(range(i * 100, (i + 1) * 100)), "lr": 0.1} for i in range(20)]
    return builders.save(
        {"state_dict": state_dict, "optimizer": {"state": state, "param_groups": groups}}, path
    )


def test_thousands_of_params_and_three_optimizers(tmp_path):
    checkpoint = open_checkpoint(flat_trainer_file(tmp_path / "big.pt"))
    for k, info in enumerate(checkpoint.optimizers):
        assert names(info)[-1] == f"m{k}.layer4999.weight"


def test_many_optimizers_and_non_matching_shapes(tmp_path):
    checkpoint = open_checkpoint(many_optimizers_file(tmp_path / "hostile.pt"))
    assert len(checkpoint.optimizers) == 1500
    assert all(names(info) == [0] for info in checkpoint.optimizers)


def test_search_for_a_block_order_is_bounded(tmp_path):
    (info,) = open_checkpoint(block_order_file(tmp_path / "blocks.pt")).optimizers
    assert info.names_source == "" and names(info)[:2] == [0, 1]


def test_search_gives_up_on_orders_that_fail_only_at_the_end(tmp_path):
    (info,) = open_checkpoint(late_failure_file(tmp_path / "late.pt")).optimizers
    assert info.names_source == "" and names(info)[:2] == [0, 1]


def test_small_state_values_are_read(tmp_path):
    from ckpt_viewer.core.progress import run
    from ckpt_viewer.core.values.optim_values import small_state_values

    model, optimizer = builders.trained()
    for _ in range(2):
        model(torch.randn(5, 4)).sum().backward()
        optimizer.step()
    path = builders.save({"optimizer": optimizer.state_dict()}, tmp_path / "o.pt")
    info = open_checkpoint(path).optimizers[0]
    values = run(small_state_values(info, limit=100))
    expected = torch.load(path, weights_only=True)["optimizer"]["state"]
    steps = {name: text for (_, name), text in values.items() if name == "step"}
    assert steps and set(steps.values()) == {f"{float(expected[0]['step']):g}"} == {"3"}
    assert len(values) == sum(
        1 for state in expected.values() for t in state.values() if t.numel() <= 1
    )
    assert any(t.numel() > 1 for state in expected.values() for t in state.values())


def every_torch_optimizer():
    return [
        cls
        for name, cls in vars(torch.optim).items()
        if isinstance(cls, type)
        and issubclass(cls, torch.optim.Optimizer)
        and cls is not torch.optim.Optimizer
    ]


def stepped_state_dict(cls):
    torch.manual_seed(0)
    if cls is torch.optim.SparseAdam:  # needs sparse gradients
        model = nn.Embedding(4, 3, sparse=True)
        optimizer = cls(model.parameters())
        model(torch.tensor([0, 2])).sum().backward()
    else:
        model = nn.Linear(3, 3)  # 2-D: Muon takes matrices only
        optimizer = cls([model.weight])
        model(torch.randn(2, 3)).sum().backward()
    if cls is torch.optim.LBFGS:
        optimizer.step(lambda: model(torch.ones(1, 3)).sum())
    else:
        optimizer.step()
    return optimizer.state_dict()


@pytest.mark.parametrize("cls", every_torch_optimizer(), ids=lambda c: c.__name__)
def test_type_of_every_torch_optimizer(tmp_path, cls):
    path = builders.save({"optimizer": stepped_state_dict(cls)}, tmp_path / "o.pt")
    assert only_optimizer(path).type == cls.__name__


class Lamb(torch.optim.Optimizer):
    """timm's Lamb: its defaults, a step that only counts."""

    def __init__(self, params):
        super().__init__(
            params,
            dict(
                lr=1e-3,
                bias_correction=True,
                betas=(0.9, 0.999),
                eps=1e-6,
                weight_decay=0.01,
                grad_averaging=True,
                max_grad_norm=1.0,
                trust_clip=False,
                always_adapt=False,
            ),
        )

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["step"] = torch.tensor(1.0)


def test_type_unknown_when_the_keys_do_not_prove_it(tmp_path):
    """A group whose keys several torch optimizers have, or none has, names no type."""
    torch.manual_seed(0)
    lamb = Lamb(nn.Linear(2, 2).parameters())
    lamb.step()
    old_adam = stepped_state_dict(torch.optim.Adam)  # before decoupled_weight_decay existed
    del old_adam["param_groups"][0]["decoupled_weight_decay"]
    subset = stepped_state_dict(torch.optim.SGD)  # lr and momentum: SGD, RMSprop, Muon
    subset["param_groups"][0] = {
        k: subset["param_groups"][0][k] for k in ("lr", "momentum", "params")
    }
    path = builders.save(
        {"lamb": lamb.state_dict(), "old_adam": old_adam, "subset": subset}, tmp_path / "o.pt"
    )
    infos = open_checkpoint(path).optimizers
    assert [(o.key, o.type) for o in infos] == [
        ("lamb", None),
        ("old_adam", None),
        ("subset", None),
    ]
    assert "optimizer lamb: unknown type, 1 group" in list(text_report(open_checkpoint(path)))
    assert [o["type"] for o in inspect_dict(open_checkpoint(path))["optimizers"]] == [None] * 3


def test_tensor_hyperparameters_show_their_values(tmp_path):
    model = builders.tiny_model()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=torch.tensor(0.01), betas=(torch.tensor(0.9), torch.tensor(0.999))
    )
    step(model, optimizer)
    path = builders.save({"optimizer": optimizer.state_dict()}, tmp_path / "o.pt")
    group = torch.load(path, weights_only=True)["optimizer"]["param_groups"][0]
    (info,) = open_checkpoint(path).optimizers
    ours = info.param_groups[0]
    assert torch.tensor(ours["lr"], dtype=group["lr"].dtype) == group["lr"]
    assert ours["lr"] == 0.01 and ours["betas"] == (0.9, 0.999)
    assert [torch.tensor(b) == t for b, t in zip(ours["betas"], group["betas"])] == [True, True]
    assert "lr=0.01, betas=(0.9, 0.999)" in "\n".join(text_report(open_checkpoint(path)))
    assert inspect_dict(open_checkpoint(path))["optimizers"][0]["param_groups"][0]["lr"] == 0.01


def test_state_parameters_name_each_state_tensor_only_where_proven(tmp_path):
    from ckpt_viewer.core.listing.optim import state_parameters

    path = builders.training_checkpoint(tmp_path / "named.pt")
    saved = torch.load(path, weights_only=True)["optimizer_state_dict"]
    group = saved["param_groups"][0]
    names = dict(zip(group["params"], group["param_names"]))  # torch's own record
    expected = {
        f"optimizer_state_dict.state.{i}.{entry}": names[i]
        for i, state in saved["state"].items()
        for entry in state
    }
    assert state_parameters(open_checkpoint(path)) == expected
    groups = [{k: v for k, v in g.items() if k != "param_names"} for g in saved["param_groups"]]
    bare = builders.save({**saved, "param_groups": groups}, tmp_path / "bare.pt")  # ids only
    assert open_checkpoint(bare).optimizers and state_parameters(open_checkpoint(bare)) == {}
