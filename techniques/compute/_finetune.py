"""Checks the techniques that edit a GPT share: the workload's model family, and whether it
starts from a pretrained base (fine-tuning techniques mean nothing on a random initialisation)."""

from __future__ import annotations

from benchbed.techniques.base import TechniqueError
from benchbed.workloads import WORKLOADS


def require_gpt(technique: str, cell: dict, *, pretrained: bool | None = None) -> None:
    """Refuse a workload that is not a GPT, or (``pretrained=True``) one without a pretrained base,
    or (``pretrained=False``) one with a pretrained base, with one line naming the workload."""
    name = cell.get("workload", "")
    workload = WORKLOADS.get(name)
    if workload is None:
        return
    if workload.family != "gpt":
        raise TechniqueError(
            f"techniques.{technique}: edits a GPT; workload '{name}' is a {workload.family or 'other'} model"
        )
    if pretrained is True and workload.base is None:
        finetune = ", ".join(
            sorted(n for n, w in WORKLOADS.items() if w.base is not None and w.family == "gpt")
        )
        raise TechniqueError(
            f"techniques.{technique}: fine-tunes a pretrained base; workload '{name}' trains from a random "
            f"initialisation (use a fine-tuning workload: {finetune})"
        )
    if pretrained is False and workload.base is not None:
        raise TechniqueError(
            f"techniques.{technique}: trains a model from scratch; workload '{name}' fine-tunes a pretrained base"
        )


def refuse_model_rebuilders(technique: str, cell: dict) -> None:
    """A technique that rebuilds the model mid-run (compression, a structured ticket) cannot share a
    cell with one that holds on to the model's blocks or wraps it across processes."""
    from benchbed.techniques.base import REGISTRY

    for other in cell.get("techniques", ()):
        cls = REGISTRY.get(other)
        if other == technique or cls is None:
            continue
        if (
            cls.category
            in (
                "compute/incremental",
                "memory/parallelism",
                "memory/parameter_efficient",
                "compute/sparse",
                "compute/overparameterization",
                "compute/fine_tuning",
            )
            or cls.wraps_model
        ):
            raise TechniqueError(
                f"techniques: '{technique}' rebuilds the model mid-run and cannot be combined with '{other}'"
            )
