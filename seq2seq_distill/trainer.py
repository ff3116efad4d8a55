"""The one distillation step, shared by :class:`DistillationTrainer` and :class:`Seq2SeqDistillationTrainer`.

``compute_loss`` runs the student, runs the frozen teacher only when some term needs it, asks either model for
hidden states or attentions only when some term uses them, and mixes the terms with the weights of
:class:`~seq2seq_distill.arguments.DistillationSettings`. Everything else (the loop, accumulation, mixed
precision, checkpoints, distributed runs, generation) is the Trainer's.

Normalization: each term is a sum over its positions divided by the count of those positions in the *whole
optimizer step*: target-side terms (CE, KD, decoder features) by the Trainer's ``num_items_in_batch``, source-side
terms (encoder features, causal-LM features) by the step's count of non-padding input tokens, gathered the same way.
Summing micro-batch losses therefore gives exactly the full-batch loss, with any padding.
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, Seq2SeqTrainer, Trainer

from .arguments import DistillationSettings
from .errors import InputError
from .families import Stack, family_of, num_layers
from .layer_maps import check_layer_map, spread_layers
from .losses import (
    attention_transfer_loss,
    cross_entropy_sum,
    hidden_state_loss,
    logit_distillation_loss,
    norm_statistics_loss,
)
from .modeling import freeze_teacher, load_model, output_rows, resolve_teacher_dtype, shared_output_size, task_of_model

logger = logging.getLogger(__name__)

PROJECTIONS_ATTR = "distillation_projections"
TERM_WEIGHTS = {
    "ce_loss": "ce_weight",
    "kd_loss": "kd_weight",
    "hidden_loss": "hidden_weight",
    "attention_loss": "attention_weight",
    "norm_loss": "norm_weight",
}
_FEATURE_OUTPUT_KEYS = (
    "hidden_states",
    "attentions",
    "encoder_hidden_states",
    "encoder_attentions",
    "decoder_hidden_states",
    "decoder_attentions",
    "cross_attentions",
)


@dataclass(frozen=True)
class TermPlan:
    """Which terms are on; a term with weight 0 is off and costs nothing."""

    ce: bool
    kd: bool
    hidden: bool
    attention: bool
    norm: bool

    @classmethod
    def from_settings(cls, settings: DistillationSettings) -> TermPlan:
        return cls(
            ce=settings.ce_weight > 0,
            kd=settings.kd_weight > 0,
            hidden=settings.hidden_weight > 0,
            attention=settings.attention_weight > 0,
            norm=settings.norm_weight > 0,
        )

    @property
    def needs_teacher(self) -> bool:
        return self.kd or self.hidden or self.attention or self.norm

    @property
    def needs_hidden_states(self) -> bool:
        return self.hidden or self.norm

    @property
    def needs_layer_pairs(self) -> bool:
        return self.hidden or self.attention or self.norm


@dataclass(frozen=True)
class StackPair:
    """A student stack, its teacher counterpart, and the teacher layer behind each student layer."""

    student: Stack
    teacher: Stack
    layer_map: tuple[int, ...]

    @property
    def on_target_side(self) -> bool:
        """Seq2seq decoders sit on the label positions; every other stack on the input tokens."""
        return self.student.cross_attentions_key is not None


@dataclass
class StepPositions:
    """Boolean masks of the positions each side's terms sum over, and their step-wide counts."""

    target_mask: torch.Tensor  # [B, T] label positions (seq2seq, causal LM: shifted) or [B] examples
    source_mask: torch.Tensor  # [B, S] non-padding input tokens
    target_count: torch.Tensor
    source_count: torch.Tensor


class DistillationMixin:
    """Adds ``teacher_model=`` and the distillation ``compute_loss`` to a Trainer class."""

    # Every term is divided by step-wide counts, so the Trainer must not divide by the accumulation steps again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, teacher_model: PreTrainedModel | str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.distillation = DistillationSettings.from_arguments(self.args)
        self.plan = TermPlan.from_settings(self.distillation)
        student = self.accelerator.unwrap_model(self.model)
        self.task = task_of_model(student)
        self.teacher = self._setup_teacher(teacher_model)
        self.output_size = self._check_outputs(student)
        self.stack_pairs = self._pair_layers(student)
        self._attach_projections(student)
        if self.plan.attention:
            # sdpa and flash kernels never materialize attention maps; only eager attention can return them.
            for model in (student, self.teacher):
                model.set_attn_implementation("eager")
        teacher_forward = inspect.signature(self.teacher.forward).parameters if self.teacher is not None else {}
        self._teacher_input_names = set(teacher_forward)
        self._step_source_tokens: torch.Tensor | None = None
        self._term_sums: dict[str, dict[str, torch.Tensor]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._term_steps: dict[str, set | int] = {"train": set(), "eval": 0}

    # ---- setup -------------------------------------------------------------------------------------------------

    def _setup_teacher(self, teacher_model: PreTrainedModel | str | None) -> PreTrainedModel | None:
        if teacher_model is None:
            if self.plan.needs_teacher:
                raise InputError(
                    "teacher_model is required when kd_weight, hidden_weight, attention_weight or norm_weight > 0; "
                    "pass teacher_model= or set those weights to 0"
                )
            return None
        if isinstance(teacher_model, str):
            teacher_model = load_model(teacher_model, self.task)
        teacher_task = task_of_model(teacher_model)
        if teacher_task != self.task:
            raise InputError(
                f"the student is a {self.task} model but the teacher is a {teacher_task} model; use a teacher with "
                "the same kind of head"
            )
        dtype = resolve_teacher_dtype(self.distillation.teacher_dtype, self.args.device, self.args.bf16, self.args.fp16)
        return freeze_teacher(teacher_model, self.args.device, dtype)

    def _check_outputs(self, student: PreTrainedModel) -> int | None:
        """The number of output rows both models share (the logits the KD term compares)."""
        if self.teacher is None:
            return None
        tokenizer = self.processing_class
        tokenizer_size = len(tokenizer) if tokenizer is not None and hasattr(tokenizer, "__len__") else None
        return shared_output_size(output_rows(student), output_rows(self.teacher), tokenizer_size, self.task)

    def _pair_layers(self, student: PreTrainedModel) -> tuple[StackPair, ...]:
        if not self.plan.needs_layer_pairs:
            return ()
        student_family, teacher_family = family_of(student.config), family_of(self.teacher.config)
        student_roles = [stack.role for stack in student_family.stacks]
        teacher_roles = [stack.role for stack in teacher_family.stacks]
        if student_roles != teacher_roles:
            raise InputError(
                f"feature distillation cannot map layers between a {student_family.name} student (stacks: "
                f"{', '.join(student_roles)}) and a {teacher_family.name} teacher (stacks: {', '.join(teacher_roles)}); "
                "set hidden_weight, attention_weight and norm_weight to 0"
            )
        recorded = getattr(student.config, "student_layer_map", None) or {}
        pairs = []
        for student_stack, teacher_stack in zip(student_family.stacks, teacher_family.stacks, strict=True):
            student_layers = num_layers(student.config, student_stack)
            teacher_layers = num_layers(self.teacher.config, teacher_stack)
            explicit = getattr(self.distillation, student_stack.map_argument)
            candidate = recorded.get(student_stack.role)
            if explicit is not None:
                layer_map = check_layer_map(explicit, teacher_layers, student_layers, student_stack.map_argument)
            elif candidate is not None and len(candidate) == student_layers and max(candidate) < teacher_layers:
                layer_map = list(candidate)
            else:
                if student_layers > teacher_layers:
                    raise InputError(
                        f"the student has {student_layers} {student_stack.role} layers but the teacher only "
                        f"{teacher_layers}; give --{student_stack.map_argument} to pair them"
                    )
                layer_map = spread_layers(teacher_layers, student_layers)
            pairs.append(StackPair(student_stack, teacher_stack, tuple(layer_map)))
        return tuple(pairs)

    def _attach_projections(self, student: PreTrainedModel) -> None:
        """Learned student->teacher projections for hidden-state matching when the hidden sizes differ.

        They are registered as a submodule of the student, so the Trainer's optimizer, DDP wrapper, checkpoints
        and resume all treat them as part of the student, and ``save_pretrained`` stores them with it.
        """
        if not self.plan.hidden:
            return
        student_hidden = getattr(student.config, family_of(student.config).hidden_size_attr)
        teacher_hidden = getattr(self.teacher.config, family_of(self.teacher.config).hidden_size_attr)
        if student_hidden == teacher_hidden:
            return
        if self.optimizer is not None:
            logger.warning("an optimizer was passed in: add the student's %s parameters to it", PROJECTIONS_ATTR)
        reference = next(student.parameters())
        projections = nn.ModuleDict(
            {pair.student.role: nn.Linear(student_hidden, teacher_hidden) for pair in self.stack_pairs}
        ).to(device=reference.device, dtype=reference.dtype)
        student.add_module(PROJECTIONS_ATTR, projections)
        logger.info("hidden sizes differ (%d vs %d): training a projection per stack", student_hidden, teacher_hidden)

    # ---- step-wide counts --------------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Count target and source positions over every micro-batch of the optimizer step."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        target = sum(self._positions(batch)[0].sum() for batch in batch_samples).to(device)
        source = sum(self._positions(batch)[1].sum() for batch in batch_samples).to(device)
        if self._counts_are_global():
            target, source = self.accelerator.gather(torch.stack([target, source]).view(1, 2)).sum(0)
        self._step_source_tokens = source
        return batch_samples, target

    def _counts_are_global(self) -> bool:
        return self.args.average_tokens_across_devices and self.args.world_size > 1

    def _positions(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(target_mask, source_mask) of a batch, as the terms below select them."""
        labels = inputs.get("labels")
        input_ids = inputs.get("input_ids")
        source_mask = inputs.get("attention_mask")
        if source_mask is None:
            source_mask = torch.ones_like(input_ids)
        source_mask = source_mask.bool()
        if self.task == "causal_lm":
            target_mask = labels[:, 1:] != -100 if labels is not None else source_mask[:, 1:]
        elif labels is not None:
            target_mask = labels != -100
        elif self.task == "classification":
            target_mask = torch.ones(source_mask.shape[0], dtype=torch.bool, device=source_mask.device)
        else:
            raise InputError("seq2seq distillation needs labels to build the decoder inputs; add a 'labels' column")
        return target_mask, source_mask

    # ---- the step ----------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        student = self.accelerator.unwrap_model(model)
        labels = inputs.get("labels")
        model_inputs = {name: value for name, value in inputs.items() if name != "labels"}
        if self.task == "seq2seq" and "decoder_input_ids" not in model_inputs:
            # Built here rather than by the model so the student skips its own (unused) vocabulary-wide loss.
            model_inputs["decoder_input_ids"] = student.prepare_decoder_input_ids_from_labels(labels=labels)
        extra_outputs = {}
        if self.plan.needs_hidden_states:
            extra_outputs["output_hidden_states"] = True
        if self.plan.attention:
            extra_outputs["output_attentions"] = True
        if self.task != "classification":
            extra_outputs["use_cache"] = False

        student_outputs = model(**model_inputs, **extra_outputs)
        teacher_outputs = None
        if self.plan.needs_teacher:
            teacher_inputs = {k: v for k, v in model_inputs.items() if k in self._teacher_input_names}
            with torch.no_grad():
                teacher_outputs = self.teacher(**teacher_inputs, **extra_outputs)

        positions = self._step_positions(inputs, num_items_in_batch, training=model.training)
        terms = self.distillation_terms(student, student_outputs, teacher_outputs, labels, positions)
        loss = sum(getattr(self.distillation, TERM_WEIGHTS[name]) * value for name, value in terms.items())
        if model.training and self._counts_are_global():
            # Counts cover all processes and DDP averages gradients over them: undo that average.
            scale = self.accelerator.num_processes
            loss = loss * scale
            terms = {name: value * scale for name, value in terms.items()}
        self._record_terms(terms, "train" if model.training else "eval")
        if not return_outputs:
            return loss
        # Hidden states and attentions were for the loss only; the evaluation loop must not collect them.
        kept = {key: value for key, value in student_outputs.items() if key not in _FEATURE_OUTPUT_KEYS}
        return loss, type(student_outputs)(**kept)

    def _step_positions(self, inputs: dict, num_items_in_batch, training: bool) -> StepPositions:
        target_mask, source_mask = self._positions(inputs)
        if training and num_items_in_batch is not None and self._step_source_tokens is not None:
            target_count, source_count = num_items_in_batch, self._step_source_tokens
        else:  # evaluation, or a direct call: normalize within the batch
            target_count, source_count = target_mask.sum(), source_mask.sum()
        as_count = lambda count: torch.as_tensor(count, device=source_mask.device, dtype=torch.float32).clamp_min(1)
        return StepPositions(target_mask, source_mask, as_count(target_count), as_count(source_count))

    def distillation_terms(
        self,
        student: PreTrainedModel,
        student_outputs,
        teacher_outputs,
        labels: torch.Tensor | None,
        positions: StepPositions,
    ) -> dict[str, torch.Tensor]:
        """Every active term, each already divided by its step-wide count."""
        settings, plan = self.distillation, self.plan
        terms: dict[str, torch.Tensor] = {}
        student_logits = student_outputs.logits
        if self.task == "causal_lm":
            student_logits, labels = student_logits[:, :-1], (labels[:, 1:] if labels is not None else None)
        # Mask first, softmax second: only supervised rows ever reach a log-softmax.
        student_rows = student_logits[positions.target_mask]
        if plan.ce:
            if labels is None:
                raise InputError("ce_weight > 0 needs a 'labels' column; set ce_weight=0 to distill without labels")
            terms["ce_loss"] = (
                cross_entropy_sum(student_rows, labels[positions.target_mask], self.args.label_smoothing_factor)
                / positions.target_count
            )
        if plan.kd:
            teacher_logits = teacher_outputs.logits
            if self.task == "causal_lm":
                teacher_logits = teacher_logits[:, :-1]
            shared = self.output_size
            terms["kd_loss"] = (
                logit_distillation_loss(
                    student_rows[..., :shared],
                    teacher_logits[positions.target_mask][..., :shared],
                    divergence=settings.divergence,
                    temperature=settings.temperature,
                    beta=settings.divergence_beta,
                )
                / positions.target_count
            )
        if plan.needs_layer_pairs:
            terms.update(self._feature_terms(student, student_outputs, teacher_outputs, positions))
        return terms

    def _feature_terms(self, student, student_outputs, teacher_outputs, positions: StepPositions) -> dict:
        """Hidden-state, attention and norm terms: mean over mapped layer pairs of per-position sums / counts."""
        plan, settings = self.plan, self.distillation
        projections = getattr(student, PROJECTIONS_ATTR, None)
        hidden, attention, norm = [], [], []
        for pair in self.stack_pairs:
            if pair.on_target_side:
                mask, count = positions.target_mask, positions.target_count
            else:
                mask, count = positions.source_mask, positions.source_count
            if plan.needs_hidden_states:
                student_states = student_outputs[pair.student.hidden_states_key]
                teacher_states = teacher_outputs[pair.teacher.hidden_states_key]
                for student_layer, teacher_layer in enumerate(pair.layer_map):
                    # Index 0 holds the embeddings, so layer i's output is entry i + 1.
                    student_rows = student_states[student_layer + 1][mask]
                    teacher_rows = teacher_states[teacher_layer + 1][mask]
                    if plan.hidden:
                        projected = projections[pair.student.role](student_rows) if projections is not None else student_rows
                        hidden.append(hidden_state_loss(projected, teacher_rows, kind=settings.hidden_loss) / count)
                    if plan.norm:
                        norm.append(norm_statistics_loss(student_rows, teacher_rows) / count)
            if plan.attention:
                keys = [pair.student.attentions_key] + ([pair.student.cross_attentions_key] if pair.on_target_side else [])
                for key in keys:
                    student_maps, teacher_maps = student_outputs[key], teacher_outputs[key]
                    for student_layer, teacher_layer in enumerate(pair.layer_map):
                        attention.append(
                            attention_transfer_loss(
                                student_maps[student_layer], teacher_maps[teacher_layer], mask, kind=settings.attention_loss
                            )
                            / count
                        )
        terms = {}
        for name, values in (("hidden_loss", hidden), ("attention_loss", attention), ("norm_loss", norm)):
            if values:
                terms[name] = torch.stack(values).mean()
        return terms

    # ---- logging -----------------------------------------------------------------------------------------------

    def _record_terms(self, terms: dict[str, torch.Tensor], mode: str) -> None:
        sums = self._term_sums[mode]
        for name, value in terms.items():
            sums[name] = sums[name] + value.detach().float()
        if mode == "train":
            self._term_steps["train"].add(self.state.global_step)  # micro-batches of one step share it
        else:
            self._term_steps["eval"] += 1

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Add each term's mean since the last log: per optimizer step in training, per batch in evaluation."""
        mode = "eval" if "eval_loss" in logs else "train" if "loss" in logs else None
        if mode is not None and self._term_sums[mode]:
            steps = len(self._term_steps[mode]) if mode == "train" else self._term_steps[mode]
            names = sorted(self._term_sums[mode])
            values = torch.stack([torch.as_tensor(self._term_sums[mode][name]) for name in names]) / max(steps, 1)
            if self.args.world_size > 1:
                values = self.accelerator.gather(values.to(self.args.device).view(1, -1)).mean(0)
            prefix = "eval_" if mode == "eval" else ""
            logs.update({prefix + name: round(float(value), 6) for name, value in zip(names, values, strict=True)})
            self._term_sums[mode] = defaultdict(float)
            self._term_steps[mode] = set() if mode == "train" else 0
        super().log(logs, *args, **kwargs)


class DistillationTrainer(DistillationMixin, Trainer):
    """`transformers.Trainer` that distills ``teacher_model=`` into ``model`` (classification and causal LMs).

    Use :class:`~seq2seq_distill.arguments.DistillationTrainingArguments` for the distillation settings; plain
    `TrainingArguments` give the defaults (0.5 CE + 0.5 forward KL at T = 2).
    """


class Seq2SeqDistillationTrainer(DistillationMixin, Seq2SeqTrainer):
    """`transformers.Seq2SeqTrainer` with distillation; generation-based evaluation is the Seq2SeqTrainer's own."""
