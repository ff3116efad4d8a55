"""Causal-LM distillation: divergences on the completion only, policy-gradient distillation, penalties, on-policy batches."""

import copy
import math

import pytest
import torch
from helpers import GradientRecorder, causal_dataset, distillation_trainer

import seq2seq_distill.policy as policy_module
import seq2seq_distill.trainer as trainer_module
from seq2seq_distill import DistillationTrainer, DistillationTrainingArguments, create_student
from seq2seq_distill.errors import InputError
from seq2seq_distill.losses import DIVERGENCES
from seq2seq_distill.policy import (
    SAMPLING_STREAMS,
    Samples,
    completions_from,
    discounted_returns,
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

PAD = 0


def trainer_for(tiny, tokenizer_for, tmp_path, *, teacher=None, student=None, size=8, **settings):
    tokenizer = tokenizer_for("gpt2")
    teacher = teacher if teacher is not None else tiny("gpt2", layers=4, hidden=32)
    student = student if student is not None else create_student(teacher, num_layers=2)
    return distillation_trainer(
        "causal_lm", tokenizer, student, teacher, tmp_path, causal_dataset(tokenizer, size=size), **settings
    )


# ---- the loss mask and the divergences on causal LMs ------------------------------------------------------------


@pytest.mark.parametrize("divergence", sorted(DIVERGENCES))
def test_causal_kd_matches_a_direct_computation_on_completion_tokens(divergence, tiny, tokenizer_for, tmp_path):
    teacher = tiny("gpt2", layers=4, hidden=32, tie_word_embeddings=False)
    teacher.lm_head.weight.data *= 10  # sharper than a random init, so the KL is large enough to compare closely
    student = create_student(teacher, num_layers=2, hidden_dim=16)  # fresh, not a copy of the teacher
    trainer = trainer_for(
        tiny,
        tokenizer_for,
        tmp_path,
        teacher=teacher,
        student=student,
        ce_weight=0.0,
        kd_weight=1.0,
        divergence=divergence,
        divergence_beta=0.3,
        temperature=1.5,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    student, teacher = trainer.model.eval(), trainer.teacher
    with torch.no_grad():
        loss = trainer.compute_loss(student, batch).item()
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if labels[b, t] == -100:  # prompt and padding positions never count
                continue
            p = torch.softmax(t_logits[b, t] / 1.5, -1).double()
            q = torch.softmax(s_logits[b, t] / 1.5, -1).double()
            kl = lambda a, c: float((a * (a.log() - c.log())).sum())
            if divergence == "forward_kl":
                value = kl(p, q)
            elif divergence == "reverse_kl":
                value = kl(q, p)
            elif divergence == "js":
                m = (p + q) / 2
                value = 0.5 * kl(p, m) + 0.5 * kl(q, m)
            elif divergence == "generalized_jsd":
                m = 0.3 * p + 0.7 * q
                value = 0.3 * kl(p, m) + 0.7 * kl(q, m)
            elif divergence == "skew_kl":
                value = kl(p, 0.3 * p + 0.7 * q)
            elif divergence == "skew_reverse_kl":
                value = kl(q, 0.3 * q + 0.7 * p)
            else:  # a divergence registered by another test
                continue
            total += value * 1.5**2
            count += 1
    if count:
        assert loss == pytest.approx(total / count, rel=1e-4)


def test_prompt_and_padding_positions_do_not_enter_the_loss(tiny, tokenizer_for, tmp_path):
    trainer = trainer_for(tiny, tokenizer_for, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    positions = trainer._step_positions(batch, None, training=False)

    class Outputs(dict):
        logits = property(lambda self: self["logits"])

    torch.manual_seed(0)
    shape = (*batch["input_ids"].shape, len(tokenizer_for("gpt2")))
    student_logits, teacher_logits = torch.randn(shape), torch.randn(shape)
    _, base = trainer.distillation_terms(
        trainer.model, Outputs(logits=student_logits), Outputs(logits=teacher_logits), batch, positions
    )
    # position t predicts token t + 1: a position whose next label is -100 (prompt or padding) must not matter
    ignored = torch.nn.functional.pad(batch["labels"][:, 1:] == -100, (0, 1), value=True)
    garbage_s, garbage_t = student_logits.clone(), teacher_logits.clone()
    garbage_s[ignored], garbage_t[ignored] = 1e4, -1e4
    _, changed = trainer.distillation_terms(trainer.model, Outputs(logits=garbage_s), Outputs(logits=garbage_t), batch, positions)
    assert {k: v.item() for k, v in changed.items()} == pytest.approx({k: v.item() for k, v in base.items()})
    assert ignored.any() and (~ignored).any()


# ---- pure pieces ----------------------------------------------------------------------------------------------------


def test_prompts_are_left_padded_prompt_positions():
    input_ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, 9], [-100, 6, 7, -100, -100]])
    prompt_ids, prompt_mask = prompts_of(input_ids, labels, PAD)
    assert prompt_ids.tolist() == [[5, 6], [0, 5]] and prompt_mask.tolist() == [[1, 1], [0, 1]]


def test_returns_and_normalization_match_hand_computation():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    returns = discounted_returns(rewards, mask, 0.5)
    assert returns.tolist() == [[1 + 0.5 * (2 + 0.5 * 3), 2 + 0.5 * 3, 3.0], [4 + 0.5 * 5, 5.0, 0.0]]
    assert future_returns(rewards, mask, 0.5).tolist() == [[0.5 * (2 + 1.5), 0.5 * 3, 0.0], [0.5 * 5, 0.0, 0.0]]
    normalized = normalize(returns, mask)
    kept = normalized[mask.bool()]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-6) and kept.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)
    assert normalized[1, 2].item() == 0.0


def policy_step(teacher_probs, advantage):
    """One gradient step of the policy-gradient loss on uniform logits, sampled token 1; returns (loss, new probs)."""
    logits = torch.zeros(1, 1, 3, requires_grad=True)
    probs = torch.softmax(logits, -1)
    loss = policy_gradient_loss(
        torch.log(probs[..., 1]),
        probs,
        torch.log(torch.tensor([[teacher_probs]])),
        torch.tensor([[advantage]]),
        torch.tensor([[0.5]]),
        torch.tensor([[1]]),
    )
    (gradient,) = torch.autograd.grad(loss, logits)
    return loss.item(), torch.softmax(logits - 0.5 * gradient, -1)[0, 0].detach()


def test_policy_gradient_loss_matches_hand_computation():
    loss, _ = policy_step([0.7, 0.2, 0.1], 2.0)
    assert loss == pytest.approx(-0.5 * (sum(math.log(p) / 3 for p in (0.7, 0.2, 0.1)) + 2.0 * math.log(1 / 3)), rel=1e-6)


def test_single_step_part_moves_mass_to_the_teachers_token_and_advantages_to_the_sampled_one():
    _, stepped = policy_step([0.7, 0.2, 0.1], 0.0)  # no long-term signal: only the exact expected reward acts
    assert stepped[0] > 1 / 3 > stepped[2]
    _, stepped = policy_step([1 / 3, 1 / 3, 1 / 3], 2.0)  # an indifferent teacher: only the advantage acts
    assert stepped[1] > 1 / 3 and stepped[0] == pytest.approx(stepped[2])
    _, stepped = policy_step([1 / 3, 1 / 3, 1 / 3], -2.0)
    assert stepped[1] < 1 / 3


@pytest.mark.parametrize("penalty", ["frequency", "diversity", "entropy"])
def test_each_penalty_is_higher_for_degenerate_predictions(penalty):
    vocab, length = 6, 4
    mask = torch.ones(1, length)
    repetitive = torch.full((1, length, vocab), 0.01)
    repetitive[..., 2] = 1 - 0.01 * (vocab - 1)  # every position is sure of the same token
    varied = torch.full((1, length, vocab), 0.05)
    for position in range(length):
        varied[0, position, position] = 1 - 0.05 * (vocab - 1)  # a different token at each position
    uniform = torch.full((1, length, vocab), 1 / vocab)
    embeddings = torch.eye(vocab)
    if penalty == "frequency":
        assert token_frequency_penalty(repetitive, mask) > token_frequency_penalty(varied, mask)
    elif penalty == "diversity":
        assert diversity_penalty(repetitive, mask, embeddings) > diversity_penalty(varied, mask, embeddings)
        assert diversity_penalty(repetitive, mask, embeddings).item() == pytest.approx(1.0, abs=1e-6)
    else:
        assert entropy_penalty(repetitive, mask) > entropy_penalty(uniform, mask)
        assert entropy_penalty(uniform, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_sampling_stops_at_eos_and_follows_the_teacher_when_mixed_fully(tiny, tokenizer_for):
    tokenizer = tokenizer_for("gpt2")
    student, teacher = (
        tiny("gpt2", layers=2, hidden=16, seed=0),
        tiny("gpt2", layers=2, hidden=16, seed=1, tie_word_embeddings=False),
    )
    teacher.lm_head.weight.data *= 200  # a nearly deterministic teacher
    prompt_ids = torch.tensor([[7, 8, 9], [0, 11, 12]])
    prompt_mask = (prompt_ids != 0).long()
    kwargs = dict(max_new_tokens=6, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    fully_teacher = sample_continuations(
        student, teacher, prompt_ids, prompt_mask, teacher_mix=1.0, generator=torch.Generator().manual_seed(0), **kwargs
    )
    greedy = teacher.generate(prompt_ids[:1], attention_mask=prompt_mask[:1], max_new_tokens=6, do_sample=False, pad_token_id=0)
    sampled = fully_teacher.sequences[0, 3:]
    assert sampled.tolist() == greedy[0, 3 : 3 + len(sampled)].tolist()
    assert fully_teacher.teacher_log_probs.shape == fully_teacher.response_mask.shape
    again = sample_continuations(
        student, teacher, prompt_ids, prompt_mask, teacher_mix=0.3, generator=torch.Generator().manual_seed(5), **kwargs
    )
    same = sample_continuations(
        student, teacher, prompt_ids, prompt_mask, teacher_mix=0.3, generator=torch.Generator().manual_seed(5), **kwargs
    )
    assert torch.equal(again.sequences, same.sequences)
    eos = tokenizer.eos_token_id
    for row, mask in zip(again.sequences[:, 3:], again.response_mask):
        tokens = row[: int(mask.sum())].tolist()
        assert eos not in tokens[:-1]  # nothing is kept after the first EOS
    input_ids, attention_mask, labels = completions_from(again, 0)
    assert input_ids[1, :2].tolist() == [11, 12] and labels[1, :2].tolist() == [-100, -100]


# ---- the trainer ----------------------------------------------------------------------------------------------------


def sharp_teacher(tiny):
    teacher = tiny("gpt2", layers=2, hidden=32, tie_word_embeddings=False)
    teacher.lm_head.weight.data *= 50  # a teacher with strong preferences, so its likelihood can rise
    return teacher


def test_policy_gradient_training_raises_the_teachers_likelihood_of_student_samples(tiny, tokenizer_for, tmp_path):
    teacher = sharp_teacher(tiny)
    student = create_student(teacher, num_layers=2, hidden_dim=16)  # fresh, far from the teacher
    trainer = trainer_for(
        tiny,
        tokenizer_for,
        tmp_path,
        teacher=teacher,
        student=student,
        max_steps=40,
        learning_rate=1e-2,
        ce_weight=0.0,
        kd_weight=0.0,
        policy_gradient_weight=1.0,
        pg_max_new_tokens=12,
    )
    assert type(trainer) is DistillationTrainer  # the same trainer as every other run
    trainer.train()
    likelihood = [entry["teacher_log_likelihood"] for entry in trainer.state.log_history if "teacher_log_likelihood" in entry]
    assert len(likelihood) == 40
    first, last = sum(likelihood[:5]) / 5, sum(likelihood[-5:]) / 5
    assert last > first + 2.0, (first, last)


@pytest.mark.parametrize("penalty", ["token_frequency_penalty", "diversity_penalty", "entropy_penalty"])
def test_switching_a_penalty_on_adds_its_weighted_value_to_the_loss(penalty, tiny, tokenizer_for, tmp_path):
    teacher = sharp_teacher(tiny)
    losses = {}
    for weight in (0.0, 0.5):
        student = create_student(teacher, num_layers=2)
        trainer = trainer_for(
            tiny,
            tokenizer_for,
            tmp_path,
            teacher=teacher,
            student=student,
            ce_weight=0.5,
            kd_weight=0.5,
            policy_gradient_weight=1.0,
            pg_max_new_tokens=8,
            **{penalty: weight},
        )
        trainer.train()  # one step; sampling is seeded by the step, so both runs see the same samples
        losses[weight] = trainer.state.log_history[0]
    with_penalty, without = losses[0.5], losses[0.0]
    assert penalty in with_penalty and penalty not in without
    assert with_penalty[penalty] > 0
    assert with_penalty["loss"] == pytest.approx(without["loss"] + 0.5 * with_penalty[penalty], rel=1e-4, abs=1e-5)
    assert with_penalty["pg_loss"] == pytest.approx(without["pg_loss"], rel=1e-5, abs=1e-6)


def test_on_policy_batches_carry_the_students_own_completions(tiny, tokenizer_for, tmp_path):
    trainer = trainer_for(tiny, tokenizer_for, tmp_path, on_policy_fraction=1.0, on_policy_max_new_tokens=5)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    (replaced,), count = trainer.get_batch_samples(iter([batch]), 1, torch.device("cpu"))
    original_prompt = batch["input_ids"][0][batch["labels"][0] == -100]
    new_prompt = replaced["input_ids"][0][replaced["labels"][0] == -100]
    assert new_prompt[: len(original_prompt)].tolist() == original_prompt.tolist()
    completion = replaced["labels"][0][replaced["labels"][0] != -100]
    assert 0 < len(completion) <= 5 and count.item() == int((replaced["labels"][:, 1:] != -100).sum())
    trainer = trainer_for(tiny, tokenizer_for, tmp_path, on_policy_fraction=1.0, on_policy_max_new_tokens=5)
    trainer.train()
    assert trainer.state.log_history[0]["on_policy_batches"] == 1.0 and trainer.state.log_history[0]["kd_loss"] > 0


def test_sampling_methods_refuse_other_tasks_and_missing_parts(tiny, tokenizer_for, tmp_path):
    with pytest.raises(InputError, match="penalty, .* apply to policy-gradient samples|apply to policy-gradient samples"):
        DistillationTrainingArguments(output_dir=str(tmp_path), entropy_penalty=0.1)
    with pytest.raises(InputError, match="on_policy_fraction must be in"):
        DistillationTrainingArguments(output_dir=str(tmp_path), on_policy_fraction=1.5)
    tokenizer = tokenizer_for("bert")
    teacher = tiny("bert", layers=2)
    args = DistillationTrainingArguments(output_dir=str(tmp_path), policy_gradient_weight=1.0, report_to=[], use_cpu=True)
    with pytest.raises(InputError, match="sample continuations of causal LMs; this is a classification run"):
        DistillationTrainer(
            model=create_student(teacher, num_encoder_layers=1), teacher_model=teacher, args=args, processing_class=tokenizer
        )


# ---- seeding, step-wide policy-gradient counts, the missing-teacher message ---------------------------------------


def test_sampling_seeds_differ_across_steps_kinds_of_draw_and_micro_batches():
    for run_seed in (0, 42, 2**31 + 5):
        for slots in (1, 4, 7):
            seeds = [
                sampling_seed(run_seed, step, stream, index, slots)
                for step in range(300)
                for stream in SAMPLING_STREAMS
                for index in range(slots)
            ]
            assert len(set(seeds)) == len(seeds), (run_seed, slots)
            assert all(0 <= seed < 2**32 for seed in seeds)  # a CPU generator keeps only 32 bits
    assert sampling_seed(0, 5, "policy_gradient", 1, 4) != sampling_seed(1, 5, "policy_gradient", 1, 4)
    with pytest.raises(ValueError, match=r"outside 0\.\.3"):
        sampling_seed(0, 0, "policy_gradient", 4, 4)


def eos_prone(student, eos_token_id, boost=5.0):
    """The student with its EOS logit raised, so that sampled continuations end at different lengths."""

    def raise_eos(module, args, output):
        output = output.clone()
        output[..., eos_token_id] += boost
        return output

    student.lm_head.register_forward_hook(raise_eos)
    return student


@pytest.mark.parametrize("processes", [1, 2])
def test_policy_gradient_samples_counts_and_advantages_cover_the_whole_step(
    processes, tiny, tokenizer_for, tmp_path, monkeypatch
):
    """Every micro-batch is sampled up front from its own stream (seed, step, index); tokens, sequences and the
    moments of the returns are the step's, checked against a recomputation from scratch. With processes=2 a fake
    gather adds another process's sums (10 tokens, 3 sequences, returns summing to 5, squared deviations to 7)."""
    tokenizer = tokenizer_for("gpt2")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    teacher = sharp_teacher(tiny)
    student = eos_prone(create_student(teacher, num_layers=2, hidden_dim=16), eos)
    trainer = trainer_for(
        tiny,
        tokenizer_for,
        tmp_path,
        teacher=teacher,
        student=student,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        ce_weight=0.0,
        kd_weight=0.0,
        policy_gradient_weight=1.0,
        pg_max_new_tokens=8,
        seed=7,
    )
    trainer.state.global_step = 3
    batches = [trainer.data_collator([trainer.train_dataset[i] for i in (2 * k, 2 * k + 1)]) for k in range(4)]
    if processes == 1:
        prepared, _ = trainer.get_batch_samples(iter(batches), 4, torch.device("cpu"))
        step = [batch[trainer_module.PG_SAMPLES] for batch in prepared]
        assert [batch["input_ids"].tolist() for batch in prepared] == [batch["input_ids"].tolist() for batch in batches]
    else:
        others = {3: torch.tensor([[10.0, 3.0, 5.0]]), 1: torch.tensor([[7.0]])}
        monkeypatch.setattr(trainer.accelerator, "gather", lambda sums: torch.cat([sums, others[sums.shape[1]]]))
        monkeypatch.setattr(type(trainer.accelerator), "num_processes", property(lambda self: 2))
        student_model = trainer.accelerator.unwrap_model(trainer.model)
        step = trainer.policy.policy_gradient_samples(batches, student_model, trainer._clock(), across_processes=True)

    def redraw(batch, global_step, index):
        prompt_ids, prompt_mask = prompts_of(batch["input_ids"], batch["labels"], pad)
        generator = torch.Generator().manual_seed(sampling_seed(7, global_step, "policy_gradient", index, 4))
        return sample_continuations(
            student.eval(), teacher, prompt_ids, prompt_mask, max_new_tokens=8, temperature=1.0, teacher_mix=0.2,
            eos_token_id=eos, pad_token_id=pad, generator=generator,
        ).sequences  # fmt: skip

    for index, (batch, drawn) in enumerate(zip(batches, step, strict=True)):
        assert torch.equal(drawn.samples.sequences, redraw(batch, 3, index))
    first = step[0].samples.sequences
    assert not torch.equal(first, redraw(batches[0], 3, 1)), "two micro-batches of a step share a stream"
    assert not torch.equal(first, redraw(batches[0], 4, 0)), "one micro-batch in two steps shares a stream"

    masks = [drawn.samples.response_mask.double() for drawn in step]
    assert len({mask.shape[1] for mask in masks}) > 1, "the micro-batches' completions should differ in length"
    returns = [future_returns(drawn.samples.teacher_log_probs.double(), mask, 0.95) for drawn, mask in zip(step, masks)]
    flat = torch.cat([ret[mask.bool()] for ret, mask in zip(returns, masks)])
    tokens = sum(float(mask.sum()) for mask in masks)
    sequences = sum(float((mask.sum(1) > 0).sum()) for mask in masks)
    if processes == 1:
        mean, variance = flat.mean(), flat.var(unbiased=False)
    else:
        tokens, sequences = tokens + 10, sequences + 3
        mean = (flat.sum() + 5) / tokens
        variance = (((flat - mean) ** 2).sum() + 7) / tokens
    for drawn, ret, mask in zip(step, returns, masks):
        assert drawn.token_count.item() == pytest.approx(tokens / processes)
        assert drawn.sequence_count.item() == pytest.approx(sequences / processes)
        expected = (ret - mean) / (variance.sqrt() + 1e-6) * mask
        torch.testing.assert_close(drawn.advantages.double(), expected, atol=1e-5, rtol=1e-5)
    per_micro_batch = normalize(returns[0], masks[0])  # what normalizing each micro-batch on its own gives
    assert not torch.allclose(per_micro_batch, step[0].advantages.double(), atol=1e-3)


def fixed_continuations(widths: list):
    """A stand-in for ``sample_continuations``: each prompt's continuation depends on the prompt alone (its length
    too), and is scored by the real models, so a prompt gets the same sample in whichever micro-batch it lands."""

    def sample(student, teacher, prompt_ids, prompt_mask, *, max_new_tokens, temperature, teacher_mix, eos_token_id, **_):
        rows = []
        for ids, mask in zip(prompt_ids, prompt_mask):
            key = int(ids[mask.bool()].sum())
            rows.append([(key * 31 + 17 * t) % 500 + 5 for t in range(key % max_new_tokens)] + [eos_token_id])
        width = max(len(row) for row in rows)
        widths.append(width)
        continuation = torch.zeros(len(rows), width, dtype=prompt_ids.dtype)
        alive = torch.zeros_like(continuation)
        for index, row in enumerate(rows):
            continuation[index, : len(row)] = torch.tensor(row)
            alive[index, : len(row)] = 1
        scored = Samples(
            torch.cat([prompt_ids, continuation], 1), torch.cat([prompt_mask, alive], 1), alive, None, None, prompt_ids.shape[1]
        )
        with torch.no_grad():
            teacher_logits = response_logits(teacher, scored).float()
            student_logits = response_logits(student, scored).float()
        mixture = teacher_mix * torch.softmax(teacher_logits / temperature, -1)
        mixture = mixture + (1 - teacher_mix) * torch.softmax(student_logits / temperature, -1)
        picked = lambda rows: rows.gather(-1, continuation[..., None]).squeeze(-1)
        scored.teacher_step_log_probs = torch.log_softmax(teacher_logits, -1)
        scored.teacher_log_probs = picked(scored.teacher_step_log_probs)
        scored.sampling_log_probs = picked(mixture).clamp_min(1e-30).log()
        return scored

    return sample


def test_policy_gradient_accumulation_equals_the_full_batch(tiny, tokenizer_for, tmp_path, monkeypatch):
    """Batch 8 vs. 4 accumulated micro-batches of 2 with the same samples per prompt, of different lengths in each
    micro-batch: the same policy-gradient loss, penalties, logged likelihood and gradients (to 1e-5)."""
    widths = []
    monkeypatch.setattr(policy_module, "sample_continuations", fixed_continuations(widths))
    teacher = sharp_teacher(tiny)
    student = create_student(teacher, num_layers=2, hidden_dim=16)
    results = []
    for batch_size, accumulation in ((8, 1), (2, 4)):
        recorder = GradientRecorder()
        trainer = trainer_for(
            tiny,
            tokenizer_for,
            tmp_path / str(batch_size),
            teacher=teacher,
            student=copy.deepcopy(student),
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            ce_weight=0.0,
            kd_weight=0.0,
            policy_gradient_weight=1.0,
            pg_max_new_tokens=8,
            token_frequency_penalty=0.1,
            diversity_penalty=0.1,
            entropy_penalty=0.1,
        )
        trainer.add_callback(recorder)
        trainer.train()
        results.append((trainer.state.log_history[0], recorder.gradients[0]))
    assert len(set(widths[1:])) > 1, f"the micro-batches' completions should differ in length: {widths}"
    (full_logs, full_grads), (accumulated_logs, accumulated_grads) = results
    names = ("loss", "pg_loss", "token_frequency_penalty", "diversity_penalty", "entropy_penalty", "teacher_log_likelihood")
    for name in names:
        assert accumulated_logs[name] == pytest.approx(full_logs[name], abs=1e-5, rel=1e-5), name
    assert full_grads.keys() == accumulated_grads.keys()
    for name, gradient in full_grads.items():
        torch.testing.assert_close(accumulated_grads[name], gradient, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    "settings,message",
    [
        (
            dict(ce_weight=0.5, kd_weight=0.0, policy_gradient_weight=0.5),
            "teacher_model is required: policy_gradient_weight = 0.5 needs the teacher; pass teacher_model= or set it to 0",
        ),
        (
            dict(kd_weight=0.5, hidden_weight=1.0, norm_weight=2.0),
            "teacher_model is required: kd_weight = 0.5, hidden_weight = 1 and norm_weight = 2 need the teacher; "
            "pass teacher_model= or set them to 0",
        ),
    ],
)
def test_a_missing_teacher_is_reported_with_only_the_settings_that_need_it(settings, message, tiny, tokenizer_for, tmp_path):
    args = DistillationTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **settings)
    with pytest.raises(InputError) as raised:
        DistillationTrainer(model=tiny("gpt2", layers=2, hidden=16), args=args, processing_class=tokenizer_for("gpt2"))
    assert str(raised.value) == message
