"""Tensors across the engine core's ZMQ boundary (``edgecloud.llm.messages``): KV blocks and LoRA
adapters travel as a msgpack extension; what arrives equals what was sent and owns its memory."""

from __future__ import annotations

import torch

from edgecloud.llm import messages


def test_tensors_arrive_equal_and_own_their_memory() -> None:
    sent = [torch.randn(3, 5), torch.randn(4, 6).t(), torch.randn(7).to(torch.bfloat16), torch.arange(9),
            torch.empty(0, 3), torch.tensor(3.0)]
    frame = messages.encode(messages.ControlReply(1, {"tensors": sent}))
    got = messages.decode_from_core(frame).result["tensors"]
    for a, b in zip(sent, got, strict=True):
        assert b.dtype == a.dtype and b.shape == a.shape and torch.equal(a, b)
    got[0].add_(1.0)  # writable, and a copy: neither the sender's tensor nor the frame changes
    assert torch.equal(got[0], sent[0] + 1.0)
    again = messages.decode_from_core(frame).result["tensors"]
    assert torch.equal(again[0], sent[0])
