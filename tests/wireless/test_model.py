"""Shapes, invariants and losses of WMLM's networks, and a tiny training run whose loss must fall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgecloud.wireless.dataset import load
from edgecloud.wireless.model import (
    ANCHOR_PAIRS,
    DIRECT_PAIRS,
    WMLM,
    ModelConfig,
    WirelessEncoder,
    channel_tokens,
    info_nce,
    next_snapshot_targets,
    nmse,
)
from edgecloud.wireless.tasks import (
    EndToEnd,
    ProbeConfig,
    copy_last_nmse_db,
    evaluate_head,
    fit_end_to_end,
    fit_head,
    fit_predictor_end_to_end,
    prediction_nmse_db,
    recall_at_1,
)
from edgecloud.wireless.train import TrainConfig, load_checkpoint, pretrain, save_checkpoint, tensors

TINY = ModelConfig(dim=32, embed_dim=16, heads=2, wireless_layers=1, decoder_layers=1, text_layers=1)


def test_channel_tokens_are_a_unitary_view_of_the_channel() -> None:
    torch.manual_seed(0)
    channel = torch.randn(3, 32, 32, 2) * 7
    patches, log_power, rms = channel_tokens(channel, TINY)
    assert patches.shape == (3, TINY.num_patches, TINY.patch_values)
    # unit-power channel, orthonormal DFT: every patch value squared sums to N * K
    assert torch.allclose(patches.square().sum(dim=(1, 2)), torch.full((3,), 32.0 * 32), rtol=1e-4)
    h = torch.complex(channel[..., 0], channel[..., 1])
    assert torch.allclose(10**log_power, h.abs().square().mean(dim=(1, 2)), rtol=1e-5)
    assert torch.allclose(rms, h.abs().square().mean(dim=(1, 2)).sqrt(), rtol=1e-5)


def test_decoder_is_causal_across_snapshots() -> None:
    torch.manual_seed(0)
    model = WMLM(TINY).eval()
    torch.nn.init.normal_(model.decoder.head.weight)  # the head starts at zero (residual on copy-last)
    channel = torch.randn(2, 4, 32, 32, 2)
    tokens = model.encode_channels(channel)[0]
    changed = tokens.clone()
    changed[:, 2:] += 1.0
    with torch.no_grad():
        a, b = model.decoder(tokens), model.decoder(changed)
    assert a.shape == (2, 4, TINY.num_patches, TINY.patch_values)
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-6)
    assert not torch.allclose(a[:, 2:], b[:, 2:])


def test_next_snapshot_targets_and_nmse() -> None:
    channel = torch.randn(2, 4, 32, 32, 2)
    targets = next_snapshot_targets(channel, TINY)
    assert targets.shape == (2, 3, TINY.num_patches, TINY.patch_values)
    assert torch.allclose(nmse(targets, targets), torch.zeros(2))
    assert torch.allclose(nmse(torch.zeros_like(targets), targets), torch.ones(2))


def test_info_nce_prefers_aligned_pairs() -> None:
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    scale = torch.tensor(np.log(10.0))
    assert info_nce(a, a, scale) < info_nce(a, a[torch.randperm(16)], scale)
    assert recall_at_1(a, a) == 1.0


def test_forward_losses_per_pairing(shard_dir: Path) -> None:
    data = load(shard_dir)
    batch = tensors(data, np.arange(6), TINY.text_length)
    anchored = WMLM(TINY, ANCHOR_PAIRS)(batch, predict_rows=3)
    assert set(anchored) == {"predict", "wireless-image", "wireless-lidar", "wireless-text", "total"}
    direct = WMLM(TINY, DIRECT_PAIRS)(batch)
    assert set(direct) == {"image-text", "total"}
    assert WMLM(TINY, DIRECT_PAIRS).text is not None and WMLM(TINY, DIRECT_PAIRS).lidar is None
    with pytest.raises(ValueError, match="nothing to train"):
        WMLM(TINY, ())(batch)


def test_pretraining_loss_falls_and_checkpoint_round_trips(shard_dir: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = load(shard_dir, ["main"])
    config = TrainConfig(steps=40, batch_size=12, lr=3e-3, warmup=5, predict_rows=4)
    model, log = pretrain(data, np.arange(len(data)), TINY, config)
    first = np.mean([e["total"] for e in log[:5]])
    last = np.mean([e["total"] for e in log[-5:]])
    assert last < first - 0.5
    save_checkpoint(model, tmp_path / "ckpt")
    again = load_checkpoint(tmp_path / "ckpt")
    batch = tensors(data, np.arange(4), TINY.text_length)
    with torch.no_grad():
        assert torch.allclose(model.embed("image", batch), again.embed("image", batch))


def test_task_specific_model_and_copy_last_reference_run(shard_dir: Path) -> None:
    torch.set_num_threads(1)
    data = load(shard_dir, ["main"])
    probe = ProbeConfig(min_steps=30, max_steps=30, batch_size=12)
    model = fit_end_to_end(data, np.arange(len(data)), "los", TINY, probe)
    assert model(torch.from_numpy(data.arrays["channel"][:2, -1].astype(np.float32))).shape == (2, 1)
    assert np.isfinite(copy_last_nmse_db(data, np.arange(len(data)), TINY))


def test_untrained_predictor_is_copy_last_and_learns_the_change(shard_dir: Path) -> None:
    """The decoder predicts the change from the last snapshot: untrained, it scores exactly the
    copy-last reference; a short fit must beat that reference (the snapshots rotate in phase)."""
    torch.set_num_threads(1)
    data = load(shard_dir, ["main"])
    rows = np.arange(len(data))
    copy_last = copy_last_nmse_db(data, rows, TINY)
    assert prediction_nmse_db(WMLM(TINY, ()).eval(), data, rows) == pytest.approx(copy_last, abs=1e-3)
    fitted = fit_predictor_end_to_end(data, rows, TINY, ProbeConfig(min_steps=60, max_steps=60, batch_size=12))
    assert prediction_nmse_db(fitted, data, rows) < copy_last - 0.5


def test_fine_tuning_starts_from_the_pretrained_weights_and_leaves_them_alone(shard_dir: Path) -> None:
    torch.manual_seed(1)
    pretrained = WMLM(TINY)
    before = {k: v.clone() for k, v in pretrained.wireless.state_dict().items()}
    start = EndToEnd(TINY, "beam", pretrained.wireless)
    assert all(torch.equal(start.encoder.state_dict()[k], v) for k, v in before.items())
    scratch = EndToEnd(TINY, "beam")
    assert not torch.equal(scratch.encoder.patch.weight, before["patch.weight"])
    data = load(shard_dir, ["main"])
    probe = ProbeConfig(min_steps=5, max_steps=5, batch_size=6)
    tuned = fit_end_to_end(data, np.arange(len(data)), "beam", TINY, probe, pretrained.wireless)
    assert not torch.equal(tuned.encoder.patch.weight, before["patch.weight"])  # it was trained
    assert all(torch.equal(pretrained.wireless.state_dict()[k], v) for k, v in before.items())  # a copy was


def test_attentive_probe_reads_which_patch_holds_the_peak() -> None:
    """The hypothesis behind the attentive probe, on tokens built for it: the label is the patch that
    holds a marker. The light head reads [CLS] and the mean patch token, which is the same wherever
    the marker sits, so it stays near chance (1/8); the attentive probe, same steps and batches,
    must learn where the marker is."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n, patches, dim = 640, 8, 16
    tokens = torch.randn(n, patches + 2, dim, generator=g)
    where = torch.randint(0, patches, (n,), generator=g)
    tokens[torch.arange(n), 2 + where] += 4 * torch.randn(dim, generator=g)
    train, test = slice(0, 512), slice(512, None)
    probe = ProbeConfig(min_steps=300, max_steps=300, batch_size=64)
    mean_head = fit_head(WirelessEncoder.features(tokens[train]), where[train], "beam", probe)
    attentive = fit_head(tokens[train], where[train], "beam", probe, attentive=True)
    mean_top1 = evaluate_head(mean_head, WirelessEncoder.features(tokens[test]), where[test], "beam")["top1"]
    attentive_top1 = evaluate_head(attentive, tokens[test], where[test], "beam")["top1"]
    assert mean_top1 < 0.3
    assert attentive_top1 > 0.8
    with pytest.raises(ValueError, match="tokens"):
        fit_head(WirelessEncoder.features(tokens[train]), where[train], "beam", probe, attentive=True)


def test_validation_keeps_the_best_checked_step_not_the_last() -> None:
    """The fourth revision's selection rule: a fit is checked on validation rows and keeps its best
    checked weights. Here the validation labels are the training labels flipped, so learning only
    hurts there: the head kept must score on them what its selection says, and better than the head
    of the last step."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    y = (x[:, 0] > 0).float()
    probe = ProbeConfig(min_steps=100, max_steps=100, batch_size=32, evaluations=10)
    last = fit_head(x, y, "los", probe)
    flipped = (x, 1 - y)
    kept = fit_head(x, y, "los", probe, validation=flipped)
    accuracy = evaluate_head(kept, *flipped, "los")["accuracy"]
    assert kept.selection["step"] < 100
    assert accuracy == pytest.approx(kept.selection["score"])
    assert accuracy > evaluate_head(last, *flipped, "los")["accuracy"] + 0.1


def test_thirty_epochs_at_every_fraction_and_encoder_rate_grid(shard_dir: Path) -> None:
    """The bench's protocol trains 30 epochs at every label fraction (the second revision's cap of
    200 steps gave 4 epochs at 100%); the encoder learning rate applies to the encoder only, the
    head keeps its own; with validation rows every rate of the grid is tried and the best kept."""
    from edgecloud.wireless.bench import PROBE

    assert (PROBE.steps(3200), PROBE.steps(320), PROBE.steps(32)) == (1500, 150, 150)
    torch.set_num_threads(1)
    data = load(shard_dir, ["main"])
    rows, val = np.arange(8), np.arange(8, 12)
    frozen_encoder = ProbeConfig(min_steps=5, max_steps=5, batch_size=4, encoder_lrs=(1e-12,))
    torch.manual_seed(0)
    start = EndToEnd(TINY, "beam")
    fitted = fit_end_to_end(data, rows, "beam", TINY, frozen_encoder)
    assert torch.allclose(fitted.encoder.patch.weight, start.encoder.patch.weight, atol=1e-9)
    assert not torch.allclose(fitted.head.net[1].weight, start.head.net[1].weight)
    grid = ProbeConfig(min_steps=4, max_steps=4, batch_size=4, encoder_lrs=(1e-3, 1e-12), evaluations=2)
    chosen = fit_end_to_end(data, rows, "beam", TINY, grid, validation_rows=val)
    assert [t["lr"] for t in chosen.selection["tried"]] == [1e-3, 1e-12]
    assert chosen.selection["score"] == max(t["score"] for t in chosen.selection["tried"])
    from edgecloud.wireless.tasks import evaluate_end_to_end

    assert evaluate_end_to_end(chosen, data, val, "beam")["top1"] == pytest.approx(chosen.selection["score"])
