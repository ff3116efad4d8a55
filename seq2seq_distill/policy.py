"""Policy-gradient and on-policy distillation for causal LMs: sampling, rewards, returns and penalties.

Policy-gradient distillation (in the style of MiniLLM) treats the student as a policy: it samples continuations of
the prompts, each sampled token is rewarded with the teacher's log-probability of it, rewards become discounted
returns normalized over the batch, and the student follows ``-w * A * log p_student(token)``. Sampling draws from a
mixture ``alpha * p_teacher + (1 - alpha) * p_student`` (at a sampling temperature), which keeps early, poor
students from wandering off; the importance weight ``w = p_student / p_mixture`` (clipped) corrects for it. Three
optional penalties on the student's distributions at the sampled positions push against degenerate text: token
frequency (the same tokens over-used across a sequence), diversity (the tokens of a sequence too alike in embedding
space) and entropy (over-confident predictions).

On-policy distillation (GKD) instead replaces the completions of some batches with the student's own samples and
applies the usual divergence to the teacher on them. The pieces are plain functions that tests call on tensors;
:class:`PolicyDistillation` puts them in order (sample every micro-batch of a step, count, then the terms), and the
trainer calls it at two points. The module holds the whole algorithm on purpose (about 470 lines): its order is
read in one place, and the trainer only calls it.

Randomness: every sampling call gets its own generator, seeded by :func:`sampling_seed` from the run's seed, the
optimizer step, the kind of draw and the micro-batch index, so a resumed run samples what it would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def prompts_of(input_ids: torch.Tensor, labels: torch.Tensor, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts of a prompt + completion batch (positions before the first label), left-padded for generation."""
    supervised = labels != -100
    lengths = torch.where(supervised.any(1), supervised.float().argmax(1), (input_ids != pad_token_id).sum(1))
    width = max(int(lengths.max()), 1)
    prompt_ids = input_ids.new_full((input_ids.shape[0], width), pad_token_id)
    prompt_mask = torch.zeros_like(prompt_ids)
    for row, length in enumerate(lengths.tolist()):
        if length:
            prompt_ids[row, width - length :] = input_ids[row, :length]
            prompt_mask[row, width - length :] = 1
    return prompt_ids, prompt_mask


# The kinds of draw a step makes; each has its own generators, so no two can share a stream.
SAMPLING_STREAMS = ("on_policy_draws", "on_policy", "policy_gradient")
_MASK32 = 0xFFFFFFFF


def _mix32(value: int) -> int:
    """MurmurHash3's 32-bit finalizer: an invertible scramble of 32-bit integers (distinct in, distinct out)."""
    value &= _MASK32
    value ^= value >> 16
    value = (value * 0x85EBCA6B) & _MASK32
    value ^= value >> 13
    value = (value * 0xC2B2AE35) & _MASK32
    return value ^ (value >> 16)


def sampling_seed(run_seed: int, step: int, stream: str, index: int, slots: int) -> int:
    """The generator seed of draw ``index`` (a micro-batch, ``0 <= index < slots``) of ``stream`` at optimizer ``step``.

    ``(step, stream, index)`` is packed into one integer with no overlap, offset by the scrambled run seed and
    scrambled again; both maps are bijections of 32-bit integers, so within a run no two (step, stream, micro-batch)
    share a seed for the first ``2**32 // (len(SAMPLING_STREAMS) * slots)`` steps. The seed is 32 bits because a CPU
    ``torch.Generator`` keeps only the low 32 bits of whatever it is seeded with.
    """
    if not 0 <= index < slots:
        raise ValueError(f"draw index {index} is outside 0..{slots - 1}")
    packed = (step * len(SAMPLING_STREAMS) + SAMPLING_STREAMS.index(stream)) * slots + index
    return _mix32(packed + _mix32(run_seed))


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


@dataclass
class Samples:
    """Continuations sampled for a batch of prompts."""

    sequences: torch.Tensor  # [B, P + L] left-padded prompt followed by the continuation
    attention_mask: torch.Tensor  # [B, P + L]
    response_mask: torch.Tensor  # [B, L] 1 up to and including the first EOS
    teacher_log_probs: torch.Tensor  # [B, L] log p_teacher(token) at temperature 1: the immediate reward
    sampling_log_probs: torch.Tensor  # [B, L] log of the probability the token was drawn with
    prompt_width: int
    teacher_step_log_probs: torch.Tensor | None = None  # [B, L, V] the teacher's whole next-token distribution


@dataclass
class StepSamples:
    """One micro-batch's policy-gradient samples, with what they share with the rest of the optimizer step."""

    samples: Samples
    advantages: torch.Tensor  # [B, L] future returns normalized over every sampled token of the step
    token_count: torch.Tensor  # sampled tokens of the step (the pg loss and entropy penalty divide by it)
    sequence_count: torch.Tensor  # sampled sequences of the step (the per-sequence penalties divide by it)


@torch.no_grad()
def sample_continuations(
    student,
    teacher,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    teacher_mix: float = 0.0,
    eos_token_id: int | None,
    pad_token_id: int,
    generator: torch.Generator | None = None,
) -> Samples:
    """Sample from ``teacher_mix * p_teacher + (1 - teacher_mix) * p_student``, both at ``temperature``.

    Both models decode incrementally with their key/value caches. ``teacher`` may be None when ``teacher_mix`` is 0
    and no reward is needed (``teacher_log_probs`` is then zeros).
    """
    batch, width = prompt_ids.shape
    models = [student] + ([teacher] if teacher is not None else [])
    caches: list = [None] * len(models)
    tokens, mask = prompt_ids, prompt_mask
    step_inputs, step_positions = prompt_ids, position_ids_of(prompt_mask)
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    chosen, reward_rows, sampling_rows, alive_rows, teacher_rows = [], [], [], [], []
    for _ in range(max_new_tokens):
        logits = []
        for index, model in enumerate(models):
            output = model(
                input_ids=step_inputs,
                attention_mask=mask,
                position_ids=step_positions,
                past_key_values=caches[index],
                use_cache=True,
            )
            caches[index] = output.past_key_values
            logits.append(output.logits[:, -1].float())
        student_probs = torch.softmax(logits[0] / temperature, -1)
        if teacher is not None and teacher_mix > 0:
            sampling_probs = teacher_mix * torch.softmax(logits[1] / temperature, -1) + (1 - teacher_mix) * student_probs
        else:
            sampling_probs = student_probs
        token = torch.multinomial(sampling_probs, 1, generator=generator).squeeze(-1)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        alive_rows.append(~finished)
        chosen.append(token)
        sampling_rows.append(sampling_probs.gather(-1, token[:, None]).squeeze(-1).clamp_min(1e-30).log())
        if teacher is not None:
            teacher_rows.append(torch.log_softmax(logits[1], -1))
            reward_rows.append(teacher_rows[-1].gather(-1, token[:, None]).squeeze(-1))
        if eos_token_id is not None:
            finished = finished | (token == eos_token_id)
        tokens = torch.cat([tokens, token[:, None]], 1)
        mask = torch.cat([mask, (alive_rows[-1]).long()[:, None]], 1)
        step_inputs, step_positions = token[:, None], position_ids_of(mask)[:, -1:]
        if bool(finished.all()):
            break
    response_mask = torch.stack(alive_rows, 1).long()
    zeros = torch.zeros_like(response_mask, dtype=torch.float32)
    return Samples(
        sequences=tokens,
        attention_mask=mask,
        response_mask=response_mask,
        teacher_log_probs=torch.stack(reward_rows, 1) if reward_rows else zeros,
        sampling_log_probs=torch.stack(sampling_rows, 1),
        prompt_width=width,
        teacher_step_log_probs=torch.stack(teacher_rows, 1) if teacher_rows else None,
    )


def response_logits(model, samples: Samples) -> torch.Tensor:
    """``[B, L, V]`` logits of the model at the positions that predicted each sampled token (with gradients)."""
    logits = model(
        input_ids=samples.sequences,
        attention_mask=samples.attention_mask,
        position_ids=position_ids_of(samples.attention_mask),
        use_cache=False,
    ).logits
    steps = samples.response_mask.shape[1]
    return logits[:, samples.prompt_width - 1 : samples.prompt_width - 1 + steps]


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """``R_t = r_t + discount * R_{t+1}`` along each row, over the masked (real) steps only."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for step in range(rewards.shape[1] - 1, -1, -1):
        running = (rewards[:, step] + discount * running) * mask[:, step]
        returns[:, step] = running
    return returns


def normalize(
    values: torch.Tensor,
    mask: torch.Tensor,
    eps: float = 1e-6,
    *,
    mean: torch.Tensor | None = None,
    variance: torch.Tensor | None = None,
) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries (the batch's baseline and scale).

    Give ``mean`` and ``variance`` to normalize with moments taken over more than this batch (the trainer passes
    those of every sampled token of the optimizer step).
    """
    mask = mask.float()
    count = mask.sum().clamp_min(1)
    if mean is None:
        mean = (values * mask).sum() / count
    if variance is None:
        variance = ((values - mean).pow(2) * mask).sum() / count
    return (values - mean) / (variance.sqrt() + eps) * mask


def future_returns(rewards: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """``discount * R_{t+1}``: what the tokens after step t earned, the part a single step cannot see."""
    returns = discounted_returns(rewards, mask, discount)
    return torch.nn.functional.pad(returns[:, 1:], (0, 1)) * discount * mask


def policy_gradient_loss(
    student_log_probs: torch.Tensor,
    student_step_probs: torch.Tensor,
    teacher_step_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    importance: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Summed over the masked steps: ``-w * (E_{v~p_student}[log p_teacher(v)] + A * log p_student(token))``.

    The first part is the expected immediate reward of each step, computed exactly over the vocabulary (MiniLLM's
    single-step decomposition, differentiable through ``student_step_probs [B, L, V]``), which removes most of the
    sampling variance; the second is REINFORCE on the normalized long-term returns ``advantages [B, L]`` of the
    sampled tokens, whose log-probabilities are ``student_log_probs [B, L]``. ``importance`` corrects for sampling
    from a mixture with the teacher.
    """
    weights = importance.detach() * mask
    single_step = (student_step_probs * teacher_step_log_probs.detach()).sum(-1)
    return -(weights * (single_step + advantages.detach() * student_log_probs)).sum()


def token_frequency_penalty(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sequence, the chance that two of its positions pick the same token, ``sum_v mean_t p(v|t)^2``; summed.

    ``probs`` is ``[B, L, V]``. Near 1 when a sequence keeps predicting the same tokens, near 1/V when it spreads.
    """
    weights = mask.float()
    average = (probs * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)
    return (average.pow(2).sum(-1) * (weights.sum(1) > 0)).sum()


def diversity_penalty(probs: torch.Tensor, mask: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Per sequence, the mean cosine similarity between the expected embeddings of its positions; summed.

    ``probs`` ``[B, L, V]``, ``embeddings`` ``[V, D]`` (the student's token embeddings, not trained by this term).
    A sequence whose tokens all mean the same thing scores near 1.
    """
    expected = F.normalize(probs @ embeddings.detach().float(), dim=-1)  # [B, L, D]
    similarity = expected @ expected.transpose(1, 2)  # [B, L, L]
    weights = mask.float()
    pairs = weights[:, :, None] * weights[:, None, :] * (1 - torch.eye(weights.shape[1], device=weights.device))
    return ((similarity * pairs).sum((1, 2)) / pairs.sum((1, 2)).clamp_min(1)).sum()


def entropy_penalty(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed over positions: ``1 - H(p) / log V``, 0 for a uniform prediction, 1 for a certain one."""
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    return ((1 - entropy / math.log(probs.shape[-1])) * mask.float()).sum()


def completions_from(samples: Samples, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt + sampled continuation per row, right-padded, with labels on the continuation only (for on-policy KD)."""
    rows, labels = [], []
    prompt_part = samples.attention_mask[:, : samples.prompt_width].bool()
    for row in range(samples.sequences.shape[0]):
        prompt = samples.sequences[row, : samples.prompt_width][prompt_part[row]]
        response = samples.sequences[row, samples.prompt_width :][samples.response_mask[row].bool()]
        rows.append(torch.cat([prompt, response]))
        labels.append(torch.cat([torch.full_like(prompt, -100), response]))
    width = max(len(row) for row in rows)
    input_ids = samples.sequences.new_full((len(rows), width), pad_token_id)
    label_ids = samples.sequences.new_full((len(rows), width), -100)
    attention_mask = torch.zeros_like(input_ids)
    for index, (row, label) in enumerate(zip(rows, labels, strict=True)):
        input_ids[index, : len(row)] = row
        label_ids[index, : len(row)] = label
        attention_mask[index, : len(row)] = 1
    return input_ids, attention_mask, label_ids


# ---- the algorithm, as the trainer calls it ---------------------------------------------------------------------

# Batch field added to each micro-batch of a policy-gradient step: its StepSamples.
PG_SAMPLES = "policy_gradient_samples"


@dataclass(frozen=True)
class StepClock:
    """Where sampling stands: the run's seed, the optimizer step, and the micro-batches per step (the slots)."""

    seed: int
    step: int
    slots: int

    def generator(self, stream: str, index: int, device) -> torch.Generator:
        """Randomness tied to the run's seed, the step, the kind of draw and the micro-batch index (never to how many
        calls this process made), so a resumed run samples what the uninterrupted one would have; no two
        micro-batches or kinds of draw of a process share a stream (see :func:`sampling_seed`). The rank is not in
        the seed: under DDP each process samples its own prompts with the same streams, as one process would."""
        generator = torch.Generator(device=device)
        generator.manual_seed(sampling_seed(self.seed, self.step, stream, index, self.slots))
        return generator


class PolicyDistillation:
    """Policy-gradient (MiniLLM-style) and on-policy (GKD) distillation of causal LMs, whole.

    The trainer calls it at two points: :meth:`prepare_step` once per optimizer step with every micro-batch (on-policy
    batches replace completions with the student's samples; policy-gradient samples of all micro-batches are drawn
    and counted together, so their terms are step-wide), and :meth:`terms` per micro-batch for the differentiable
    terms. ``accelerator`` (the trainer's) gathers the step's sums across processes and knows their number.
    """

    def __init__(self, settings, teacher, tokenizer, accelerator=None):
        self.settings = settings
        self.teacher = teacher
        self.tokenizer = tokenizer
        self.accelerator = accelerator

    def special_ids(self, student) -> tuple[int, int | None]:
        eos = getattr(self.tokenizer, "eos_token_id", None) or student.generation_config.eos_token_id
        pad = getattr(self.tokenizer, "pad_token_id", None)
        pad = pad if pad is not None else (student.config.pad_token_id if student.config.pad_token_id is not None else eos)
        return pad, eos

    def prepare_step(
        self, batch_samples: list[dict], student, clock: StepClock, *, across_processes: bool, policy_gradient: bool
    ) -> tuple[list[dict], int]:
        """The step's micro-batches as trained on, and how many became on-policy batches."""
        replaced = 0
        if self.settings.on_policy_fraction > 0:
            batch_samples, replaced = self.on_policy_batches(batch_samples, student, clock)
        if policy_gradient:
            drawn = self.policy_gradient_samples(batch_samples, student, clock, across_processes=across_processes)
            batch_samples = [{**batch, PG_SAMPLES: samples} for batch, samples in zip(batch_samples, drawn, strict=True)]
        return batch_samples, replaced

    @torch.no_grad()
    def on_policy_batches(self, batch_samples: list[dict], student, clock: StepClock) -> tuple[list[dict], int]:
        """GKD: with probability on_policy_fraction a micro-batch's completions become the student's own samples."""
        settings = self.settings
        pad, _ = self.special_ids(student)
        draws = torch.rand(len(batch_samples), generator=clock.generator("on_policy_draws", 0, "cpu"))
        replaced, count = [], 0
        for index, (batch, draw) in enumerate(zip(batch_samples, draws.tolist(), strict=True)):
            if draw < settings.on_policy_fraction:
                prompt_ids, prompt_mask = prompts_of(batch["input_ids"], batch["labels"], pad)
                samples = self.sample(
                    student,
                    None,
                    prompt_ids,
                    prompt_mask,
                    settings.on_policy_max_new_tokens,
                    settings.on_policy_temperature,
                    0.0,
                    clock.generator("on_policy", index, prompt_ids.device),
                )
                input_ids, attention_mask, labels = completions_from(samples, pad)
                batch = {**batch, "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
                count += 1
            replaced.append(batch)
        return replaced, count

    def sample(self, student, teacher, prompt_ids, prompt_mask, max_new_tokens, temperature, teacher_mix, generator) -> Samples:
        pad, eos = self.special_ids(student)
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
                generator=generator,
            )
        finally:
            student.train(was_training)

    @torch.no_grad()
    def policy_gradient_samples(
        self, batch_samples: list[dict], student, clock: StepClock, *, across_processes: bool
    ) -> list[StepSamples]:
        """Sample every micro-batch's prompts (micro-batch i from stream ``policy_gradient``, index i), reward the
        tokens with the teacher, and normalize the future returns with the moments of all of them together."""
        settings = self.settings
        pad, _ = self.special_ids(student)
        drawn = []
        for index, batch in enumerate(batch_samples):
            prompt_ids, prompt_mask = prompts_of(batch["input_ids"], batch["labels"], pad)
            drawn.append(
                self.sample(
                    student,
                    self.teacher,
                    prompt_ids,
                    prompt_mask,
                    settings.pg_max_new_tokens,
                    settings.pg_sample_temperature,
                    settings.pg_teacher_mix,
                    clock.generator("policy_gradient", index, prompt_ids.device),
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

    def terms(self, model, student, inputs: dict, clock: StepClock) -> dict[str, torch.Tensor]:
        """The policy-gradient loss and penalties of a micro-batch's samples (rewarded by the teacher), unweighted.

        Sums are divided by the step's sampled tokens (sampled sequences, for the per-sequence penalties) that
        :meth:`prepare_step` counted, so the micro-batches of a step add up to what the step gives as one batch.
        A batch without ``PG_SAMPLES`` (a direct call) is sampled here and normalized within itself.
        ``teacher_log_likelihood`` is a diagnostic (no weight): the teacher's mean log-probability of the samples.
        """
        settings = self.settings
        step_samples = inputs.get(PG_SAMPLES)
        if step_samples is None:
            (step_samples,) = self.policy_gradient_samples([inputs], student, clock, across_processes=False)
        samples, advantages = step_samples.samples, step_samples.advantages
        token_count, sequence_count = step_samples.token_count, step_samples.sequence_count
        log_probs = torch.log_softmax(response_logits(model, samples).float(), -1)
        mask = samples.response_mask
        tokens = samples.sequences[:, samples.prompt_width :]
        token_log_probs = log_probs.gather(-1, tokens[..., None]).squeeze(-1)
        importance = (token_log_probs.detach() - samples.sampling_log_probs).exp().clamp(max=settings.pg_importance_clip)
        probs = log_probs.exp()
        teacher_step_rows = samples.teacher_step_log_probs[..., : probs.shape[-1]]
        student_step_rows = probs[..., : teacher_step_rows.shape[-1]]
        pg = policy_gradient_loss(token_log_probs, student_step_rows, teacher_step_rows, advantages, importance, mask)
        terms = {"pg_loss": pg / token_count}
        if settings.token_frequency_penalty:
            terms["token_frequency_penalty"] = token_frequency_penalty(probs, mask) / sequence_count
        if settings.diversity_penalty:
            embeddings = student.get_input_embeddings().weight
            terms["diversity_penalty"] = diversity_penalty(probs, mask, embeddings) / sequence_count
        if settings.entropy_penalty:
            terms["entropy_penalty"] = entropy_penalty(probs, mask) / token_count
        # Also per step-wide token: the micro-batches of a step add up to the step's mean (logged per step).
        terms["teacher_log_likelihood"] = ((samples.teacher_log_probs * mask).sum() / token_count).detach()
        return terms
