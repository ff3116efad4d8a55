"""Notebook-style distillation: a T5 teacher into a 2-layer student with logit, hidden-state and attention terms.

Runs offline in about a minute on a CPU: the teacher here is a tiny T5 built from a config and the data are the
Python standard library's docstrings. With a real teacher, replace the two `tiny` lines with
`AutoModelForSeq2SeqLM.from_pretrained("t5-small")` and `AutoTokenizer.from_pretrained("t5-small")`.

    python examples/distill_t5_notebook.py [output_dir]
"""

import sys
import tempfile

from datasets import Dataset
from transformers import DataCollatorForSeq2Seq

from seq2seq_distill import Seq2SeqDistillationTrainer, Seq2SeqDistillationTrainingArguments, create_student
from seq2seq_distill.stdlib_corpus import build_summarization_corpus
from seq2seq_distill.tiny import tiny_model, train_tokenizer

output_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="distill-t5-")
rows = build_summarization_corpus(max_examples=256)
tokenizer = train_tokenizer([row["document"] + "\n" + row["summary"] for row in rows], vocab_size=800)
teacher = tiny_model("t5", len(tokenizer), hidden=64, layers=4)
student = create_student(teacher, num_encoder_layers=2, num_decoder_layers=2)


def tokenize(batch):
    features = tokenizer(batch["document"], max_length=96, truncation=True)
    features["labels"] = tokenizer(text_target=batch["summary"], max_length=24, truncation=True)["input_ids"]
    return features


train_dataset = Dataset.from_list(rows).map(tokenize, batched=True, remove_columns=["id", "document", "summary"])
args = Seq2SeqDistillationTrainingArguments(
    output_dir=output_dir,
    ce_weight=0.5,
    kd_weight=0.5,
    temperature=2.0,  # logits
    hidden_weight=1.0,
    attention_weight=1.0,  # hidden states and attention maps of mapped layers
    max_steps=20,
    per_device_train_batch_size=16,
    learning_rate=1e-3,
    logging_steps=5,
    report_to=[],
    use_cpu=True,
)
trainer = Seq2SeqDistillationTrainer(
    model=student,
    teacher_model=teacher,
    args=args,
    train_dataset=train_dataset,
    data_collator=DataCollatorForSeq2Seq(tokenizer, model=student),
    processing_class=tokenizer,
)
trainer.train()
trainer.save_model()
trainer.save_state()
print(f"distilled student saved to {output_dir}")
