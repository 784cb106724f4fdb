"""rlhf-tiny: the preference task, the reward model, DPO, and the pipeline's stages as ordered
cells whose later stage reads the earlier one's checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from workloads.tiny_finetune import POLICY, RM_TEST, TASK  # registers the tiny workloads

from benchbed import plan
from benchbed.models.gpt import GPT
from benchbed.plan import ScenarioError
from benchbed.results import store
from benchbed.run.runner import plan as runner_plan
from benchbed.run.runner import run_scenario
from benchbed.techniques import REGISTRY, TechniqueError, build_config
from benchbed.techniques.compute.dpo import dpo_loss
from benchbed.worker.cell import train_cell
from benchbed.workloads import Batch
from benchbed.workloads.data.preference import PairSource, PreferenceTask
from benchbed.workloads.rlhf import RLHF_POLICY, RewardModel, kl_along_samples, response_logprobs


# -- the task --------------------------------------------------------------------------------------
def test_true_reward_is_the_fraction_of_good_tokens_and_pairs_are_ranked_by_it():
    task = PreferenceTask(vocab_size=8, prompt_len=3, response_len=4, seed=3)
    good = task.good.nonzero().flatten().tolist()
    bad = (~task.good).nonzero().flatten().tolist()
    assert len(good) == len(bad) == 4
    responses = torch.tensor([[good[0], good[1], bad[0], bad[1]], [good[2]] * 4])
    assert task.true_reward(torch.zeros(2, 3, dtype=torch.long), responses).tolist() == [0.5, 1.0]
    pairs = task.ranked_pairs(64, torch.Generator().manual_seed(0))
    chosen = task.true_reward(pairs[:, 0, :3], pairs[:, 0, 3:])
    rejected = task.true_reward(pairs[:, 1, :3], pairs[:, 1, 3:])
    assert pairs.shape == (64, 2, 7) and bool((chosen > rejected).all())
    assert torch.equal(pairs[:, 0, :3], pairs[:, 1, :3])  # two responses to one prompt


# -- DPO -------------------------------------------------------------------------------------------
def test_dpo_loss_equals_the_hand_computed_value():
    policy_chosen, policy_rejected = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    reference_chosen, reference_rejected = torch.tensor([-1.5, -2.5]), torch.tensor([-1.0, -2.0])
    # pair 1: margin (-1 + 1.5) - (-2 + 1) = 1.5, beta 0.5 -> log(1 + e^-0.75) = 0.386871
    # pair 2: margin (-3 + 2.5) - (-1 + 2) = -1.5 -> log(1 + e^0.75) = 1.136871
    loss = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.5)
    assert float(loss) == pytest.approx((0.386871 + 1.136871) / 2, abs=1e-6)


def test_response_logprobs_sum_only_the_response_tokens():
    torch.manual_seed(0)
    model = GPT(POLICY)
    seqs = torch.randint(0, 8, (3, TASK.length))
    logp = torch.log_softmax(model(seqs[:, :-1]), -1)
    by_hand = sum(
        logp[:, t - 1].gather(-1, seqs[:, t, None]).squeeze(-1) for t in range(TASK.prompt_len, TASK.length)
    )
    assert torch.allclose(response_logprobs(model, seqs, TASK.prompt_len), by_hand, atol=1e-5)
    assert torch.allclose(kl_along_samples(model, model, seqs, TASK.prompt_len), torch.zeros(3), atol=1e-6)


def test_dpo_needs_a_policy_workload_and_the_policy_needs_dpo(tmp_path):
    dpo = REGISTRY["dpo"](build_config(REGISTRY["dpo"], {}, "test"))
    with pytest.raises(TechniqueError, match="reward model"):
        dpo.validate({"workload": "lm-tiny", "techniques": ["dpo"]})
    with pytest.raises(ValueError, match="dpo"):
        RLHF_POLICY.validate({"workload": "rlhf-tiny", "techniques": ["adamw"]})


# -- the reward model ------------------------------------------------------------------------------
def test_reward_model_reaches_high_accuracy_on_held_out_pairs():
    torch.manual_seed(0)
    model = RewardModel(GPT(POLICY), TASK.prompt_len)
    source = PairSource(TASK)
    held_out = source.val_batches(64, 1, 256)
    before = 1.0 - RM_TEST.evaluate(model, held_out, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    batches = source.train_batches(32, 1, seed=0)
    for _ in range(15):
        pairs, ones = next(batches)
        loss = RM_TEST.loss(model, Batch(pairs, ones))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = 1.0 - RM_TEST.evaluate(model, held_out, torch.device("cpu"))
    assert before < 0.6 < 0.85 <= accuracy  # from chance (a zero head scores every pair 0) to the rule
    assert RM_TEST.result_columns(model)["reward_accuracy"] == accuracy


# -- stages as cells -------------------------------------------------------------------------------
PIPELINE = """
name = "pipe"
device = "cpu"
seeds = [0]
workload = "rlhf-test"
timeout_s = 300
[matrix]
techniques = ["dpo"]
"""


def test_the_later_stage_names_the_earlier_cell_and_runs_after_it(tmp_path):
    path = tmp_path / "pipe.toml"
    path.write_text(PIPELINE + '[[include]]\nworkload = "rlhf-test-rm"\ntechniques = "adamw"\n')
    cells = plan.load(str(path)).cells
    by_workload = {c.workload: c for c in cells}
    rm, policy = by_workload["rlhf-test-rm"], by_workload["rlhf-test"]
    assert policy.inputs == {"rlhf-test-rm": rm.config_key} and not rm.inputs
    assert json.loads(policy.identity()["config_json"])["inputs"] == {"rlhf-test-rm": rm.config_key}
    assert [c.workload for c in plan.stages.order([policy, rm])] == ["rlhf-test-rm", "rlhf-test"]
    assert policy.input_dir("rlhf-test-rm") == rm.output_dir
    # a changed earlier stage changes the later cell's identity (a resumed run retrains it)
    path.write_text(PIPELINE + '[[include]]\nworkload = "rlhf-test-rm"\ntechniques = "lion"\n')
    changed = {c.workload: c for c in plan.load(str(path)).cells}["rlhf-test"]
    assert changed.cell_id != policy.cell_id


def test_a_stage_without_its_earlier_stage_is_refused_at_load_time(tmp_path):
    path = tmp_path / "pipe.toml"
    path.write_text(PIPELINE)
    with pytest.raises(
        ScenarioError, match=r"pipe.toml: workload: 'rlhf-test' \(seed 0\) reads .*'rlhf-test-rm'"
    ):
        plan.load(str(path))
    path.write_text(PIPELINE + '[[include]]\nworkload = "rlhf-test-rm"\ntechniques = ["adamw", "lion"]\n')
    path.write_text(
        PIPELINE
        + '[[include]]\nworkload = "rlhf-test-rm"\ntechniques = "adamw"\n'
        + '[[include]]\nworkload = "rlhf-test-rm"\ntechniques = "lion"\n'
    )
    with pytest.raises(ScenarioError, match="2 configurations"):
        plan.load(str(path))


def test_the_runner_runs_earlier_stages_first(tmp_path):
    path = tmp_path / "pipe.toml"
    path.write_text(PIPELINE + '[[include]]\nworkload = "rlhf-test-rm"\ntechniques = "adamw"\n')
    scenario = plan.load(str(path))
    assert [c.workload for c in scenario.cells] == ["rlhf-test", "rlhf-test-rm"]  # the file's order
    todo, _ = runner_plan(scenario, tmp_path / "out")
    assert [c.workload for c in todo] == ["rlhf-test-rm", "rlhf-test"]


def test_a_stage_whose_input_is_missing_fails_with_one_line(tmp_path):
    path = tmp_path / "pipe.toml"  # the shipped workloads: the cell runs in its own process
    path.write_text(
        PIPELINE.replace("rlhf-test", "rlhf-tiny")
        + '[[include]]\nworkload = "rlhf-tiny-rm"\ntechniques = "adamw"\n'
    )
    scenario = plan.load(str(path))
    out = tmp_path / "out"
    run_scenario(scenario, out, only="rlhf-tiny-adamw_dpo*", progress=False, log=lambda m: None)
    (row,) = store.read_parts(out).values()
    assert row["status"] == "error" and row["workload"] == "rlhf-tiny"
    assert "input missing: stage 'rlhf-tiny-rm' (seed 0)" in row["error"] and "\n" not in row["error"]


@pytest.mark.slow
def test_the_tiny_pipeline_runs_in_order_and_reports_the_pipeline(tmp_path):
    path = tmp_path / "pipe.toml"
    path.write_text(PIPELINE + '[[include]]\nworkload = "rlhf-test-rm"\ntechniques = "adamw"\n')
    rows = {}
    for cell in plan.stages.order(plan.load(str(path)).cells):  # the worker's path, in this process
        row, _, _ = train_cell(cell.to_spec(), out_dir=tmp_path)
        rows[row["workload"]] = row
    rm, policy = rows["rlhf-test-rm"], rows["rlhf-test"]
    assert rm["status"] in ("reached", "budget_exhausted") and 0.0 <= rm["reward_accuracy"] <= 1.0
    assert rm["base_reused"] is False and policy["base_reused"] is True  # one base for both stages
    assert rm["base_key"] == policy["base_key"] and rm["pretrain_time_s"] == policy["pretrain_time_s"]
    assert policy["status"] in ("reached", "budget_exhausted"), policy["error"]
    assert json.loads(policy["stage_inputs_json"])["rlhf-test-rm"]["cell_id"] == rm["cell_id"]
    assert 0.0 <= policy["mean_true_reward"] <= 1.0 and policy["kl_to_reference"] >= -1e-6
    assert rm["status"] == policy["status"] == "reached"  # the test targets are easy: plumbing, not quality
    assert policy["pipeline_time_to_target_s"] == pytest.approx(
        rm["time_to_target_s"] + policy["time_to_target_s"]
    )
