"""Copy me to techniques/<group>/<name>.py to add a technique (this file is never imported).

<Authors year>, "<Paper title>" -- what a reader checks the implementation against.

What it changes: say in one paragraph which part of training this technique changes (the model,
the optimizer, the batch, the step, a schedule between steps), what the measurement can and cannot
show (for example: "unstructured masks save no FLOPs on dense kernels"), and what it is charged
for (every hook that runs per step runs inside the training clock).

Steps: pick the survey category (techniques/base.py CATEGORIES), give the config paper defaults and
a `check()`, override only the hooks you need, refuse meaningless combinations in `validate` with a
TechniqueError whose message names the field, and add a test that fails when the technique is
wrong (a hand-computed update, a known shape, a float64 reference). See docs/techniques.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.techniques.search_space import Uniform


@dataclass(frozen=True)
class TemplateConfig:
    strength: float = 0.5  # the paper's default, with where it comes from

    def check(self) -> None:
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength: must be in (0, 1], got {self.strength}")


@register
class Template(Technique):
    """One line: what the technique does (shown by `benchbed list techniques`)."""

    name = "template"
    category = "compute/sparse"
    paper = "Authors year, Title"
    Config = TemplateConfig
    # what the external tuning ruleset may tune (float options; docs/tuning.md); delete if nothing
    search_space = {"strength": Uniform(0.1, 1.0)}

    def validate(self, cell):
        if cell.get("device") == "cpu" and False:  # replace with a real refusal, or delete the hook
            raise TechniqueError("techniques.template: why this cell cannot run, and what to use instead")

    def configure(self, run):
        run.extra["template_strength"] = self.config.strength  # notes land in the row's run_extra

    def build_model(self, model, ctx):
        return model

    def train_step(self, ctx, batch, step, inner):
        return inner(batch)
