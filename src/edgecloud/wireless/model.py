"""WMLM's networks: one encoder per modality, the wireless-anchored contrastive loss, and a
GPT-style causal decoder that predicts the next channel snapshot from the wireless encoder's tokens.

arXiv 2511.21707 makes the wireless signal the anchor: image, LiDAR and text embeddings are each
pulled towards the wireless embedding of the same instant (InfoNCE, as CLIP/ImageBind), never
towards each other, so any image <-> text alignment that appears is emergent (ImageBind §3).
The wireless encoder is a transformer over channel patches, as LWM's; here the patches are taken
in the angle-delay domain (a unitary 2-D DFT of the antenna x subcarrier grid), where a path is a
peak, and the decoder reuses the encoder's patch tokens, block-causally over time, and predicts
the *change* from the last snapshot it saw (a residual on "copy the last snapshot", which it starts
from exactly: the head is zero-initialised).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgecloud.wireless.text import vocabulary


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 64
    embed_dim: int = 64
    heads: int = 4
    wireless_layers: int = 3
    decoder_layers: int = 2
    text_layers: int = 2
    num_antennas: int = 32
    num_subcarriers: int = 32
    patch_antennas: int = 4
    patch_subcarriers: int = 8
    num_snapshots: int = 4
    image_size: tuple[int, int] = (64, 128)  # (height, width)
    text_length: int = 80
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if self.num_antennas % self.patch_antennas or self.num_subcarriers % self.patch_subcarriers:
            raise ValueError(
                f"patch {self.patch_antennas}x{self.patch_subcarriers} must tile the channel "
                f"{self.num_antennas}x{self.num_subcarriers}"
            )
        if self.image_size[0] % 16 or self.image_size[1] % 16:
            raise ValueError(f"image_size must be multiples of 16, got {self.image_size}")

    @property
    def num_patches(self) -> int:
        return (self.num_antennas // self.patch_antennas) * (self.num_subcarriers // self.patch_subcarriers)

    @property
    def patch_values(self) -> int:
        return 2 * self.patch_antennas * self.patch_subcarriers

    def to_json(self) -> dict[str, object]:
        return asdict(self)


# CPU config: trains in minutes on two cores. The GPU one is the same architecture, wider and deeper.
CONFIGS: dict[str, ModelConfig] = {
    "cpu": ModelConfig(),
    "gpu": ModelConfig(dim=256, embed_dim=128, heads=8, wireless_layers=8, decoder_layers=6, text_layers=4),
}


def _block(dim: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        dim, heads, dim_feedforward=4 * dim, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def channel_tokens(channel: torch.Tensor, config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise and patchify channels.

    ``channel`` (..., N, K, 2) real/imag. Returns patches (..., P, patch_values) of the unit-power
    angle-delay channel, the log-power (...,) in units of 10 dB, and the RMS (...,) divided out.
    """
    h = torch.complex(channel[..., 0].float(), channel[..., 1].float())
    power = h.abs().square().mean(dim=(-2, -1)).clamp_min(1e-12)
    rms = power.sqrt()
    g = torch.fft.fft2(h / rms[..., None, None], norm="ortho")
    return _patchify(g, config), torch.log10(power), rms


def _patchify(g: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    pa, ps = config.patch_antennas, config.patch_subcarriers
    lead = g.shape[:-2]
    x = torch.stack([g.real, g.imag], dim=-1)  # (..., N, K, 2)
    x = x.reshape(*lead, config.num_antennas // pa, pa, config.num_subcarriers // ps, ps, 2)
    x = x.movedim(-4, -3)  # (..., N/pa, K/ps, pa, ps, 2)
    return x.reshape(*lead, config.num_patches, config.patch_values)


class WirelessEncoder(nn.Module):
    """Transformer over angle-delay patches, with a [CLS] token and a received-power token."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.patch = nn.Linear(config.patch_values, d)
        self.power = nn.Linear(1, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.position = nn.Parameter(torch.randn(1, config.num_patches + 2, d) * 0.02)
        self.blocks = _block(d, config.heads, config.wireless_layers, config.dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, patches: torch.Tensor, log_power: torch.Tensor) -> torch.Tensor:
        """(B, P, V) patches, (B,) log-power -> (B, P + 2, d) tokens: [CLS], power, patches."""
        b = patches.shape[0]
        x = torch.cat(
            [self.cls.expand(b, -1, -1), self.power(log_power[:, None, None] / 2 + 5), self.patch(patches)], dim=1
        )
        return self.norm(self.blocks(x + self.position))

    @staticmethod
    def features(tokens: torch.Tensor) -> torch.Tensor:
        """What heads see: [CLS] and the mean patch token, side by side (B, 2d)."""
        return torch.cat([tokens[:, 0], tokens[:, 2:].mean(dim=1)], dim=-1)


class ImageEncoder(nn.Module):
    """A small CNN: four stride-2 convolutions, then a linear map of the (flattened) feature map,
    so where things are in the picture survives into the embedding."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        widths = (3, 24, 48, 64, 64)
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(widths):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        h, w = config.image_size
        self.out = nn.Linear(64 * (h // 16) * (w // 16), config.dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, d)."""
        x = image.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return self.out(self.convs(x).flatten(1))


class PointEncoder(nn.Module):
    """PointNet: a shared per-point MLP, max-pooled, then an MLP."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.point = nn.Sequential(nn.Linear(4, 32), nn.GELU(), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 128))
        self.out = nn.Sequential(nn.GELU(), nn.Linear(128, config.dim))

    def forward(self, points: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        """(B, M, 4) points (x, y, z, intensity) and (B, 3) sensor origin -> (B, d)."""
        xyz = (points[..., :3] - origin[:, None, :]) / 30.0
        x = torch.cat([xyz, points[..., 3:4]], dim=-1)
        return self.out(self.point(x).amax(dim=1))


class TextEncoder(nn.Module):
    """A tiny transformer over the word tokens; the [CLS] output is the sentence."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(vocabulary()), config.dim, padding_idx=0)
        self.position = nn.Parameter(torch.randn(1, config.text_length, config.dim) * 0.02)
        self.blocks = _block(config.dim, config.heads, config.text_layers, config.dropout)
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.position[:, : ids.shape[1]]
        return self.norm(self.blocks(x, src_key_padding_mask=ids == 0))[:, 0]


class ChannelDecoder(nn.Module):
    """GPT-style: the encoder's tokens of snapshots 0..t attend causally (block by snapshot) and
    predict how the angle-delay patches change from snapshot t to snapshot t + 1.

    The head starts at zero, so an untrained predictor is the copy-last reference and training can
    only learn what copying misses (the per-path phase rotation, the drift of the delays).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.time = nn.Parameter(torch.randn(1, config.num_snapshots, 1, config.dim) * 0.02)
        self.blocks = _block(config.dim, config.heads, config.decoder_layers, config.dropout)
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.patch_values)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, P + 2, d) encoder tokens -> (B, T, P, V): the predicted change from t to t + 1."""
        b, t, n, d = tokens.shape
        x = (tokens + self.time[:, :t]).reshape(b, t * n, d)
        step = torch.arange(t, device=tokens.device).repeat_interleave(n)
        mask = step[None, :] > step[:, None]  # True = may not attend (a later snapshot)
        y = self.norm(self.blocks(x, mask=mask))
        return self.head(y.reshape(b, t, n, d)[:, :, 2:])


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between two batches of L2-normalised embeddings (row i pairs with row i)."""
    logits = logit_scale.exp().clamp(max=100) * a @ b.T
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


ANCHOR_PAIRS = (("wireless", "image"), ("wireless", "lidar"), ("wireless", "text"))
DIRECT_PAIRS = (("image", "text"),)


class WMLM(nn.Module):
    """The four encoders, their projections into one space, and the channel decoder.

    ``pairs`` are the contrastive pairs trained (the anchored default, ``DIRECT_PAIRS`` for the
    ablation, or none for a channel predictor alone); encoders of unpaired modalities are not built.
    """

    def __init__(self, config: ModelConfig, pairs: tuple[tuple[str, str], ...] = ANCHOR_PAIRS) -> None:
        super().__init__()
        self.config = config
        self.pairs = pairs
        used = {m for pair in pairs for m in pair}
        self.wireless = WirelessEncoder(config)
        self.decoder = ChannelDecoder(config)
        self.image = ImageEncoder(config) if "image" in used else None
        self.lidar = PointEncoder(config) if "lidar" in used else None
        self.text = TextEncoder(config) if "text" in used else None
        dims = {"wireless": 2 * config.dim, "image": config.dim, "lidar": config.dim, "text": config.dim}
        self.project = nn.ModuleDict({m: nn.Linear(dims[m], config.embed_dim) for m in sorted(used)})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_channels(self, channel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, N, K, 2) -> encoder tokens (B, T, P + 2, d), patches (B, T, P, V), rms (B, T)."""
        b, t = channel.shape[:2]
        patches, log_power, rms = channel_tokens(channel, self.config)
        tokens = self.wireless(patches.flatten(0, 1), log_power.flatten())
        return tokens.reshape(b, t, *tokens.shape[1:]), patches, rms

    def embed(
        self, modality: str, batch: dict[str, torch.Tensor], wireless_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        if modality == "wireless":
            if wireless_tokens is None:
                wireless_tokens = self.encode_channels(batch["channel"][:, -1:])[0][:, -1]
            feature = WirelessEncoder.features(wireless_tokens)
        elif modality == "image":
            feature = self.image(batch["image"])
        elif modality == "lidar":
            feature = self.lidar(batch["lidar"], batch["bs_position"])
        elif modality == "text":
            feature = self.text(batch["text"])
        else:
            raise ValueError(f"modality must be wireless, image, lidar or text, got {modality!r}")
        return F.normalize(self.project[modality](feature), dim=-1)

    def next_snapshots(self, history: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """(B, T, P + 2, d) tokens and (B, T, P, V) unit-power patches of snapshots 0..T-1 ->
        (B, T, P, V): snapshot t + 1 in the units of ``next_snapshot_targets`` (snapshot t + its change)."""
        return patches + self.decoder(history)

    def prediction_loss(self, history: torch.Tensor, patches: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
        """Next-snapshot MSE in the angle-delay domain: ``history`` and ``patches`` are the encoder
        tokens and patches of snapshots 0..T-2 of ``channel``; each target is scaled by the RMS of
        the snapshot before it."""
        return F.mse_loss(self.next_snapshots(history, patches), next_snapshot_targets(channel, self.config))

    def predict_last(self, channel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prediction of the last snapshot from the others, and its target (both (B, P, V))."""
        history, patches, _ = self.encode_channels(channel[:, :-1])
        return self.next_snapshots(history, patches)[:, -1], next_snapshot_targets(channel, self.config)[:, -1]

    def forward(self, batch: dict[str, torch.Tensor], predict_rows: int = 0) -> dict[str, torch.Tensor]:
        """Losses on a batch: InfoNCE per pair; ``predict`` on the first ``predict_rows`` sequences."""
        losses: dict[str, torch.Tensor] = {}
        cache: dict[str, torch.Tensor] = {}
        channel = batch.get("channel")
        if "wireless" in self.project:
            last = self.encode_channels(channel[:, -1:])[0][:, -1]
            cache["wireless"] = self.embed("wireless", batch, last)
        if predict_rows > 0:
            history, patches, _ = self.encode_channels(channel[:predict_rows, :-1])
            losses["predict"] = self.prediction_loss(history, patches, channel[:predict_rows])
        for a, b in self.pairs:
            for m in (a, b):
                if m not in cache:
                    cache[m] = self.embed(m, batch)
            losses[f"{a}-{b}"] = info_nce(cache[a], cache[b], self.logit_scale)
        if not losses:
            raise ValueError("nothing to train: no contrastive pairs and predict_rows == 0")
        losses["total"] = sum(losses.values())
        return losses


def next_snapshot_targets(channel: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """(B, T, N, K, 2) -> (B, T - 1, P, V): snapshot t + 1 in angle-delay patches, divided by the
    RMS of snapshot t (what a predictor standing at t can know)."""
    h = torch.complex(channel[..., 0].float(), channel[..., 1].float())
    rms = h.abs().square().mean(dim=(-2, -1)).clamp_min(1e-12).sqrt()
    g = torch.fft.fft2(h[:, 1:] / rms[:, :-1, None, None], norm="ortho")
    return _patchify(g, config)


def nmse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample normalised MSE over all but the first axis."""
    dims = tuple(range(1, target.dim()))
    return (prediction - target).square().sum(dim=dims) / target.square().sum(dim=dims).clamp_min(1e-12)
