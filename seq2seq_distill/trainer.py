"""The one distillation step, shared by :class:`DistillationTrainer` and :class:`Seq2SeqDistillationTrainer`.

This module is the Trainer integration only: it plans the run's terms from the table in ``terms.py``, counts each
term's positions over the whole optimizer step (``get_batch_samples``), runs the student and, only when some term
needs it, the frozen teacher (``compute_loss``), asks either model for hidden states or attentions (or records the
queries, keys and values of mapped self-attention layers) only when some term uses them, calls each group of terms
(the CE / KD row pass in ``chunked_kd.py``, the feature terms in ``features.py``, the span terms across tokenizers in
``cross_tokenizer.py``, the policy-gradient terms in ``policy.py``, and every registered term), mixes them with the
weights of the table, stops or skips on a non-finite term (``guards.py`` finds it), and logs each term on its own.
Everything else (the loop, accumulation, mixed precision, checkpoints, distributed runs, generation) is the Trainer's.

Normalization: each term is a sum over its positions divided by the count of those positions in the *whole
optimizer step*: CE by the step's labelled rows, KD and decoder features by its distilled rows (the Trainer's
``num_items_in_batch``; the same rows as CE except for unlabelled classification rows), source-side terms (encoder
features, causal-LM features) by the step's non-padding input tokens, all gathered across processes. Policy-gradient
terms follow the same rule over the step's sampled tokens and sequences (see ``policy.py``). Summing micro-batch
losses therefore gives exactly the full-batch loss, with any padding and any completion lengths.

About 700 lines, most of them the Trainer hooks and their docstrings; the term arithmetic lives in the modules
named above, and ``check_plan`` (the run's terms against what it was given: teacher, cache, teacher tokenization,
transfer rows) sits here because only the trainer sees the teacher, the cache and the data together. The setup of
several teachers (routing, offloading, ``teachers.json``) is glue around ``teachers.py``; it would move there first.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections import defaultdict

import torch
from datasets import Dataset
from transformers import PreTrainedModel, Seq2SeqTrainer, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .arguments import DistillationSettings
from .chunked_kd import CachedTeacherRows, LiveTeacherRows, ce_kd_row_pass
from .cross_tokenizer import cross_tokenizer_sums, merge_spans, shared_token_table, vocabulary_map
from .data import SPAN_COLUMNS, TEACHER_COLUMNS, has_trained_labels
from .diagnostics import attach_diagnostics, diagnostics_logs, observe_diagnostics
from .errors import InputError, NonFiniteLossError
from .features import PROJECTIONS_ATTR, attach_projections, capture_self_attention, feature_terms, pair_layers, relation_pairs
from .guards import any_nonfinite, nonfinite_terms
from .lora import SelfTeacher, check_self_distillation
from .modeling import (
    KD_ONLY_COLUMN,
    freeze_teacher,
    load_model,
    logit_rows,
    output_rows,
    predicting_rows,
    resolve_teacher_dtype,
    shared_output_size,
    task_of_model,
)
from .placement import shard_teacher
from .policy import PG_SAMPLES, PolicyDistillation, StepClock
from .schedules import attach_schedules, check_cache_temperature, observe_step, scheduled_logs
from .teacher_cache import CACHE_COLUMNS, CACHE_INDICES, CACHE_LOG_PROBS
from .teachers import (
    ROUTE_COLUMN,
    TeacherSet,
    check_resume_teachers,
    check_teacher_set_plan,
    route_rows,
    teacher_names,
    write_teacher_record,
)
from .terms import StepPositions, TermInputs, TermPlan, describe_weights, plan_terms, weight_of

logger = logging.getLogger(__name__)

_NOT_MODEL_INPUTS = (
    "labels",
    KD_ONLY_COLUMN,
    ROUTE_COLUMN,
    *CACHE_COLUMNS,
    PG_SAMPLES,
    *TEACHER_COLUMNS.values(),
    *SPAN_COLUMNS.values(),
)
_FEATURE_OUTPUT_KEYS = (
    "hidden_states",
    "attentions",
    "encoder_hidden_states",
    "encoder_attentions",
    "decoder_hidden_states",
    "decoder_attentions",
    "cross_attentions",
)
__all__ = ["PROJECTIONS_ATTR", "DistillationMixin", "DistillationTrainer", "Seq2SeqDistillationTrainer", "TermPlan"]


class DistillationMixin:
    """Adds ``teacher_model=`` (or ``teacher_cache=``, a loaded :class:`~seq2seq_distill.teacher_cache.TeacherCache`)
    and the distillation ``compute_loss`` to a Trainer class. ``teacher_tokenizer=``: the teacher's, when it is not
    the student's (``processing_class``) and ``matched_kl_weight`` > 0 needs the tokens both vocabularies share.
    ``teacher_model=`` a list or a dict {name: teacher}: several teachers, whose KD target is one mixture
    (``teachers.py``)."""

    # Every term is divided by step-wide counts, so the Trainer must not divide by the accumulation steps again.
    loss_is_scaled_for_ga = True

    def __init__(
        self, *args, teacher_model: PreTrainedModel | str | None = None, teacher_cache=None, teacher_tokenizer=None, **kwargs
    ):
        # The Trainer sets config.use_cache to its training value (off); saved models get back the model's own.
        model = kwargs.get("model", args[0] if args else None)
        self._inference_use_cache = getattr(getattr(model, "config", None), "use_cache", None)
        super().__init__(*args, **kwargs)
        # Scheduled and balanced weights and temperature are read through this one object (schedules.py).
        self.distillation = attach_schedules(self, DistillationSettings.from_arguments(self.args))
        self.plan = plan_terms(self.distillation)
        student = self.accelerator.unwrap_model(self.model)
        self.task = task_of_model(student)
        self.cached_teacher = teacher_cache
        check_plan(self.plan, self.task, teacher_model, teacher_cache, self.distillation, self.train_dataset)
        # The teacher reads its own tokenization of the inputs (the data module's TEACHER_COLUMNS), not the student's.
        self.cross_tokenizer = _has_teacher_columns(self.train_dataset) or _has_teacher_columns(self.eval_dataset)
        check_cross_tokenizer_plan(self.task, self.distillation, self.cross_tokenizer)
        self.shared_tokens = None  # the hybrid's (VocabularyMap, student id -> teacher id table)
        if self.plan.has("matched_kl_loss"):
            if teacher_tokenizer is None or self.processing_class is None:
                raise InputError(
                    "matched_kl_weight > 0 compares the tokens both vocabularies share: pass the student's tokenizer as "
                    "processing_class= and the teacher's as teacher_tokenizer="
                )
            mapping = vocabulary_map(self.processing_class, teacher_tokenizer)
            self.shared_tokens = (mapping, shared_token_table(mapping, output_rows(student)))
        self.teachers: TeacherSet | None = None  # every live teacher; self.teacher is the one the feature terms use
        self.teacher = self._setup_teacher(teacher_model)
        if self.teachers is not None:
            check_teacher_set_plan(self.plan, self.teachers, self.cross_tokenizer)
        self._route_rows()
        self.output_size = self._shared_output_rows(student)
        # A teacher cache pairs layers with the teacher's config it keeps, and must hold every layer they read.
        layer_teacher = teacher_cache.teacher_config if teacher_cache is not None else self.teacher
        self.stack_pairs = pair_layers(student, layer_teacher, self.distillation) if self.plan.needs_layer_pairs else ()
        if teacher_cache is not None:
            teacher_cache.check_layers(self.stack_pairs)
        self.relation_pairs = (
            relation_pairs(student, self.teacher, self.stack_pairs, self.distillation) if self.plan.relation else ()
        )
        if self.plan.hidden and attach_projections(student, layer_teacher, self.stack_pairs) and self.optimizer is not None:
            logger.warning("an optimizer was passed in: add the student's %s parameters to it", PROJECTIONS_ATTR)
        if self.plan.needs_attentions:
            # sdpa and flash kernels never materialize attention maps; only eager attention can return them.
            for each in (student, self.teacher):
                if each is not None:
                    each.set_attn_implementation("eager")
        self.policy = PolicyDistillation(self.distillation, self.teacher, self.processing_class, self.accelerator)
        self._teacher_input_names = set(inspect.signature(self.teacher.forward).parameters) if self.teacher else set()
        self._step_counts: torch.Tensor | None = None
        self._term_sums: dict[str, dict[str, torch.Tensor]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._term_steps: dict[str, set | int] = {"train": set(), "eval": 0}
        attach_diagnostics(self, self.plan, self.distillation)  # teacher KL, agreement, shares, warnings (--diagnostics)

    # ---- setup -------------------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        # Kept through remove_unused_columns: the transfer-set mark, the cached teacher rows, the teacher's tokenization.
        kept = [
            KD_ONLY_COLUMN,
            ROUTE_COLUMN,
            *(CACHE_COLUMNS if self.cached_teacher is not None else ()),
            *TEACHER_COLUMNS.values(),
            *SPAN_COLUMNS.values(),
        ]
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *kept]))

    def _setup_teacher(self, teacher_model) -> PreTrainedModel | None:
        """Load, check, freeze and place every teacher (``self.teachers``); returns the feature teacher."""
        if teacher_model is None:
            return None
        names, models = teacher_names(teacher_model)
        sharded = getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False)
        offload = self.distillation.offload_idle_teachers
        if offload and sharded:
            raise InputError(
                "offload_idle_teachers moves whole teachers between the CPU and the device, and DeepSpeed / FSDP shard "
                "them across processes: drop one of the two"
            )
        dtype = resolve_teacher_dtype(self.distillation.teacher_dtype, self.args.device, self.args.bf16, self.args.fp16)
        home = torch.device("cpu") if offload else self.args.device  # offloaded: on the device only to score
        loaded = [self._loaded_teacher(model) for model in models]
        if any(isinstance(model, SelfTeacher) for model in loaded):  # the student's own weights, switched to its base
            check_self_distillation(self.plan)
        # Freezing, casting, moving or sharding a self-distillation teacher would do it to the student.
        frozen = [model if isinstance(model, SelfTeacher) else freeze_teacher(model, home, dtype) for model in loaded]
        self.teachers = TeacherSet(names, frozen, self.distillation, self.args.device)
        if sharded:
            self.teachers.fingerprints()  # of the whole weights, before sharding splits them
        self.teachers.models = [model if isinstance(model, SelfTeacher) else self._shard_teacher(model) for model in frozen]
        return self.teachers.feature_model

    def _loaded_teacher(self, teacher_model: PreTrainedModel | str) -> PreTrainedModel:
        if isinstance(teacher_model, str):
            teacher_model = load_model(teacher_model, self.task)
        teacher_task = task_of_model(teacher_model)
        if teacher_task != self.task:
            raise InputError(
                f"the student is a {self.task} model but the teacher is a {teacher_task} model; use a teacher with "
                "the same kind of head"
            )
        return teacher_model

    def _route_rows(self) -> None:
        """``teacher_column``: the teacher names of every dataset's rows become teacher indices, checked now."""
        column = self.distillation.teacher_column
        if not column:
            return
        if self.teachers is None:
            raise InputError(
                f"teacher_column {column!r} routes rows to live teachers; pass teacher_model= (a teacher cache holds "
                "one target for every row), or drop teacher_column"
            )
        names = self.teachers.names
        if self.train_dataset is not None:
            self.train_dataset = route_rows(self.train_dataset, column, names, "train")
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {split: route_rows(data, column, names, split) for split, data in self.eval_dataset.items()}
        elif self.eval_dataset is not None:
            self.eval_dataset = route_rows(self.eval_dataset, column, names, "evaluation")

    def _shard_teacher(self, teacher: PreTrainedModel) -> PreTrainedModel:
        """The frozen teacher, sharded for inference under DeepSpeed ZeRO-3 or FSDP2 (see ``placement.py``)."""
        teacher, callbacks = shard_teacher(self, teacher)
        for callback in callbacks:
            self.add_callback(callback)
        return teacher

    def _shared_output_rows(self, student: PreTrainedModel) -> int | None:
        """The number of output rows both models share (the logits the KD term compares)."""
        if self.cached_teacher is not None:
            rows = output_rows(student)
            if self.cached_teacher.info["vocab_size"] > rows and self.task == "classification":
                raise InputError(f"the teacher cache has {self.cached_teacher.info['vocab_size']} labels, the student {rows}")
            return rows
        if self.teacher is None or (self.cross_tokenizer and self.task != "classification"):
            return None  # across tokenizers the token-level terms compare aligned spans, not rows of one vocabulary
        tokenizer = self.processing_class
        tokenizer_size = len(tokenizer) if tokenizer is not None and hasattr(tokenizer, "__len__") else None
        rows = min(
            shared_output_size(output_rows(student), output_rows(teacher), tokenizer_size, self.task)
            for teacher in self.teachers.models
        )
        if self.task == "classification":
            for teacher in self.teachers.models:
                check_same_labels(student, teacher)
        return rows

    # ---- step-wide counts --------------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Count each term's positions over every micro-batch of the optimizer step (after any sampling)."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        if self.plan.on_policy or self.plan.policy_gradient:  # before counting: the counts describe what is trained on
            student = self.accelerator.unwrap_model(self.model)
            batch_samples, replaced = self.policy.prepare_step(
                batch_samples,
                student,
                self._clock(),
                across_processes=self._counts_are_global(),
                policy_gradient=self.plan.policy_gradient,
            )
            if self.plan.on_policy:
                self._record_terms({"on_policy_batches": torch.tensor(float(replaced), device=device)}, "train")
        counts = torch.stack([torch.stack([mask.sum() for mask in self._positions(batch)]) for batch in batch_samples])
        counts = counts.sum(0).to(device)
        if self._counts_are_global():
            counts = self.accelerator.gather(counts.view(1, 3)).sum(0)
        self._step_counts = counts
        return batch_samples, counts[0]

    def _counts_are_global(self) -> bool:
        return self.args.average_tokens_across_devices and self.args.world_size > 1

    def _clock(self) -> StepClock:
        return StepClock(self.args.seed, self.state.global_step, self.args.gradient_accumulation_steps)

    def _positions(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(target_mask, source_mask, label_mask) of a batch, as the terms below select them (see ``logit_rows``)."""
        source_mask = inputs.get("attention_mask")
        if source_mask is None:
            source_mask = torch.ones_like(inputs["input_ids"])
        rows = logit_rows(self.task, inputs.get("labels"), source_mask, inputs.get(KD_ONLY_COLUMN))
        return rows.distill, source_mask.bool(), rows.labelled

    def _step_positions(self, inputs: dict, num_items_in_batch, training: bool) -> StepPositions:
        target_mask, source_mask, label_mask = self._positions(inputs)
        if training and num_items_in_batch is not None and self._step_counts is not None:
            counts = list(self._step_counts.unbind())
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

    # ---- the step ----------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        student = self.accelerator.unwrap_model(model)
        labels = inputs.get("labels")
        model_inputs = {name: value for name, value in inputs.items() if name not in _NOT_MODEL_INPUTS}
        if self.task == "seq2seq" and "decoder_input_ids" not in model_inputs:
            # Built here rather than by the model so the student skips its own (unused) vocabulary-wide loss.
            model_inputs["decoder_input_ids"] = student.prepare_decoder_input_ids_from_labels(labels=labels)
        training = model.training
        extra_outputs = {}
        if self.plan.needs("hidden_states", training=training):
            extra_outputs["output_hidden_states"] = True
        if self.plan.needs("attentions", training=training):
            extra_outputs["output_attentions"] = True
        if self.task != "classification":
            extra_outputs["use_cache"] = False

        # The relation term's queries, keys and values: hooks around these two forwards only, and only when it is on.
        relations = self.relation_pairs if self.plan.needs("qkv", training=training) else ()
        with capture_self_attention(student, [(each.stacks.student, each.student_layer) for each in relations]) as student_qkv:
            student_outputs = model(**model_inputs, **extra_outputs)
        teacher_outputs, teacher_qkv = None, {}
        if self.teacher is not None and self.plan.needs("teacher_outputs", training=training):
            source = model_inputs
            if TEACHER_COLUMNS["input_ids"] in inputs:  # the teacher's own tokenization of the same texts
                source = {
                    name: inputs[column] for name, column in TEACHER_COLUMNS.items() if column in inputs and name != "labels"
                }
                if self.task == "seq2seq":  # teacher-forced on its own tokenization of the target
                    teacher_labels = inputs[TEACHER_COLUMNS["labels"]]
                    source["decoder_input_ids"] = self.teacher.prepare_decoder_input_ids_from_labels(labels=teacher_labels)
            teacher_layers = [(each.stacks.teacher, each.teacher_layer) for each in relations]
            with torch.no_grad(), capture_self_attention(self.teacher, teacher_layers) as teacher_qkv:
                if self.teachers.plain:
                    teacher_inputs = {k: v for k, v in source.items() if k in self._teacher_input_names}
                    teacher_outputs = self.teacher(**teacher_inputs, **extra_outputs)
                else:
                    teacher_outputs = self._scored_by_teachers(source, inputs, extra_outputs, training)

        positions = self._step_positions(inputs, num_items_in_batch, training=training)
        loss, terms = self.distillation_terms(
            student, student_outputs, teacher_outputs, inputs, positions, training=training, qkv=(student_qkv, teacher_qkv)
        )
        if self.plan.policy_gradient and training:
            policy_terms = self.policy.terms(model, student, inputs, self._clock())
            loss = loss + self._weighted(policy_terms)
            terms.update({name: value.detach() for name, value in policy_terms.items()})
        if training:
            loss = self._stop_or_skip_nonfinite(model, loss, terms)
            observe_step(self.distillation, terms)
            observe_diagnostics(self, terms)
        self._record_terms(terms, "train" if training else "eval")
        if not return_outputs:
            return loss
        # Hidden states and attentions were for the loss only; the evaluation loop must not collect them.
        kept = {key: value for key, value in student_outputs.items() if key not in _FEATURE_OUTPUT_KEYS}
        return loss, type(student_outputs)(**kept)

    def _scored_by_teachers(self, source: dict, inputs: dict, extra_outputs: dict, training: bool):
        """Several teachers (or an offloaded one): their one KD target as logits, beside the feature teacher's
        hidden states or attentions (``TeacherSet.score``); a teacher no term or row of the batch needs does not run."""
        plan = self.plan
        registered = any("teacher_outputs" in term.needs for term in plan.registered if training or not term.training_only)
        return self.teachers.score(
            source,
            extra_outputs,
            route=inputs.get(ROUTE_COLUMN),
            temperature=self.distillation.temperature,
            output_rows=self.output_size,
            target_needed=plan.kd or bool(plan.group("cross_tokenizer")) or registered,
            features_needed=plan.needs("layer_pairs", training=training) or registered,
        )

    def distillation_terms(
        self,
        student,
        student_outputs,
        teacher_outputs,
        inputs: dict,
        positions: StepPositions,
        training: bool = True,
        qkv: tuple[dict, dict] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted loss and every active term but the policy-gradient ones (each divided by its step-wide count,
        detached for logging): the CE / KD row pass, the feature terms, and each registered term. ``qkv``: the
        student's and the teacher's recorded self-attention queries, keys and values (``capture_self_attention``)."""
        loss, terms = self._logit_terms(student_outputs, teacher_outputs, inputs, positions)
        computed = {}
        if self.plan.group("cross_tokenizer"):
            computed.update(self._cross_tokenizer_terms(student_outputs, teacher_outputs, inputs, positions))
        if self.plan.needs_layer_pairs:
            settings, pairs, relations = self.distillation, self.stack_pairs, self.relation_pairs
            teacher_features = teacher_outputs  # or, offline, the cached hidden states standing in for them
            if self.cached_teacher is not None:
                teacher_features = self.cached_teacher.teacher_outputs(inputs, pairs, positions)
            computed.update(
                feature_terms(self.plan, settings, pairs, student, student_outputs, teacher_features, positions, relations, qkv)
            )
        for term in self.plan.registered:
            if training or not term.training_only:
                step = TermInputs(
                    student, self.teacher, student_outputs, teacher_outputs, inputs, positions, self.distillation, training
                )
                computed[term.name] = term.compute(step)
        loss = loss + self._weighted(computed)
        terms.update({name: value.detach() for name, value in computed.items()})
        return loss, terms

    def _logit_terms(self, student_outputs, teacher_outputs, inputs: dict, positions: StepPositions):
        """CE and KD in one chunked pass over the distilled rows (``chunked_kd.ce_kd_row_pass``)."""
        settings, plan = self.distillation, self.plan
        labels = inputs.get("labels")
        if plan.ce and labels is None:
            raise InputError("ce_weight > 0 needs a 'labels' column; set ce_weight=0 to distill without labels")
        row_mask = positions.target_mask
        if self.task == "causal_lm":
            # Position t predicts token t + 1 (logit_rows): rows t < T - 1 of the unshifted logits.
            labels = labels[:, 1:] if labels is not None else None
            row_mask = torch.nn.functional.pad(row_mask, (0, 1), value=False)
        teacher_rows = None
        if plan.kd and inputs.get(CACHE_LOG_PROBS) is not None:
            teacher_rows = CachedTeacherRows(inputs[CACHE_LOG_PROBS], inputs[CACHE_INDICES])
        elif plan.kd:
            if teacher_outputs is None:
                raise InputError(
                    "this batch has no cached teacher rows; attach the teacher cache to every dataset the trainer sees"
                )
            teacher_rows = LiveTeacherRows(teacher_outputs.logits, self.output_size)
        row_labels = None
        if labels is not None:  # a transfer row's pseudo-label is a KD position, not a CE one
            row_labels = labels[positions.target_mask].masked_fill(~positions.label_mask[positions.target_mask], -100)
        return ce_kd_row_pass(
            student_outputs.logits,
            row_mask,
            row_labels,
            teacher_rows,
            ce_weight=settings.ce_weight if plan.ce else 0.0,
            kd_weight=settings.kd_weight if plan.kd else 0.0,
            ce_scale=1.0 / positions.label_count,
            kd_scale=1.0 / positions.target_count,
            divergence=settings.divergence,
            temperature=settings.temperature,
            beta=settings.divergence_beta,
            label_smoothing=self.args.label_smoothing_factor,
            shared_rows=self.output_size,
            chunk_elements=settings.kd_chunk_elements,
            diagnostics=settings.diagnostics,
        )

    def _cross_tokenizer_terms(self, student_outputs, teacher_outputs, inputs: dict, positions: StepPositions) -> dict:
        """ULD and the hybrid's matched KL over the aligned spans of the two tokenizations of the target text.

        Each side's rows are log-softmaxes at the temperature, merged per span by the chain rule (``merge_spans``;
        full-vocabulary rows of both models for the batch, no chunking); each sum is divided by the step's
        distilled student positions (``positions.target_count``), as KD is, so accumulation stays exact.
        """
        settings = self.distillation
        sides = []
        for outputs, labels, spans in (
            (student_outputs, inputs["labels"], inputs[SPAN_COLUMNS["student"]]),
            (teacher_outputs, inputs[TEACHER_COLUMNS["labels"]], inputs[SPAN_COLUMNS["teacher"]]),
        ):
            logits, labels, spans = predicting_rows(self.task, outputs.logits, labels, spans)
            log_probs = torch.nn.functional.log_softmax(logits.float() / settings.temperature, dim=-1)
            sides.append(merge_spans(log_probs, labels, spans))
        mapping, table = self.shared_tokens or (None, None)
        matched_kl_sum, uld_sum = cross_tokenizer_sums(
            *sides,
            mapping=mapping,
            shared_table=table,
            divergence=settings.divergence,
            beta=settings.divergence_beta,
            temperature=settings.temperature,
        )
        sums = {"uld_loss": uld_sum, "matched_kl_loss": matched_kl_sum}
        return {term.name: sums[term.name] / positions.target_count for term in self.plan.group("cross_tokenizer")}

    def _weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor | float:
        """Sum of each planned term times its weight (diagnostics such as teacher_log_likelihood have none)."""
        planned = {term.name: term for term in self.plan.terms}
        return sum(weight_of(planned[name], self.distillation) * value for name, value in terms.items() if name in planned)

    def _stop_or_skip_nonfinite(self, model, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stop (or skip the batch) at the step where a term turns NaN or infinite, before it reaches the weights.

        One flag per micro-batch, reduced over processes so that every process stops at the same step. The weights
        are still those from before this step here, so the checkpoint saved on the way out is a clean one.
        """
        bad = any_nonfinite(loss, terms)
        if self.args.world_size > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if not bool(bad.item()):  # the one device sync of the guard per micro-batch
            return loss
        step = self.state.global_step + 1
        names = nonfinite_terms(loss, terms) or ["loss"]  # empty here when the bad term is another process's
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

    # ---- saving and logging ------------------------------------------------------------------------------------

    def train(self, *args, **kwargs):
        """The Trainer's loop; afterwards the model has its inference ``use_cache`` back (a student copied from a
        teacher trained here must not inherit the training value). A checkpoint resumed from must have been trained
        with this run's teachers (``teachers.json``, written by ``_save_checkpoint``)."""
        resume = kwargs.get("resume_from_checkpoint", args[0] if args else None)
        if resume is True:
            resume = get_last_checkpoint(self.args.output_dir)
        if isinstance(resume, str):
            check_resume_teachers(resume, self.teachers)
        try:
            return super().train(*args, **kwargs)
        finally:
            config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
            if config is not None and self._inference_use_cache is not None:
                config.use_cache = self._inference_use_cache

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, with ``teachers.json`` (the teachers it was trained with) written before the
        Trainer's files, so a complete checkpoint always holds it."""
        if self.teachers is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            write_teacher_record(folder, self.teachers)
        super()._save_checkpoint(model, trial)

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
        if mode == "train":
            logs.update(scheduled_logs(self.distillation))  # the scheduled and balanced values the step trained with
            logs.update(diagnostics_logs(self))  # each term's share of the loss since the last log
        super().log(logs, *args, **kwargs)


def check_plan(plan: TermPlan, task: str, teacher_model, teacher_cache, settings, train_dataset) -> None:
    """The run's terms against what it was given, before any weight is loaded or moved."""
    if teacher_cache is not None:
        # A cached teacher replaces the live one for KD, and for the hidden-state and norm terms when it holds them.
        if teacher_model is not None:
            raise InputError("pass either teacher_model or teacher_cache, not both")
        check_cache_temperature(settings)
        teacher_cache.check_terms(settings)
        if teacher_cache.temperature != settings.temperature:
            raise InputError(
                f"the teacher cache is at temperature {teacher_cache.temperature}, the run at {settings.temperature}"
            )
    elif teacher_model is None and plan.needs_teacher:
        on = describe_weights(settings, "teacher")
        listed = on[0] if len(on) == 1 else f"{', '.join(on[:-1])} and {on[-1]}"
        verb, pronoun = ("needs", "it") if len(on) == 1 else ("need", "them")
        raise InputError(f"teacher_model is required: {listed} {verb} the teacher; pass teacher_model= or set {pronoun} to 0")
    if plan.policy_gradient or plan.on_policy:
        if task != "causal_lm":
            raise InputError(
                f"policy-gradient and on-policy distillation sample continuations of causal LMs; this is a {task} "
                "run: set policy_gradient_weight and on_policy_fraction to 0"
            )
        if teacher_model is None:
            raise InputError("policy-gradient and on-policy distillation score fresh samples, so they need the live teacher")
        if plan.on_policy and not plan.kd:
            raise InputError("on_policy_fraction > 0 replaces completions for the KD term; set kd_weight > 0")
    # No term would have a row to learn from: it would log loss 0 and "finish". Only classification data gets here:
    # its unlabelled rows (-100) have no CE row but are distilled, while the data module refuses seq2seq and causal-LM
    # splits whose every target is empty.
    if task != "classification" or plan.uses_unlabelled_rows or not isinstance(train_dataset, Dataset):
        return
    if "labels" in train_dataset.column_names and len(train_dataset) and all(label == -100 for label in train_dataset["labels"]):
        raise InputError(
            f"every one of the {len(train_dataset)} training rows is unlabelled (-1 or an empty label) and the only active "
            "term, CE, needs labels: label the rows, or set --kd_weight > 0 to distill them from the teacher"
        )


def _has_teacher_columns(dataset) -> bool:
    return isinstance(dataset, Dataset) and TEACHER_COLUMNS["input_ids"] in dataset.column_names


# What a term reads position by position: meaningless when the two models read different tokenizations.
_POSITION_NEEDS = ("hidden_states", "attentions", "qkv")


def check_cross_tokenizer_plan(task: str, settings, cross_tokenizer: bool) -> None:
    """A teacher reading its own tokenization shares the labels (classification) or the target text (token-level
    tasks, through the aligned spans) with the student, never the token positions or the vocabulary rows."""
    span_terms = describe_weights(settings, "target_spans")
    if not cross_tokenizer:
        if span_terms:
            raise InputError(
                f"{', '.join(span_terms)}: these terms compare two tokenizations, and the student reads the teacher's "
                "tokenizer; use --kd_weight (or give the student a tokenizer of its own)"
            )
        return
    if task == "classification" and span_terms:
        raise InputError(
            f"{', '.join(span_terms)} compare tokens; a classifier's labels are shared, so use --kd_weight across "
            "tokenizers and set them to 0"
        )
    if task != "classification" and plan_terms(settings).kd:
        raise InputError(
            f"kd_weight = {settings.kd_weight:g} compares the two models' vocabulary rows position by position, and "
            "the student's tokenizer differs from the teacher's: set --kd_weight 0 and use --uld_weight (universal "
            "logit distillation on aligned spans) and/or --matched_kl_weight (exact KL where both realized the same "
            "token), or sequence-level KD (pseudo_label, then train on the teacher's texts)"
        )
    on = list(dict.fromkeys(entry for need in _POSITION_NEEDS for entry in describe_weights(settings, need)))
    if on:
        raise InputError(
            f"{', '.join(on)}: feature terms compare the two models position by position, and the student's and the "
            "teacher's tokenizations have different positions (different tokenizers); set "
            f"{'it' if len(on) == 1 else 'them'} to 0 ("
            + (
                "logit KD on the labels works across tokenizers)"
                if task == "classification"
                else "--uld_weight and --matched_kl_weight compare spans of the target text aligned across tokenizers)"
            )
        )


def check_same_labels(student: PreTrainedModel, teacher: PreTrainedModel) -> None:
    """Both classifiers name the same label at each row, when both name their labels at all."""
    student_labels, teacher_labels = has_trained_labels(student.config), has_trained_labels(teacher.config)
    if student_labels and teacher_labels and student_labels != teacher_labels:
        raise InputError(
            f"the student's labels {student_labels} are not the teacher's {teacher_labels}; give the student the "
            "teacher's id2label / label2id"
        )


class DistillationTrainer(DistillationMixin, Trainer):
    """`transformers.Trainer` that distills ``teacher_model=`` into ``model`` (classification and causal LMs).

    Use :class:`~seq2seq_distill.arguments.DistillationTrainingArguments` for the distillation settings; plain
    `TrainingArguments` give the defaults (0.5 CE + 0.5 forward KL at T = 2).
    """


class Seq2SeqDistillationTrainer(DistillationMixin, Seq2SeqTrainer):
    """`transformers.Seq2SeqTrainer` with distillation; generation-based evaluation is the Seq2SeqTrainer's own."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        """With ``predict_with_generate``: the run's distillation loss (``compute_loss``) as the eval loss, and the
        Seq2SeqTrainer's generation from the model inputs only.

        The Seq2SeqTrainer would score the student's own CE, so eval_loss (and --metric_for_best_model loss) would
        change meaning with the flag and the eval terms would not be logged, and it hands every column to
        ``generate``, which refuses the cached teacher rows and the transfer-set mark.
        """
        if not self.args.predict_with_generate or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        inputs = self._prepare_inputs(inputs)
        loss = None
        if "labels" in inputs:
            loss, _, _ = super().prediction_step(model, inputs, prediction_loss_only=True, ignore_keys=ignore_keys)
        # Without labels (and the decoder inputs the collator built from them) the Seq2SeqTrainer only generates.
        dropped = (*_NOT_MODEL_INPUTS, "decoder_input_ids", "decoder_attention_mask")
        generation_inputs = {name: value for name, value in inputs.items() if name not in dropped}
        _, generated, _ = super().prediction_step(model, generation_inputs, False, ignore_keys=ignore_keys, **gen_kwargs)
        return loss, generated, inputs.get("labels")
