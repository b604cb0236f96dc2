"""A small byte-level BPE tokenizer (GPT-2/Llama-3 style), trained in the test session, so the
workload builders are tested against a real `tokenizers` tokenizer without downloading one."""

from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

WORDS = [
    "the", "a", "an", "of", "to", "in", "on", "for", "with", "from", "edge", "cloud", "model",
    "token", "cache", "prefix", "serve", "request", "stream", "latency", "block", "queue", "server",
    "client", "batch", "prompt", "output", "input", "trace", "replay",
]


def train_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) for i in range(200)]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer().save(str(directory / "tokenizer.json"))
    return directory
