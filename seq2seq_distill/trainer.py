"""The one distillation step, shared by :class:`DistillationTrainer` and :class:`Seq2SeqDistillationTrainer`.

``compute_loss`` runs the student, runs the frozen teacher only when some term needs it, asks either model for
hidden states or attentions only when some term uses them, and mixes the terms with the weights of
:class:`~seq2seq_distill.arguments.DistillationSettings`. Everything else (the loop, accumulation, mixed
precision, checkpoints, distributed runs, generation) is the Trainer's.

Normalization: each term is a sum over its positions divided by the count of those positions in the *whole
optimizer step*: target-side terms (CE, KD, decoder features) by the Trainer's ``num_items_in_batch``, source-side
terms (encoder features, causal-LM features) by the step's count of non-padding input tokens, gathered the same way.
Policy-gradient terms (causal LMs) follow the same rule: ``get_batch_samples`` draws the samples of every micro-batch
of the step before the first is trained on, and the policy-gradient loss, the entropy penalty and the logged teacher
log-likelihood are divided by the step's count of sampled tokens, the per-sequence penalties by its count of sampled
sequences, and the returns are normalized with the mean and variance of all the step's sampled tokens (every count
and moment gathered across processes like the others). Summing micro-batch losses therefore gives exactly the
full-batch loss, with any padding and any completion lengths.

Sampling (policy-gradient and on-policy) is seeded by the run's seed, the optimizer step, the kind of draw and the
micro-batch index, so a resumed run draws what the uninterrupted run would have.
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from dataclasses import dataclass

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, Seq2SeqTrainer, Trainer

from .arguments import DistillationSettings
from .chunked_kd import chunked_row_losses, fused_ce_forward_kl, kd_chunk_function, select_rows, uses_liger
from .errors import InputError, NonFiniteLossError
from .families import Stack, family_of, num_layers
from .layer_maps import check_layer_map, spread_layers
from .losses import (
    DIVERGENCES,
    attention_transfer_loss,
    cross_entropy_sum,
    forward_kl,
    hidden_state_loss,
    norm_statistics_loss,
    topk_distillation_loss,
)
from .modeling import (
    freeze_teacher,
    load_model,
    logit_rows,
    output_rows,
    resolve_teacher_dtype,
    shared_output_size,
    task_of_model,
)
from .placement import shard_teacher
from .policy import (
    Samples,
    StepSamples,
    completions_from,
    diversity_penalty,
    entropy_penalty,
    future_returns,
    normalize,
    policy_gradient_loss,
    prompts_of,
    response_logits,
    sample_continuations,
    sampling_seed,
    token_frequency_penalty,
)

logger = logging.getLogger(__name__)

PROJECTIONS_ATTR = "distillation_projections"
# Batch fields of a cached teacher (see teacher_cache.py): [N, k] top-k log-probabilities and token ids, one row per
# supervised position, in the order of the positions' flat index.
CACHE_LOG_PROBS = "teacher_topk_log_probs"
CACHE_INDICES = "teacher_topk_indices"
TERM_WEIGHTS = {
    "ce_loss": "ce_weight",
    "kd_loss": "kd_weight",
    "hidden_loss": "hidden_weight",
    "attention_loss": "attention_weight",
    "norm_loss": "norm_weight",
    "pg_loss": "policy_gradient_weight",
    "token_frequency_penalty": "token_frequency_penalty",
    "diversity_penalty": "diversity_penalty",
    "entropy_penalty": "entropy_penalty",
}
# Batch field added by get_batch_samples to each micro-batch of a policy-gradient step: its StepSamples.
PG_SAMPLES = "policy_gradient_samples"
_NOT_MODEL_INPUTS = ("labels", CACHE_LOG_PROBS, CACHE_INDICES, PG_SAMPLES)
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
    policy_gradient: bool = False
    on_policy: bool = False

    @classmethod
    def from_settings(cls, settings: DistillationSettings) -> TermPlan:
        return cls(
            ce=settings.ce_weight > 0,
            kd=settings.kd_weight > 0,
            hidden=settings.hidden_weight > 0,
            attention=settings.attention_weight > 0,
            norm=settings.norm_weight > 0,
            policy_gradient=settings.policy_gradient_weight > 0,
            on_policy=settings.on_policy_fraction > 0,
        )

    @property
    def only_ce(self) -> bool:
        """CE alone: a run without distillation (a teacher's own training, or a baseline student)."""
        return self.ce and not (self.needs_teacher or self.on_policy)

    @property
    def needs_teacher(self) -> bool:
        return self.kd or self.hidden or self.attention or self.norm or self.policy_gradient

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

    target_mask: torch.Tensor  # [B, T] label positions (seq2seq, causal LM: shifted) or [B] examples (logit_rows)
    source_mask: torch.Tensor  # [B, S] non-padding input tokens
    target_count: torch.Tensor
    source_count: torch.Tensor
    label_mask: torch.Tensor  # the target positions that have a label (CE); all of them except in classification
    label_count: torch.Tensor


class DistillationMixin:
    """Adds ``teacher_model=`` and the distillation ``compute_loss`` to a Trainer class."""

    # Every term is divided by step-wide counts, so the Trainer must not divide by the accumulation steps again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, teacher_model: PreTrainedModel | str | None = None, teacher_cache=None, **kwargs):
        # The Trainer sets config.use_cache to its training value (off); saved models get back the model's own.
        model = kwargs.get("model", args[0] if args else None)
        self._inference_use_cache = getattr(getattr(model, "config", None), "use_cache", None)
        super().__init__(*args, **kwargs)
        self.distillation = DistillationSettings.from_arguments(self.args)
        self.plan = TermPlan.from_settings(self.distillation)
        student = self.accelerator.unwrap_model(self.model)
        self.task = task_of_model(student)
        self.teacher_cache = teacher_cache
        if teacher_cache is not None:
            self._check_cache(teacher_cache, teacher_model)
        self.teacher = self._setup_teacher(teacher_model)
        self._check_rows_to_train_on()
        self._check_sampling_methods()
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

    def _check_cache(self, teacher_cache, teacher_model) -> None:
        """A cached teacher replaces the live one for the KD term only; it has no hidden states or attentions."""
        if teacher_model is not None:
            raise InputError("pass either teacher_model or teacher_cache, not both")
        if self.plan.needs_layer_pairs:
            raise InputError(
                "a teacher cache holds logits only: set hidden_weight, attention_weight and norm_weight to 0, or distill "
                "with the live teacher"
            )
        if teacher_cache.temperature != self.distillation.temperature:
            raise InputError(
                f"the teacher cache is at temperature {teacher_cache.temperature}, the run at {self.distillation.temperature}"
            )

    def _check_rows_to_train_on(self) -> None:
        """Stop before training when no active term has a row to learn from (it would log loss 0 and "finish").

        Only classification data can get here: its unlabelled rows (-100) have no CE row but are distilled, while
        the data module refuses seq2seq and causal-LM splits whose every target is empty.
        """
        dataset = self.train_dataset
        if self.task != "classification" or not isinstance(dataset, Dataset) or "labels" not in dataset.column_names:
            return
        plan = self.plan
        if plan.kd or plan.hidden or plan.attention or plan.norm:  # these use every row, labelled or not
            return
        if len(dataset) and all(label == -100 for label in dataset["labels"]):
            raise InputError(
                f"every one of the {len(dataset)} training rows is unlabelled (-1 or an empty label) and the only active "
                "term, CE, needs labels: label the rows, or set --kd_weight > 0 to distill them from the teacher"
            )

    def _check_sampling_methods(self) -> None:
        if not (self.plan.policy_gradient or self.plan.on_policy):
            return
        if self.task != "causal_lm":
            raise InputError(
                f"policy-gradient and on-policy distillation sample continuations of causal LMs; this is a {self.task} "
                "run: set policy_gradient_weight and on_policy_fraction to 0"
            )
        if self.teacher is None:
            raise InputError("policy-gradient and on-policy distillation score fresh samples, so they need the live teacher")
        if self.plan.on_policy and not self.plan.kd:
            raise InputError("on_policy_fraction > 0 replaces completions for the KD term; set kd_weight > 0")

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.teacher_cache is not None:  # keep the cached rows through remove_unused_columns
            self._signature_columns = list(dict.fromkeys([*self._signature_columns, CACHE_LOG_PROBS, CACHE_INDICES]))

    def _setup_teacher(self, teacher_model: PreTrainedModel | str | None) -> PreTrainedModel | None:
        if teacher_model is None:
            if self.plan.needs_teacher and self.teacher_cache is None:
                raise InputError(self._teacher_required_message())
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
        return self._shard_teacher(freeze_teacher(teacher_model, self.args.device, dtype))

    def _teacher_required_message(self) -> str:
        """Names the settings of this run that need the teacher, with their values, and nothing else."""
        names = ("kd_weight", "hidden_weight", "attention_weight", "norm_weight", "policy_gradient_weight")
        on = [f"{name} = {getattr(self.distillation, name):g}" for name in names if getattr(self.distillation, name) > 0]
        listed = on[0] if len(on) == 1 else f"{', '.join(on[:-1])} and {on[-1]}"
        verb, pronoun = ("needs", "it") if len(on) == 1 else ("need", "them")
        return f"teacher_model is required: {listed} {verb} the teacher; pass teacher_model= or set {pronoun} to 0"

    def _shard_teacher(self, teacher: PreTrainedModel) -> PreTrainedModel:
        """The frozen teacher, sharded for inference under DeepSpeed ZeRO-3 or FSDP2 (see ``placement.py``)."""
        return shard_teacher(self, teacher)

    def _check_outputs(self, student: PreTrainedModel) -> int | None:
        """The number of output rows both models share (the logits the KD term compares)."""
        if self.teacher_cache is not None:
            rows = output_rows(student)
            if self.teacher_cache.info["vocab_size"] > rows and self.task == "classification":
                raise InputError(f"the teacher cache has {self.teacher_cache.info['vocab_size']} labels, the student {rows}")
            return rows
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
        if self.plan.on_policy:  # before counting, so the step-wide counts describe what is trained on
            batch_samples = self._on_policy_batches(batch_samples)
        if self.plan.policy_gradient:  # every micro-batch's samples now, so their counts can be step-wide
            batch_samples = self._policy_gradient_batches(batch_samples)
        counts = torch.stack([torch.stack([mask.sum() for mask in self._positions(batch)]) for batch in batch_samples])
        counts = counts.sum(0).to(device)
        if self._counts_are_global():
            counts = self.accelerator.gather(counts.view(1, 3)).sum(0)
        target, self._step_source_tokens, self._step_labelled = counts.unbind()
        return batch_samples, target

    def _counts_are_global(self) -> bool:
        return self.args.average_tokens_across_devices and self.args.world_size > 1

    def _positions(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(target_mask, source_mask, label_mask) of a batch, as the terms below select them (see ``logit_rows``)."""
        source_mask = inputs.get("attention_mask")
        if source_mask is None:
            source_mask = torch.ones_like(inputs["input_ids"])
        rows = logit_rows(self.task, inputs.get("labels"), source_mask)
        return rows.distill, source_mask.bool(), rows.labelled

    # ---- the step ----------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        student = self.accelerator.unwrap_model(model)
        labels = inputs.get("labels")
        model_inputs = {name: value for name, value in inputs.items() if name not in _NOT_MODEL_INPUTS}
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
        if self.plan.needs_teacher and self.teacher is not None:
            teacher_inputs = {k: v for k, v in model_inputs.items() if k in self._teacher_input_names}
            with torch.no_grad():
                teacher_outputs = self.teacher(**teacher_inputs, **extra_outputs)

        positions = self._step_positions(inputs, num_items_in_batch, training=model.training)
        loss, terms = self.distillation_terms(student, student_outputs, teacher_outputs, inputs, positions)
        if self.plan.policy_gradient and model.training:
            policy_loss, policy_terms = self._policy_gradient_terms(model, student, inputs)
            loss = loss + policy_loss
            terms.update(policy_terms)
        if model.training:
            loss = self._guard_finite(model, loss, terms)
        self._record_terms(terms, "train" if model.training else "eval")
        if not return_outputs:
            return loss
        # Hidden states and attentions were for the loss only; the evaluation loop must not collect them.
        kept = {key: value for key, value in student_outputs.items() if key not in _FEATURE_OUTPUT_KEYS}
        return loss, type(student_outputs)(**kept)

    def _guard_finite(self, model, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stop (or skip the batch) at the step where a term turns NaN or infinite, before it reaches the weights.

        One flag per micro-batch, reduced over processes so that every process stops at the same step. The weights
        are still those from before this step here, so the checkpoint saved on the way out is a clean one.
        """
        finite = torch.isfinite(torch.stack([loss.detach().float(), *[value.float() for value in terms.values()]])).all()
        bad = (~finite).float().reshape(1)
        if self.args.world_size > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if not bool(bad.item()):
            return loss
        step = self.state.global_step + 1
        names = [name for name, value in terms.items() if not torch.isfinite(value).all()] or ["loss"]
        described = ", ".join(f"{name} = {float(terms[name]) if name in terms else float(loss)}" for name in names)
        if self.distillation.skip_nonfinite_batches:
            logger.warning("step %d: %s; batch skipped (--skip_nonfinite_batches)", step, described)
            self._record_terms({"skipped_batches": torch.ones((), device=loss.device)}, "train")
            for name in names:
                terms.pop(name, None)
            # Zero times every trainable parameter: a zero gradient through the same graph on every process.
            return sum(parameter.sum() for parameter in model.parameters() if parameter.requires_grad) * 0.0
        self._save_checkpoint(model, trial=None)
        checkpoint = f"{self.args.output_dir}/checkpoint-{self.state.global_step}"
        raise NonFiniteLossError(
            f"{described} at step {step} (in this or another process); stopped before it changed the weights, "
            f"{checkpoint} holds the state from before it. Lower the learning rate or check the data, then resume "
            "with --resume_from_checkpoint latest, or pass --skip_nonfinite_batches to skip such batches"
        )

    def _step_positions(self, inputs: dict, num_items_in_batch, training: bool) -> StepPositions:
        target_mask, source_mask, label_mask = self._positions(inputs)
        if training and num_items_in_batch is not None and self._step_source_tokens is not None:
            counts = [num_items_in_batch, self._step_source_tokens, self._step_labelled]
            if self._counts_are_global():
                # Counts cover every process and DDP averages the gradients over them: dividing the counts by the
                # process count undoes that average in every term at once.
                counts = [count / self.accelerator.num_processes for count in counts]
        else:  # evaluation, or a direct call: normalize within the batch
            counts = [target_mask.sum(), source_mask.sum(), label_mask.sum()]
        target_count, source_count, label_count = (
            torch.as_tensor(count, device=source_mask.device, dtype=torch.float32).clamp_min(1e-6) for count in counts
        )
        return StepPositions(target_mask, source_mask, target_count, source_count, label_mask, label_count)

    def distillation_terms(
        self,
        student: PreTrainedModel,
        student_outputs,
        teacher_outputs,
        inputs: dict,
        positions: StepPositions,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted loss and every active term (each divided by its step-wide count, detached for logging)."""
        settings = self.distillation
        loss, terms = self._logit_terms(student_outputs, teacher_outputs, inputs, positions)
        if self.plan.needs_layer_pairs:
            features = self._feature_terms(student, student_outputs, teacher_outputs, positions)
            for name, value in features.items():
                loss = loss + getattr(settings, TERM_WEIGHTS[name]) * value
                terms[name] = value.detach()
        return loss, terms

    def _logit_terms(self, student_outputs, teacher_outputs, inputs: dict, positions: StepPositions):
        """CE and KD in one chunked pass over the supervised rows of the flat logits (see ``chunked_row_losses``).

        Rows are selected by index, so no ``[N, V]`` copy of either model's logits is made; each chunk computes
        its loss and gradient at once, with the weights and the step-wide normalization folded in.
        """
        settings, plan = self.distillation, self.plan
        labels = inputs.get("labels")
        names = [name for name, on in (("ce_loss", plan.ce), ("kd_loss", plan.kd)) if on]
        if not names:
            return positions.target_count.new_zeros(()), {}
        if plan.ce and labels is None:
            raise InputError("ce_weight > 0 needs a 'labels' column; set ce_weight=0 to distill without labels")
        target_mask = positions.target_mask
        if self.task == "causal_lm":
            # Position t predicts token t + 1 (logit_rows): rows t < T - 1 of the unshifted logits.
            labels = labels[:, 1:] if labels is not None else None
            row_mask = torch.nn.functional.pad(target_mask, (0, 1), value=False)
        else:
            row_mask = target_mask
        rows = row_mask.reshape(-1).nonzero().squeeze(-1)
        rows_on_cpu = rows.cpu()
        student_flat = student_outputs.logits.reshape(-1, student_outputs.logits.shape[-1])
        # -100 on rows without a label (classification): CE skips them, KD does not.
        row_labels = labels[target_mask] if labels is not None else None
        # CE is normalized by the step's labelled rows, KD by all of its rows (the same count unless rows are unlabelled).
        ce_scale, kd_scale = 1.0 / positions.label_count, 1.0 / positions.target_count
        scales = torch.stack([scale for scale, on in ((ce_scale, plan.ce), (kd_scale, plan.kd)) if on])
        cached = inputs.get(CACHE_LOG_PROBS)
        if plan.kd and cached is None:
            if teacher_outputs is None:
                raise InputError(
                    "this batch has no cached teacher rows; attach the teacher cache to every dataset the trainer sees"
                )
            teacher_flat = teacher_outputs.logits.reshape(-1, teacher_outputs.logits.shape[-1])
            kd_sum = kd_chunk_function(settings.divergence, settings.temperature, settings.divergence_beta, rows.device)
        shared = self.output_size

        def teacher_rows(start: int, end: int) -> torch.Tensor:
            return select_rows(teacher_flat, rows, rows_on_cpu, start, end)[:, :shared]

        if self._closed_form_logit_terms(rows.device):
            # CE and forward KL know their gradients: no autograd graph per chunk (see fused_ce_forward_kl). The
            # normalization is folded into the weights so the chunk's gradient comes out already scaled.
            ce_step, kd_step = torch.stack([ce_scale, kd_scale]).tolist()  # one device sync per micro-batch
            ce_weight = settings.ce_weight * ce_step if plan.ce else 0.0
            kd_weight = settings.kd_weight * kd_step if plan.kd else 0.0

            def chunk_loss(student_chunk: torch.Tensor, start: int, end: int):
                teacher_chunk = teacher_top = None
                if plan.kd and cached is None:
                    teacher_chunk = teacher_rows(start, end)
                elif plan.kd:
                    teacher_top = (cached[start:end], inputs[CACHE_INDICES][start:end])
                total, parts, grad = fused_ce_forward_kl(
                    student_chunk,
                    row_labels[start:end] if row_labels is not None else None,
                    ce_weight=ce_weight,
                    kd_weight=kd_weight,
                    temperature=settings.temperature,
                    label_smoothing=self.args.label_smoothing_factor,
                    shared=shared,
                    teacher_chunk=teacher_chunk,
                    teacher_top=teacher_top,
                )
                return total, parts * scales, grad

        else:

            def chunk_loss(student_chunk: torch.Tensor, start: int, end: int):
                parts, loss = [], 0.0
                if plan.ce:
                    ce = cross_entropy_sum(student_chunk, row_labels[start:end], self.args.label_smoothing_factor)
                    parts.append(ce)
                    loss = loss + settings.ce_weight * ce * ce_scale
                if plan.kd:
                    if cached is None:
                        teacher_chunk = teacher_rows(start, end)
                        kd = kd_sum(student_chunk[:, :shared], teacher_chunk)
                    else:
                        kd = topk_distillation_loss(
                            student_chunk[:, :shared],
                            cached[start:end],
                            inputs[CACHE_INDICES][start:end],
                            divergence=settings.divergence,
                            temperature=settings.temperature,
                            beta=settings.divergence_beta,
                        )
                    parts.append(kd)
                    loss = loss + settings.kd_weight * kd * kd_scale
                return loss, torch.stack(parts).detach() * scales

        loss, sums = chunked_row_losses(
            student_flat,
            chunk_loss,
            rows=rows,
            rows_on_cpu=rows_on_cpu,
            num_terms=len(names),
            chunk_elements=settings.kd_chunk_elements,
        )
        return loss, dict(zip(names, sums.unbind(), strict=True))

    def _closed_form_logit_terms(self, device: torch.device) -> bool:
        """CE alone, or CE with forward KL (not Liger's GPU kernel), have a closed-form gradient path."""
        settings = self.distillation
        if not self.plan.kd:
            return True
        if DIVERGENCES.get(settings.divergence) is not forward_kl:
            return False
        return not uses_liger(settings.divergence, settings.temperature, settings.divergence_beta, device)

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

    # ---- policy-gradient and on-policy distillation (causal LMs) ------------------------------------------------

    def _sampling_generator(self, stream: str, index: int, device) -> torch.Generator:
        """Randomness tied to the run's seed, the optimizer step, the kind of draw and the micro-batch index (never
        to how many calls this process made), so a resumed run samples what the uninterrupted one would have; no
        two micro-batches or kinds of draw of a run share a stream (see ``policy.sampling_seed``)."""
        slots = self.args.gradient_accumulation_steps
        generator = torch.Generator(device=device)
        generator.manual_seed(sampling_seed(self.args.seed, self.state.global_step, stream, index, slots))
        return generator

    def _special_ids(self, student) -> tuple[int, int | None]:
        tokenizer = self.processing_class
        eos = getattr(tokenizer, "eos_token_id", None) or student.generation_config.eos_token_id
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = pad if pad is not None else (student.config.pad_token_id if student.config.pad_token_id is not None else eos)
        return pad, eos

    @torch.no_grad()
    def _on_policy_batches(self, batch_samples: list[dict]) -> list[dict]:
        """GKD: with probability on_policy_fraction a micro-batch's completions become the student's own samples."""
        settings = self.distillation
        student = self.accelerator.unwrap_model(self.model)
        pad, eos = self._special_ids(student)
        draws = torch.rand(len(batch_samples), generator=self._sampling_generator("on_policy_draws", 0, "cpu"))
        replaced = []
        for index, (batch, draw) in enumerate(zip(batch_samples, draws.tolist(), strict=True)):
            if draw < settings.on_policy_fraction:
                prompt_ids, prompt_mask = prompts_of(batch["input_ids"], batch["labels"], pad)
                samples = self._sample(
                    student,
                    None,
                    prompt_ids,
                    prompt_mask,
                    settings.on_policy_max_new_tokens,
                    settings.on_policy_temperature,
                    0.0,
                    "on_policy",
                    index,
                )
                input_ids, attention_mask, labels = completions_from(samples, pad)
                batch = {**batch, "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
                self._record_terms({"on_policy_batches": torch.ones((), device=input_ids.device)}, "train")
            replaced.append(batch)
        return replaced

    def _sample(
        self, student, teacher, prompt_ids, prompt_mask, max_new_tokens, temperature, teacher_mix, stream, index
    ) -> Samples:
        pad, eos = self._special_ids(student)
        was_training = student.training
        student.eval()  # sample from the policy itself, without dropout
        try:
            return sample_continuations(
                student,
                teacher,
                prompt_ids,
                prompt_mask,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                teacher_mix=teacher_mix,
                eos_token_id=eos,
                pad_token_id=pad,
                generator=self._sampling_generator(stream, index, prompt_ids.device),
            )
        finally:
            student.train(was_training)

    def _policy_gradient_batches(self, batch_samples: list[dict]) -> list[dict]:
        """The step's micro-batches, each carrying its policy-gradient samples under ``PG_SAMPLES``.

        All are drawn here, before the first micro-batch is trained on (the weights are the step's first either
        way), so the sampled-token and sequence counts and the moments of the returns cover the whole step, and
        every process's when the step's other counts are global.
        """
        drawn = self._policy_gradient_samples(batch_samples, across_processes=self._counts_are_global())
        return [{**batch, PG_SAMPLES: step_samples} for batch, step_samples in zip(batch_samples, drawn, strict=True)]

    @torch.no_grad()
    def _policy_gradient_samples(self, batch_samples: list[dict], across_processes: bool) -> list[StepSamples]:
        """Sample every micro-batch's prompts (micro-batch i from stream ``policy_gradient``, index i), reward the
        tokens with the teacher, and normalize the future returns with the moments of all of them together."""
        settings = self.distillation
        student = self.accelerator.unwrap_model(self.model)
        pad, _ = self._special_ids(student)
        drawn = []
        for index, batch in enumerate(batch_samples):
            prompt_ids, prompt_mask = prompts_of(batch["input_ids"], batch["labels"], pad)
            drawn.append(
                self._sample(
                    student,
                    self.teacher,
                    prompt_ids,
                    prompt_mask,
                    settings.pg_max_new_tokens,
                    settings.pg_sample_temperature,
                    settings.pg_teacher_mix,
                    "policy_gradient",
                    index,
                )
            )
        masks = [samples.response_mask.float() for samples in drawn]
        returns = [future_returns(samples.teacher_log_probs, samples.response_mask, settings.pg_discount) for samples in drawn]
        pairs = list(zip(returns, masks, strict=True))

        def step_sums(rows: list[torch.Tensor]) -> torch.Tensor:  # one row of sums per micro-batch
            sums = torch.stack(rows).sum(0)
            return self.accelerator.gather(sums.view(1, -1)).sum(0) if across_processes else sums

        tokens, sequences, return_sum = step_sums(
            [torch.stack([mask.sum(), (mask.sum(1) > 0).float().sum(), (ret * mask).sum()]) for ret, mask in pairs]
        )
        mean = return_sum / tokens.clamp_min(1)
        (squares,) = step_sums([((ret - mean).pow(2) * mask).sum().view(1) for ret, mask in pairs])
        variance = squares / tokens.clamp_min(1)
        # Like the step's other counts: DDP averages the gradients over the processes, dividing by their number undoes it.
        processes = self.accelerator.num_processes if across_processes else 1
        token_count, sequence_count = tokens.clamp_min(1) / processes, sequences.clamp_min(1) / processes
        return [
            StepSamples(samples, normalize(ret, mask, mean=mean, variance=variance), token_count, sequence_count)
            for samples, (ret, mask) in zip(drawn, pairs, strict=True)
        ]

    def _policy_gradient_terms(self, model, student, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The policy-gradient loss and penalties of a micro-batch's samples (rewarded by the teacher).

        Sums are divided by the step's sampled tokens (sampled sequences, for the per-sequence penalties) that
        ``get_batch_samples`` counted, so the micro-batches of a step add up to what the step gives as one batch.
        A batch without ``PG_SAMPLES`` (a direct call) is sampled here and normalized within itself.
        """
        settings = self.distillation
        step_samples = inputs.get(PG_SAMPLES)
        if step_samples is None:
            (step_samples,) = self._policy_gradient_samples([inputs], across_processes=False)
        samples, advantages = step_samples.samples, step_samples.advantages
        token_count, sequence_count = step_samples.token_count, step_samples.sequence_count
        log_probs = torch.log_softmax(response_logits(model, samples).float(), -1)
        mask = samples.response_mask
        tokens = samples.sequences[:, samples.prompt_width :]
        token_log_probs = log_probs.gather(-1, tokens[..., None]).squeeze(-1)
        importance = (token_log_probs.detach() - samples.sampling_log_probs).exp().clamp(max=settings.pg_importance_clip)
        probs = log_probs.exp()
        teacher_rows = samples.teacher_step_log_probs[..., : probs.shape[-1]]
        student_rows = probs[..., : teacher_rows.shape[-1]]
        pg = policy_gradient_loss(token_log_probs, student_rows, teacher_rows, advantages, importance, mask)
        terms = {"pg_loss": pg / token_count}
        if settings.token_frequency_penalty:
            terms["token_frequency_penalty"] = token_frequency_penalty(probs, mask) / sequence_count
        if settings.diversity_penalty:
            embeddings = student.get_input_embeddings().weight
            terms["diversity_penalty"] = diversity_penalty(probs, mask, embeddings) / sequence_count
        if settings.entropy_penalty:
            terms["entropy_penalty"] = entropy_penalty(probs, mask) / token_count
        # Also per step-wide token: the micro-batches of a step add up to the step's mean (logged per step).
        terms["teacher_log_likelihood"] = (samples.teacher_log_probs * mask).sum() / token_count
        loss = sum(getattr(settings, TERM_WEIGHTS[name]) * value for name, value in terms.items() if name in TERM_WEIGHTS)
        return loss, {name: value.detach() for name, value in terms.items()}

    # ---- saving ------------------------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save with the model's inference defaults: a saved student must not load with its KV cache off."""
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        if config is None or self._inference_use_cache is None:
            return super().save_model(output_dir, _internal_call)
        training_value, config.use_cache = config.use_cache, self._inference_use_cache
        try:
            super().save_model(output_dir, _internal_call)
        finally:
            config.use_cache = training_value

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
