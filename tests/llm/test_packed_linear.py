"""oneDNN-packed linear layers (llm/layers/packed.py) against torch's own linear."""

from __future__ import annotations

import pytest
import torch

from edgecloud.llm.layers import packed

pytestmark = pytest.mark.skipif(
    not packed.available(torch.float32, torch.device("cpu")), reason="torch built without oneDNN"
)


@pytest.mark.parametrize("rows", [1, 3, 64, 130])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_torch_linear(rows: int, bias: bool) -> None:
    gen = torch.Generator().manual_seed(rows)
    linear = torch.nn.Linear(96, 200, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(200, 96, generator=gen))
        if bias:
            linear.bias.copy_(torch.randn(200, generator=gen))
    x = torch.randn(rows, 96, generator=gen)
    layer = packed.PackedLinear(linear)
    torch.testing.assert_close(layer(x), linear(x), atol=1e-4, rtol=1e-5)
    assert torch.equal(layer.weight, linear.weight.detach())  # unpacked on demand, bit for bit
    torch.testing.assert_close(layer(x.view(1, rows, 96)), linear(x).view(1, rows, 200), atol=1e-4, rtol=1e-5)


def test_pack_linears_swaps_every_dense_linear_and_keeps_a_tied_embedding() -> None:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(50, 16)
            self.block = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.SiLU(), torch.nn.Linear(32, 16))
            self.head = torch.nn.Linear(16, 50, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.block(self.embed(ids)))

    torch.manual_seed(0)
    model = Tiny().eval()
    ids = torch.tensor([1, 7, 49])
    with torch.inference_mode():
        want = model(ids)
        assert packed.pack_linears(model) == 3
        assert not any(type(m) is torch.nn.Linear for m in model.modules())
        torch.testing.assert_close(model(ids), want, atol=1e-4, rtol=1e-5)
    assert model.embed.weight.shape == (50, 16)  # the embedding lookup still has its table


def test_the_switch_turns_packing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLOUD_ONEDNN_LINEAR", "0")
    assert not packed.available(torch.float32, torch.device("cpu"))
    assert not packed.available(torch.float16, torch.device("cpu"))
