from __future__ import annotations

import random

import pytest
import torch
import torch_pruning as tp
from torch import nn

from amc import zoo
from amc.errors import UnknownNameError
from amc.measure import count_flops, count_params
from amc.plan import PruningPlan, UnitPlan, channels_for, uniform_plan, validate_plan
from amc.prune import WeightMask, apply_plan, bake_masks, masked_layers
from amc.units import UnitGraph, analyze
from tests.tiny_models import LeNet, ResidualNet

ZOO_INPUT = torch.randn(1, 3, 32, 32)
_GRAPHS: dict[str, tuple[nn.Module, UnitGraph]] = {}


def zoo_model(name: str) -> tuple[nn.Module, UnitGraph]:
    if name not in _GRAPHS:
        torch.manual_seed(0)
        model = zoo.get_model(name).eval()
        _GRAPHS[name] = (model, analyze(model, ZOO_INPUT))
    return _GRAPHS[name]


def random_plan(graph: UnitGraph, rng: random.Random, round_to: int = 4) -> PruningPlan:
    units = {}
    for unit in graph.units:
        keep = rng.uniform(0.2, 1.0) if unit.channel_prunable else 1.0
        units[unit.name] = UnitPlan(
            keep_ratio=keep,
            channels=channels_for(keep, unit.channels, round_to),
            nm=(2, 4) if unit.nm_layers and rng.random() < 0.3 else None,
            sparsity=rng.choice([0.0, 0.0, 0.5]),
        )
    skip = tuple(b for b in graph.skippable if rng.random() < 0.2)
    plan = PruningPlan(units=units, model=graph.fingerprint, skip=skip, round_to=round_to)
    try:
        validate_plan(plan, graph)
    except ValueError:  # N:M that does not divide the input left by the cuts: drop it
        units = {n: UnitPlan(u.keep_ratio, u.channels, None, u.sparsity) for n, u in units.items()}
        plan = PruningPlan(units=units, model=graph.fingerprint, skip=skip, round_to=round_to)
    return plan


def out_width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[0]
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    return module.out_channels


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_random_plans_on_every_zoo_model_match_their_prediction(name: str) -> None:
    model, graph = zoo_model(name)
    rng = random.Random(name)
    dense_out = model(ZOO_INPUT)
    for _ in range(2):
        plan = random_plan(graph, rng)
        pruned = apply_plan(model, plan, ZOO_INPUT, graph=graph)
        assert pruned(ZOO_INPUT).shape == dense_out.shape
        predicted = plan.predict(graph)
        assert count_params(pruned) == predicted.params
        assert count_flops(pruned, ZOO_INPUT) == pytest.approx(predicted.flops, rel=0.02)
        channels = plan.channels(graph)
        skipped = tuple(f"{b}." for b in plan.skip)
        for unit in graph.units:
            for layer in unit.out_layers:
                if not layer.startswith(skipped):
                    assert out_width(pruned.get_submodule(layer)) == channels[unit.name], layer


@pytest.mark.parametrize("name", ["resnet56", "mobilenetv2"])
def test_uniform_plan_matches_torch_pruning_uniform_flops(name: str) -> None:
    model, graph = zoo_model(name)
    ours = apply_plan(model, uniform_plan(model, ZOO_INPUT, 0.5, graph=graph), ZOO_INPUT)
    theirs = zoo.get_model(name).eval()
    pruner = tp.pruner.MetaPruner(
        theirs,
        ZOO_INPUT,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=[theirs.get_submodule(n) for n in graph.output_layers],
    )
    pruner.step()
    ours_flops, their_flops = count_flops(ours, ZOO_INPUT), count_flops(theirs, ZOO_INPUT)
    assert abs(ours_flops - their_flops) / their_flops < 0.01


def test_caller_model_is_untouched_and_a_new_model_returned(tiny) -> None:
    _, model, x = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = uniform_plan(model, x, 0.5)
    pruned = apply_plan(model, plan, x)
    assert pruned is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert pruned(x).shape == model(x).shape


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "taylor", "activation"])
def test_every_criterion_prunes_to_the_planned_widths(criterion: str) -> None:
    model, x = ResidualNet().eval(), torch.randn(4, 1, 16, 16)
    plan = uniform_plan(model, x, 0.5)
    pruned = apply_plan(model, plan, x, criterion=criterion, batches=[(x, torch.arange(4))])
    assert pruned.conv1.out_channels == 8 and pruned.layer1[0].conv1.out_channels == 8


def test_l1_keeps_the_channels_with_largest_magnitude() -> None:
    model, x = LeNet().eval(), torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        model.conv1.weight.mul_(0.01)
        model.conv1.weight[[1, 6]] *= 1000.0
        model.conv1.bias.zero_()
    plan = PruningPlan(units={"conv1": UnitPlan(0.25)})
    pruned = apply_plan(model, plan, x, criterion="l1")
    assert torch.equal(pruned.conv1.weight, model.conv1.weight[[1, 6]])


def test_unknown_criterion_has_did_you_mean() -> None:
    model, x = LeNet(), torch.randn(1, 1, 16, 16)
    with pytest.raises(UnknownNameError, match="Unknown criterion 'l11'. Did you mean 'l1'?"):
        apply_plan(model, uniform_plan(model, x, 0.5), x, criterion="l11")


def nonzeros_per_group(weight: torch.Tensor, m: int) -> torch.Tensor:
    moved = weight.movedim(1, -1) if weight.dim() == 4 else weight
    return (moved.reshape(-1, m) != 0).sum(1)


def test_nm_keeps_exactly_n_of_every_m_and_survives_fine_tuning() -> None:
    model, x = LeNet().eval(), torch.randn(8, 1, 16, 16)
    plan = PruningPlan(units={"conv2": UnitPlan(1.0, nm=(2, 4)), "fc1": UnitPlan(0.5, nm=(1, 4))})
    pruned = apply_plan(model, plan, x)
    assert masked_layers(pruned) == {"conv2": ["2:4"], "fc1": ["1:4"]}
    assert (nonzeros_per_group(pruned.conv2.weight, 4) == 2).all()
    assert (nonzeros_per_group(pruned.fc1.weight, 4) == 1).all()
    # the kept ones are the largest of each group
    dense = model.conv2.weight.detach().movedim(1, -1).reshape(-1, 4).abs()
    kept = pruned.conv2.weight.detach().movedim(1, -1).reshape(-1, 4) != 0
    assert torch.equal(kept.sum(1), torch.full((dense.shape[0],), 2))
    assert (
        dense[kept].reshape(-1, 2).min(1).values >= dense[~kept].reshape(-1, 2).max(1).values
    ).all()
    optimizer = torch.optim.SGD(pruned.parameters(), lr=0.5)
    pruned.train()
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(pruned(x), torch.arange(8) % 10).backward()
        optimizer.step()
    assert (nonzeros_per_group(pruned.conv2.weight, 4) == 2).all()
    assert (nonzeros_per_group(pruned.fc1.weight, 4) == 1).all()
    baked = bake_masks(pruned)
    assert masked_layers(baked) == {} and (nonzeros_per_group(baked.fc1.weight, 4) == 1).all()


def test_unstructured_sparsity_zeroes_the_smallest_weights() -> None:
    model, x = LeNet().eval(), torch.randn(2, 1, 16, 16)
    pruned = apply_plan(model, PruningPlan(units={"fc1": UnitPlan(1.0, sparsity=0.75)}), x)
    weight = pruned.fc1.weight.detach()
    assert int((weight == 0).sum()) == round(0.75 * weight.numel())
    original = model.fc1.weight.detach().abs()  # the zeroed ones are the smallest originals
    assert float(original[weight == 0].max()) <= float(original[weight != 0].min())
    assert isinstance(pruned.fc1.parametrizations["weight"][0], WeightMask)


def test_skipping_a_residual_block_replaces_it_with_identity() -> None:
    model, x = ResidualNet().eval(), torch.randn(2, 1, 16, 16)
    pruned = apply_plan(model, PruningPlan(units={}, skip=("layer1.1",)), x)
    assert isinstance(pruned.layer1[1], nn.Identity)
    assert pruned(x).shape == (2, 10)


def test_nm_stays_a_mask_off_cuda_and_says_so() -> None:
    from amc.prune import SparseKernelUnavailable, accelerate_nm

    model, x = LeNet().eval(), torch.randn(2, 1, 16, 16)
    pruned = apply_plan(model, PruningPlan(units={"fc1": UnitPlan(1.0, nm=(2, 4))}), x)
    with pytest.raises(
        SparseKernelUnavailable, match="2:4 sparse kernels need the model on a CUDA"
    ):
        accelerate_nm(pruned)
    assert masked_layers(pruned) == {"fc1": ["2:4"]}


@pytest.mark.gpu
def test_two_of_four_linear_weights_become_semi_structured_on_cuda() -> None:
    from torch.sparse import SparseSemiStructuredTensor

    from amc.prune import accelerate_nm

    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("semi-structured sparsity needs compute capability 8.0+")
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    x = torch.randn(32, 128)
    plan = PruningPlan(units={"0": UnitPlan(1.0, nm=(2, 4))})
    pruned = apply_plan(model, plan, x).half().cuda()
    expected = pruned(x.half().cuda())
    assert accelerate_nm(pruned) == ["0"]
    assert isinstance(pruned[0].weight, SparseSemiStructuredTensor)
    assert torch.allclose(pruned(x.half().cuda()), expected, atol=1e-2, rtol=1e-2)
