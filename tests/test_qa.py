"""First-token accuracy on a toy model that knows the answers of chosen prompts."""

import pytest
import torch
from torch import nn

from data.bios import BiosConfig, documents, qa_items
from data.tokenizer import train_bpe
from metrics.qa import encode_items, first_token_accuracy

CFG = BiosConfig(n_people=24, n_groups=4, max_exposures=4, seed=1)


class LookupModel(nn.Module):
    """Causal toy LM: at position t it predicts `table[ids[:t+1]]` if known, else a wrong token."""

    def __init__(self, table: dict[tuple[int, ...], int], vocab: int):
        super().__init__()
        self.table, self.vocab = table, vocab

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            for t in range(T):
                prefix = tuple(idx[b, : t + 1].tolist())
                answer = self.table.get(prefix)
                # unknown prefixes (including any that contain padding) get a confidently wrong token
                logits[b, t, answer if answer is not None else (hash(prefix) % self.vocab)] = 1.0
        return logits


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(list(documents(CFG)), vocab_size=400)


def _known_table(tokenizer, items, knows):
    prompts, targets = encode_items(tokenizer, items)
    table = {}
    for item, prompt, target in zip(items, prompts, targets, strict=True):
        table[tuple(prompt)] = target if knows(item) else (target + 1) % tokenizer.get_vocab_size()
    return table


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_fta_counts_exactly_the_known_answers(tokenizer, batch_size):
    items = qa_items(CFG)  # 4 groups of 6 people, 36 questions each
    # group 0: all known; group 1: a person's first three attributes; groups 2, 3: none
    knows = {0: lambda it: True, 1: lambda it: it.attribute in ("birth_date", "birth_city", "university")}
    table = _known_table(tokenizer, items, lambda it: knows.get(it.group, lambda _: False)(it))
    model = LookupModel(table, tokenizer.get_vocab_size())
    out = first_token_accuracy(model, tokenizer, items, "cpu", batch_size=batch_size)
    assert out == pytest.approx({
        "qa/fta/g0": 1.0, "qa/fta/g1": 0.5, "qa/fta/g2": 0.0, "qa/fta/g3": 0.0,
        "qa/fta/head": 1.0, "qa/fta/tail": 0.0, "qa/fta/mean": 0.375,
    })


def test_target_is_the_first_answer_token(tokenizer):
    item = qa_items(CFG)[0]
    prompts, targets = encode_items(tokenizer, [item])
    full = tokenizer.encode(item.prompt + item.answer).ids
    assert full[: len(prompts[0])] == prompts[0]
    assert tokenizer.decode([targets[0]]).startswith(" ")
    assert item.answer.startswith(tokenizer.decode([targets[0]]))


def test_merge_across_the_boundary_is_an_error(tokenizer):
    item = qa_items(CFG)[0]
    assert len(tokenizer.encode(" was").ids) == 1  # " was" is one token of this BPE
    # a trailing space in the prompt merges with the answer's first word in the full encoding
    bad = type(item)(item.prompt + " ", "was", item.group, item.attribute, item.person)
    with pytest.raises(ValueError, match="trailing space"):
        first_token_accuracy(LookupModel({}, tokenizer.get_vocab_size()), tokenizer, [bad], "cpu")
    with pytest.raises(ValueError, match="no QA items"):
        first_token_accuracy(LookupModel({}, tokenizer.get_vocab_size()), tokenizer, [], "cpu")
