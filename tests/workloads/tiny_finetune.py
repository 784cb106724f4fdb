"""Tiny fine-tuning and RLHF workloads for the tests: the real classes, shapes that train in seconds."""

from __future__ import annotations

import dataclasses

from benchbed.models.gpt import GPTConfig
from benchbed.workloads import WORKLOADS, register
from benchbed.workloads.data import MarkovCopySource
from benchbed.workloads.data.preference import ChainSource, PairSource, PreferenceTask, PromptSource
from benchbed.workloads.finetune import FineTuneWorkload
from benchbed.workloads.lm import LanguageModelWorkload
from benchbed.workloads.rlhf import PolicyWorkload, RewardModelWorkload

TINY = GPTConfig(vocab_size=13, seq_len=7, n_layer=2, n_head=2, d_model=16)

BASE = LanguageModelWorkload(
    name="ft-test-base",
    description="corpus A for the fine-tuning tests",
    model=TINY,
    make_data=lambda: MarkovCopySource(vocab_size=13, prefix_len=4),
    data_label="markov-copy V=13 prefix=4",
    batch_size=8,
    lr=1e-2,
    weight_decay=0.0,
    warmup_frac=0.0,
    budget_tokens=8 * 7 * 6,
    target_loss=0.0,
    eval_every_tokens=10**9,
    val_sequences=16,
)


def _register(workload):
    return WORKLOADS[workload.name] if workload.name in WORKLOADS else register(workload)


FT_TEST = _register(
    FineTuneWorkload(
        name="ft-test",
        description="task B for the fine-tuning tests",
        model=TINY,
        base=BASE,
        make_data=lambda: MarkovCopySource(vocab_size=13, prefix_len=4, seed=77),
        data_label="markov-copy V=13 prefix=4 seed 77",
        batch_size=8,
        lr=1e-2,
        weight_decay=0.0,
        warmup_frac=0.0,
        budget_tokens=8 * 7 * 5,
        target_loss=0.01,
        eval_every_tokens=8 * 7 * 5,
        val_sequences=16,
    )
)

TASK = PreferenceTask(vocab_size=8, prompt_len=3, response_len=6, branching=4, seed=3)
POLICY = GPTConfig(vocab_size=8, seq_len=TASK.length, n_layer=1, n_head=2, d_model=16)
RLHF_BASE = dataclasses.replace(
    BASE,
    name="rlhf-test-base",
    model=POLICY,
    make_data=lambda: ChainSource(TASK),
    data_label="chain",
    budget_tokens=8 * 9 * 6,
)
RM_TEST = _register(
    RewardModelWorkload(
        name="rlhf-test-rm",
        description="stage 1 for the tests",
        task=TASK,
        policy=POLICY,
        base=RLHF_BASE,
        make_data=lambda: PairSource(TASK),
        data_label="pairs",
        batch_size=16,
        lr=1e-2,
        weight_decay=0.0,
        warmup_frac=0.0,
        budget_tokens=16 * 4,
        target_loss=0.3,
        eval_every_tokens=16 * 4,
        val_sequences=32,
    )
)
POLICY_TEST = _register(
    PolicyWorkload(
        name="rlhf-test",
        description="stage 2 for the tests",
        task=TASK,
        policy=POLICY,
        reward_stage="rlhf-test-rm",
        needs=("rlhf-test-rm",),
        base=RLHF_BASE,
        make_data=lambda: PromptSource(TASK),
        data_label="prompts",
        batch_size=8,
        lr=1e-3,
        weight_decay=0.0,
        warmup_frac=0.0,
        budget_tokens=8 * 3,
        target_loss=0.95,
        eval_every_tokens=8 * 3,
        val_sequences=16,
    )
)
