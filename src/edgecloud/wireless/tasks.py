"""Sensing tasks on WMLM: a frozen encoder with light heads against task-specific models.

All families see the same labelled rows and train for the same number of steps with the same
optimiser; only the starting point and what is trained differ (arXiv 2511.21707 §V; WMFM's
"end-to-end" baselines):

- ``wmlm``: the pretrained wireless encoder, frozen; a two-layer MLP head on its features
  ([CLS] and mean patch token). For channel prediction the head is the pretrained causal decoder,
  fine-tuned on the labelled sequences while the encoder stays frozen.
- ``wmlm_finetuned``: the pretrained encoder (and, for channel prediction, the pretrained decoder)
  with a fresh head, trained end to end exactly as ``task_specific`` is (same steps, learning
  rate, batches): the usual way a foundation model is used when all the labels are there.
- ``task_specific``: the same encoder architecture (and the same head / decoder), randomly
  initialised and trained end to end on the labelled rows only.

Beside the protocol (a diagnostic, not a fourth compared family): ``AttentiveHead``, a light head
on the same frozen encoder that attends over its patch tokens instead of averaging them, to test
whether the mean-pooled patch token is what loses the beam (which angle patch holds the peak).

Tasks: LoS/NLoS (accuracy), localisation (mean error in metres, relative to the mast), beam
prediction (top-1 / top-3 over the 32-beam DFT codebook), next-snapshot channel prediction (NMSE
in dB), and cross-modal retrieval (recall@1 over the held-out gallery).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecloud.wireless.dataset import WirelessData
from edgecloud.wireless.model import WMLM, ModelConfig, WirelessEncoder, channel_tokens, next_snapshot_targets, nmse
from edgecloud.wireless.train import tensors

SENSING_TASKS = ("los", "position", "beam")
POSITION_SCALE = 30.0  # metres per unit of the regression target
NUM_BEAMS = 32


@dataclass(frozen=True)
class ProbeConfig:
    """One protocol for every family, fixed before any result was seen.

    Fourth revision (why: docs/wmlm.md): the 30-epoch rule holds at every label fraction (the
    bench's old cap of 200 steps left 4 epochs at 100%), every loop warms up for
    ``warmup_fraction`` of its steps, and when validation rows are given each fit is checked
    ``evaluations`` times and keeps its best checkpoint, and each end-to-end family (fine-tuned
    and from scratch alike) picks its encoder learning rate from ``encoder_lrs`` on the same rows.
    """

    epochs: int = 30
    min_steps: int = 150
    max_steps: int = 600
    batch_size: int = 64
    head_lr: float = 3e-3
    end_to_end_lr: float = 1e-3
    # learning rates tried for the encoder (and, for channel prediction, the decoder) of an
    # end-to-end family; the head keeps ``end_to_end_lr``. Without validation rows: the first one.
    encoder_lrs: tuple[float, ...] = (1e-3,)
    warmup_fraction: float = 0.0
    evaluations: int = 10
    weight_decay: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.encoder_lrs or any(lr <= 0 for lr in self.encoder_lrs):
            raise ValueError(f"encoder_lrs must be one or more learning rates > 0, got {self.encoder_lrs}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")
        if self.evaluations < 1:
            raise ValueError(f"evaluations must be >= 1, got {self.evaluations}")

    def steps(self, num_labels: int) -> int:
        return int(min(self.max_steps, max(self.min_steps, math.ceil(self.epochs * num_labels / self.batch_size))))


# The metric each fit is selected on, and whether larger is better (also the bench's headline).
HEADLINE = {
    "los": ("accuracy", True),
    "position": ("mean_error_m", False),
    "beam": ("top1", True),
    "predict": ("nmse_db", False),
}


def validation_score(task: str, metrics: dict[str, float]) -> float:
    """The headline metric of ``metrics``, signed so that larger is better."""
    metric, higher = HEADLINE[task]
    return metrics[metric] if higher else -metrics[metric]


def output_dim(task: str) -> int:
    return {"los": 1, "position": 2, "beam": NUM_BEAMS}[task]


class Head(nn.Module):
    def __init__(self, features: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(features), nn.Linear(features, 128), nn.GELU(), nn.Linear(128, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def labels(data: WirelessData, rows: np.ndarray, task: str) -> torch.Tensor:
    a = data.arrays
    if task == "los":
        return torch.from_numpy(a["los"][rows].astype(np.float32))
    if task == "position":
        return torch.from_numpy(a["position"][rows, :2] - a["bs_position"][rows, :2])
    if task == "beam":
        return torch.from_numpy(a["best_beam"][rows])
    raise ValueError(f"task must be one of {SENSING_TASKS}, got {task!r}")


def task_loss(task: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task == "los":
        return F.binary_cross_entropy_with_logits(out[:, 0], target)
    if task == "position":
        return F.mse_loss(out, target / POSITION_SCALE)
    return F.cross_entropy(out, target)


def task_metrics(task: str, out: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    if task == "los":
        return {"accuracy": float(((out[:, 0] > 0).float() == target).float().mean())}
    if task == "position":
        error = (out * POSITION_SCALE - target).norm(dim=1)
        return {"mean_error_m": float(error.mean()), "median_error_m": float(error.median())}
    top3 = out.topk(3, dim=1).indices
    return {
        "top1": float((top3[:, 0] == target).float().mean()),
        "top3": float((top3 == target[:, None]).any(dim=1).float().mean()),
    }


def _channel_last(data: WirelessData, rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(data.arrays["channel"][rows, -1:].astype(np.float32))


@torch.no_grad()
def frozen_tokens(encoder: WirelessEncoder, data: WirelessData, rows: np.ndarray, batch: int = 256) -> torch.Tensor:
    """The encoder's tokens of the last snapshot of ``rows``: (n, P + 2, dim) -- [CLS], power, patches."""
    encoder.eval()
    out = []
    for start in range(0, len(rows), batch):
        patches, log_power, _ = channel_tokens(_channel_last(data, rows[start : start + batch])[:, 0], encoder.config)
        out.append(encoder(patches, log_power))
    return torch.cat(out)


def _loop(
    steps: int,
    rows: int,
    config: ProbeConfig,
    groups: list[tuple[list[nn.Parameter], float]],
    loss_of: Callable[[np.ndarray], torch.Tensor],
    module: nn.Module | None = None,
    validate: Callable[[], float] | None = None,
) -> dict[str, float]:
    """AdamW over ``groups`` (parameters, learning rate), linear warm-up then cosine decay. With
    ``validate`` (a score, larger is better), ``module`` is scored ``config.evaluations`` times,
    evenly, the last at the final step, and left holding its best-scoring weights (the first best
    on a tie). Returns the selection: the step kept and its score (nan without ``validate``)."""
    params = [p for group, _ in groups for p in group]
    optimiser = torch.optim.AdamW(
        [{"params": group, "lr": lr} for group, lr in groups], weight_decay=config.weight_decay
    )
    warmup = int(config.warmup_fraction * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
    rng = np.random.default_rng([config.seed, rows, steps])
    every = max(1, steps // config.evaluations)
    best: dict[str, float] = {"step": float(steps), "score": float("nan")}
    best_state: dict[str, torch.Tensor] | None = None
    for step in range(1, steps + 1):
        pick = np.sort(rng.choice(rows, min(config.batch_size, rows), replace=False))
        loss = loss_of(pick)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        scheduler.step()
        if validate is not None and module is not None and (step % every == 0 or step == steps):
            module.eval()
            score = validate()
            module.train()
            if best_state is None or score > best["score"]:
                best = {"step": float(step), "score": score}
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if best_state is not None and module is not None:
        module.load_state_dict(best_state)
    return best


class AttentiveHead(nn.Module):
    """A light head that *attends* over frozen tokens instead of reading their mean.

    ``Head`` sees [CLS] and the mean patch token; a mean cannot say which angle-delay patch holds
    the strongest path. Here a learned query (one per attention head) pools the patch tokens, each
    patch carrying a learned position of its own, and the same MLP as ``Head`` reads [CLS] beside
    the pooled token. Input: (B, P + 2, d) tokens as ``WirelessEncoder`` returns them.

    The positions start on the scale of the normalised tokens (std 1), not ViT's 0.02: a probe gets
    150-200 steps, and at 0.02 it had not learned where a marker sits in 200 steps on the synthetic
    test (tests/wireless/test_model.py), at std 1 it had. Chosen on that test, not on the bench.
    """

    def __init__(self, dim: int, num_patches: int, out: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.position = nn.Parameter(torch.randn(1, num_patches, dim))
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = Head(2 * dim, out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = self.norm(tokens[:, 2:]) + self.position
        pooled = self.attention(self.query.expand(len(tokens), -1, -1), patches, patches, need_weights=False)[0]
        return self.head(torch.cat([tokens[:, 0], pooled[:, 0]], dim=-1))


def fit_head(
    features: torch.Tensor,
    target: torch.Tensor,
    task: str,
    config: ProbeConfig,
    attentive: bool = False,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> nn.Module:
    """A light head on frozen features (``features``/``target`` are the labelled rows only): ``Head``
    on (n, 2d) features, or with ``attentive`` an ``AttentiveHead`` on (n, P + 2, d) tokens -- the same
    steps, learning rate and batches either way. With ``validation`` (features, target) the best of
    the checked steps is kept. The head's ``selection`` says which."""
    torch.manual_seed(config.seed)
    if attentive:
        if features.dim() != 3:
            raise ValueError(f"an attentive head needs (n, tokens, dim) tokens, got shape {tuple(features.shape)}")
        head: nn.Module = AttentiveHead(features.shape[2], features.shape[1] - 2, output_dim(task))
    else:
        head = Head(features.shape[1], output_dim(task))
    head.train()
    validate = None
    if validation is not None:
        validate = lambda: validation_score(task, evaluate_head(head, validation[0], validation[1], task))  # noqa: E731
    selected = _loop(
        config.steps(len(target)),
        len(target),
        config,
        [(list(head.parameters()), config.head_lr)],
        lambda pick: task_loss(task, head(features[pick]), target[pick]),
        head,
        validate,
    )
    head.selection = {"lr": config.head_lr, **selected}
    return head.eval()


class EndToEnd(nn.Module):
    """A wireless encoder and a head trained together: the task-specific model (a fresh encoder)
    or the fine-tuned WMLM (the encoder starts from ``pretrained``'s weights)."""

    def __init__(self, model_config: ModelConfig, task: str, pretrained: WirelessEncoder | None = None) -> None:
        super().__init__()
        self.encoder = WirelessEncoder(model_config)
        self.head = Head(2 * model_config.dim, output_dim(task))
        if pretrained is not None:
            self.encoder.load_state_dict(pretrained.state_dict())

    def forward(self, channel_last: torch.Tensor) -> torch.Tensor:
        patches, log_power, _ = channel_tokens(channel_last, self.encoder.config)
        return self.head(WirelessEncoder.features(self.encoder(patches, log_power)))


def _best_over_lrs(config: ProbeConfig, validation: bool, fit: Callable[[float], nn.Module]) -> nn.Module:
    """``fit(lr)`` for every encoder learning rate of the grid (the first only without validation
    rows); the model with the best validation score, carrying every candidate's in ``selection``."""
    best: nn.Module | None = None
    tried = []
    for lr in config.encoder_lrs if validation else config.encoder_lrs[:1]:
        model = fit(lr)
        tried.append(model.selection)
        if best is None or model.selection["score"] > best.selection["score"]:
            best = model
    assert best is not None
    best.selection = {**best.selection, "tried": tried}
    return best


def fit_end_to_end(
    data: WirelessData,
    rows: np.ndarray,
    task: str,
    model_config: ModelConfig,
    config: ProbeConfig,
    pretrained: WirelessEncoder | None = None,
    validation_rows: np.ndarray | None = None,
) -> EndToEnd:
    """Encoder and head trained together on the labelled ``rows``; the encoder is fresh, or a copy of
    ``pretrained`` (fine-tuning). The head's initialisation and the batches are the same either way.
    With ``validation_rows``: one fit per encoder learning rate of ``config.encoder_lrs``, each
    keeping its best checked step, and the best of those on the validation rows is returned."""
    target = labels(data, rows, task)

    def fit(lr: float) -> EndToEnd:
        torch.manual_seed(config.seed)
        model = EndToEnd(model_config, task, pretrained)
        model.train()

        def loss_of(pick: np.ndarray) -> torch.Tensor:
            return task_loss(task, model(_channel_last(data, rows[pick])[:, 0]), target[pick])

        validate = None
        if validation_rows is not None:
            validate = lambda: validation_score(task, evaluate_end_to_end(model, data, validation_rows, task))  # noqa: E731
        groups = [(list(model.encoder.parameters()), lr), (list(model.head.parameters()), config.end_to_end_lr)]
        selected = _loop(config.steps(len(rows)), len(rows), config, groups, loss_of, model, validate)
        model.selection = {"lr": lr, **selected}
        return model.eval()

    return _best_over_lrs(config, validation_rows is not None, fit)  # type: ignore[return-value]


@torch.no_grad()
def evaluate_end_to_end(model: EndToEnd, data: WirelessData, rows: np.ndarray, task: str) -> dict[str, float]:
    out = torch.cat([model(_channel_last(data, rows[s : s + 256])[:, 0]) for s in range(0, len(rows), 256)])
    return task_metrics(task, out, labels(data, rows, task))


@torch.no_grad()
def evaluate_head(head: nn.Module, features: torch.Tensor, target: torch.Tensor, task: str) -> dict[str, float]:
    return task_metrics(task, head(features), target)


# -- channel prediction ------------------------------------------------------------------------


def _channels(data: WirelessData, rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(data.arrays["channel"][rows].astype(np.float32))


@torch.no_grad()
def _history_tokens(model: WMLM, data: WirelessData, rows: np.ndarray, batch: int = 128) -> torch.Tensor:
    return torch.cat(
        [model.encode_channels(_channels(data, rows[s : s + batch])[:, :-1])[0] for s in range(0, len(rows), batch)]
    )


def _targets(data: WirelessData, rows: np.ndarray, config: ModelConfig) -> torch.Tensor:
    return torch.cat(
        [next_snapshot_targets(_channels(data, rows[s : s + 256]), config) for s in range(0, len(rows), 256)]
    )


def fit_predictor_frozen(
    model: WMLM,
    data: WirelessData,
    rows: np.ndarray,
    config: ProbeConfig,
    validation_rows: np.ndarray | None = None,
) -> WMLM:
    """Fine-tune the pretrained decoder on the labelled sequences; the encoder stays frozen. With
    ``validation_rows`` the best checked step is kept."""
    torch.manual_seed(config.seed)
    history = _history_tokens(model, data, rows)
    base = torch.cat(
        [channel_tokens(_channels(data, rows[s : s + 256])[:, :-1], model.config)[0] for s in range(0, len(rows), 256)]
    )
    target = _targets(data, rows, model.config)
    model.decoder.train()
    validate = None
    if validation_rows is not None:
        validate = lambda: -prediction_nmse_db(model, data, validation_rows)  # noqa: E731
    selected = _loop(
        config.steps(len(rows)),
        len(rows),
        config,
        [(list(model.decoder.parameters()), config.head_lr / 3)],
        lambda pick: F.mse_loss(model.next_snapshots(history[pick], base[pick]), target[pick]),
        model.decoder,
        validate,
    )
    model.eval()
    model.selection = {"lr": config.head_lr / 3, **selected}
    return model


def fit_predictor_end_to_end(
    data: WirelessData,
    rows: np.ndarray,
    model_config: ModelConfig,
    config: ProbeConfig,
    pretrained: WMLM | None = None,
    validation_rows: np.ndarray | None = None,
) -> WMLM:
    """Encoder and decoder trained together on the labelled sequences only: from scratch, or from a
    copy of ``pretrained``'s encoder and decoder (fine-tuning). With ``validation_rows``, as
    ``fit_end_to_end``: the learning-rate grid (here for encoder and decoder) and the best step."""

    def fit(lr: float) -> WMLM:
        torch.manual_seed(config.seed)
        model = WMLM(model_config, pairs=())
        if pretrained is not None:
            model.wireless.load_state_dict(pretrained.wireless.state_dict())
            model.decoder.load_state_dict(pretrained.decoder.state_dict())
        model.train()

        def loss_of(pick: np.ndarray) -> torch.Tensor:
            channel = _channels(data, rows[pick])
            history, patches, _ = model.encode_channels(channel[:, :-1])
            return model.prediction_loss(history, patches, channel)

        validate = None
        if validation_rows is not None:
            validate = lambda: -prediction_nmse_db(model, data, validation_rows)  # noqa: E731
        params = list(model.wireless.parameters()) + list(model.decoder.parameters())
        selected = _loop(config.steps(len(rows)), len(rows), config, [(params, lr)], loss_of, model, validate)
        model.selection = {"lr": lr, **selected}
        return model.eval()

    return _best_over_lrs(config, validation_rows is not None, fit)  # type: ignore[return-value]


@torch.no_grad()
def prediction_nmse_db(model: WMLM, data: WirelessData, rows: np.ndarray) -> float:
    """Mean NMSE (dB) of predicting the last snapshot from the ones before it."""
    errors = []
    for s in range(0, len(rows), 128):
        prediction, target = model.predict_last(_channels(data, rows[s : s + 128]))
        errors.append(nmse(prediction, target))
    return float(10 * torch.log10(torch.cat(errors).mean()))


def copy_last_nmse_db(data: WirelessData, rows: np.ndarray, config: ModelConfig) -> float:
    """The reference every predictor must beat: the next snapshot equals the last one."""
    errors = []
    for s in range(0, len(rows), 256):
        channel = _channels(data, rows[s : s + 256])
        previous = channel_tokens(channel[:, -2], config)[0]
        errors.append(nmse(previous, next_snapshot_targets(channel, config)[:, -1]))
    return float(10 * torch.log10(torch.cat(errors).mean()))


# -- retrieval ---------------------------------------------------------------------------------


@torch.no_grad()
def embeddings(model: WMLM, data: WirelessData, rows: np.ndarray, modalities: list[str]) -> dict[str, torch.Tensor]:
    out: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    for s in range(0, len(rows), 128):
        batch = tensors(data, rows[s : s + 128], model.config.text_length)
        batch["channel"] = batch["channel"][:, -1:]
        for m in modalities:
            out[m].append(model.embed(m, batch))
    return {m: torch.cat(v) for m, v in out.items()}


def recall_at_1(query: torch.Tensor, gallery: torch.Tensor) -> float:
    """Share of queries whose nearest gallery item (cosine) is their own pair."""
    nearest = (query @ gallery.T).argmax(dim=1)
    return float((nearest == torch.arange(len(query))).float().mean())
