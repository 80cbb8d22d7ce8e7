"""recipes_lib.training.fused_head_on_answer_tokens: TRL's fused LM head scores the answer tokens
only on a CPU too, with the same loss and gradients as scoring every position."""

from __future__ import annotations

import pytest
import torch
import trl.trainer.utils as trl_utils
from fixtures_gpt import build_tiny_gpt2
from transformers import AutoModelForCausalLM, TrainingArguments
from trl.kernels import chunked_logprob
from trl.trainer.utils import add_fused_lm_head

from recipes_lib.training import fused_head_on_answer_tokens


def loss_and_grads(model, ids, labels):
    model.zero_grad()
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    out.loss.backward()
    return out.loss.item(), out.log_probs.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_answer_tokens_only_give_the_same_loss_and_gradients(tmp_path, monkeypatch):
    # TRL's own device test (an earlier run in this process may have replaced it), restored after.
    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    model = AutoModelForCausalLM.from_pretrained(build_tiny_gpt2(tmp_path / "gpt2"))
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (4, 24))
    labels = torch.full_like(ids, -100)
    labels[:, -5:] = ids[:, -5:]  # the answer: the last 5 tokens
    assert not trl_utils._use_triton(torch.device("cpu"))  # TRL scores every position on a CPU
    every_position = loss_and_grads(model, ids, labels)

    fused_head_on_answer_tokens(TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True))
    assert trl_utils._use_triton(torch.device("cpu"))  # now only the labelled positions
    answers_only = loss_and_grads(model, ids, labels)
    assert answers_only[0] == pytest.approx(every_position[0], rel=1e-6)
    assert torch.allclose(answers_only[1], every_position[1], atol=1e-6)
    for name, grad in every_position[2].items():
        assert torch.allclose(answers_only[2][name], grad, atol=1e-6), name
