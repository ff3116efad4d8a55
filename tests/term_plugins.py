"""A user's own distillation term, registered from outside the package (imported by --term_modules in the tests)."""

import torch

from seq2seq_distill import TermInputs, register_term

CALLS = []


def last_hidden(outputs) -> torch.Tensor:
    """Encoder-decoders: the encoder's last layer; encoders and causal LMs: the last hidden states."""
    state = getattr(outputs, "encoder_last_hidden_state", None)
    return state if state is not None else outputs.hidden_states[-1]


def hidden_cosine(step: TermInputs) -> torch.Tensor:
    """1 - cosine of the student's and the teacher's last input-side states, per token: summed over the batch's
    input tokens and divided by the step's count of them, so gradient accumulation stays exact."""
    CALLS.append(step.training)
    mask = step.positions.source_mask
    student, teacher = last_hidden(step.student_outputs)[mask], last_hidden(step.teacher_outputs)[mask]
    per_token = 1 - torch.nn.functional.cosine_similarity(student, teacher, dim=-1)
    return per_token.sum() / step.positions.source_count


register_term("hidden_cosine_loss", hidden_cosine, needs={"teacher", "hidden_states"})
