"""Where each supported model family keeps its layers, and what its outputs call them.

One table serves both student construction (which layer list to copy, which config field counts it) and the
trainer (which output holds a stack's hidden states and attentions, which modules project a layer's queries, keys
and values). Adding a family is a row here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import InputError


@dataclass(frozen=True)
class Stack:
    """One stack of repeated layers inside a model.

    ``role`` names the user-facing arguments: ``encoder`` -> ``num_encoder_layers`` / ``encoder_layer_map``,
    ``decoder`` -> ``num_decoder_layers`` / ``decoder_layer_map``, ``layers`` -> ``num_layers`` / ``layer_map``.
    """

    role: str
    layers_path: str  # dotted suffix of the nn.ModuleList, e.g. "encoder.block"
    num_layers_attr: str  # config field that counts the layers
    hidden_states_key: str  # output field with the stack's hidden states (embeddings first)
    attentions_key: str  # output field with the stack's self-attention maps
    cross_attentions_key: str | None = None  # output field with cross-attention maps (decoders of seq2seq models)
    # Inside one layer: the self-attention's query, key and value projections, or one fused projection whose output
    # is the three side by side (GPT-2's c_attn).
    self_attention_projections: tuple[str, ...] = ()
    head_count_attr: str = ""  # config field with the stack's self-attention head count
    causal: bool = False  # self-attention sees no later position (decoders, causal LMs)

    @property
    def count_argument(self) -> str:
        return "num_layers" if self.role == "layers" else f"num_{self.role}_layers"

    @property
    def map_argument(self) -> str:
        return "layer_map" if self.role == "layers" else f"{self.role}_layer_map"


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    stacks: tuple[Stack, ...]
    hidden_size_attr: str
    ffn_size_attrs: tuple[str, ...]  # feed-forward widths, scaled with the hidden size for fresh students
    head_count_attrs: tuple[str, ...]  # attention head counts (recomputed to keep the head size)
    head_size_attr: str | None = None  # T5 stores the head size itself (d_kv)


_SEQ2SEQ_ENCODER = dict(hidden_states_key="encoder_hidden_states", attentions_key="encoder_attentions")
_SEQ2SEQ_DECODER = dict(
    hidden_states_key="decoder_hidden_states",
    attentions_key="decoder_attentions",
    cross_attentions_key="cross_attentions",
    causal=True,
)
_T5_SELF_ATTENTION = dict(
    self_attention_projections=("layer.0.SelfAttention.q", "layer.0.SelfAttention.k", "layer.0.SelfAttention.v"),
    head_count_attr="num_heads",
)
_BART_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_BART_ENCODER_ATTENTION = dict(self_attention_projections=_BART_PROJECTIONS, head_count_attr="encoder_attention_heads")
_BART_DECODER_ATTENTION = dict(self_attention_projections=_BART_PROJECTIONS, head_count_attr="decoder_attention_heads")
_BERT_SELF_ATTENTION = dict(
    self_attention_projections=("attention.self.query", "attention.self.key", "attention.self.value"),
    head_count_attr="num_attention_heads",
)
_DISTILBERT_SELF_ATTENTION = dict(
    self_attention_projections=("attention.q_lin", "attention.k_lin", "attention.v_lin"), head_count_attr="n_heads"
)
_GPT2_SELF_ATTENTION = dict(self_attention_projections=("attn.c_attn",), head_count_attr="n_head", causal=True)
_SINGLE_STACK = dict(hidden_states_key="hidden_states", attentions_key="attentions")

FAMILIES: tuple[Family, ...] = (
    Family(
        name="t5",
        model_types=("t5", "mt5", "umt5"),
        stacks=(
            Stack("encoder", "encoder.block", "num_layers", **_SEQ2SEQ_ENCODER, **_T5_SELF_ATTENTION),
            Stack("decoder", "decoder.block", "num_decoder_layers", **_SEQ2SEQ_DECODER, **_T5_SELF_ATTENTION),
        ),
        hidden_size_attr="d_model",
        ffn_size_attrs=("d_ff",),
        head_count_attrs=("num_heads",),
        head_size_attr="d_kv",
    ),
    Family(
        name="bart",
        model_types=("bart", "mbart", "marian", "pegasus", "blenderbot", "blenderbot-small", "plbart"),
        stacks=(
            Stack("encoder", "encoder.layers", "encoder_layers", **_SEQ2SEQ_ENCODER, **_BART_ENCODER_ATTENTION),
            Stack("decoder", "decoder.layers", "decoder_layers", **_SEQ2SEQ_DECODER, **_BART_DECODER_ATTENTION),
        ),
        hidden_size_attr="d_model",
        ffn_size_attrs=("encoder_ffn_dim", "decoder_ffn_dim"),
        head_count_attrs=("encoder_attention_heads", "decoder_attention_heads"),
    ),
    Family(
        name="bert",
        model_types=("bert", "roberta", "xlm-roberta", "camembert", "electra"),
        stacks=(Stack("encoder", "encoder.layer", "num_hidden_layers", **_SINGLE_STACK, **_BERT_SELF_ATTENTION),),
        hidden_size_attr="hidden_size",
        ffn_size_attrs=("intermediate_size",),
        head_count_attrs=("num_attention_heads",),
    ),
    Family(
        name="distilbert",
        model_types=("distilbert",),
        stacks=(Stack("encoder", "transformer.layer", "n_layers", **_SINGLE_STACK, **_DISTILBERT_SELF_ATTENTION),),
        hidden_size_attr="dim",
        ffn_size_attrs=("hidden_dim",),
        head_count_attrs=("n_heads",),
    ),
    Family(
        name="gpt2",
        model_types=("gpt2",),
        stacks=(Stack("layers", "transformer.h", "n_layer", **_SINGLE_STACK, **_GPT2_SELF_ATTENTION),),
        hidden_size_attr="n_embd",
        ffn_size_attrs=("n_inner",),
        head_count_attrs=("n_head",),
    ),
)


def supported_model_types() -> list[str]:
    return sorted(model_type for family in FAMILIES for model_type in family.model_types)


def family_of(config) -> Family:
    """The family of a model config, or a ValueError naming the supported model types."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise InputError(
        f"model type {model_type!r} is not supported for layer copying or layer mapping; supported: "
        f"{', '.join(supported_model_types())}"
    )


def find_layer_list(model: nn.Module, stack: Stack) -> nn.ModuleList:
    """The ``nn.ModuleList`` of a stack, found by its dotted-path suffix (works for every head class)."""
    matches = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and (name == stack.layers_path or name.endswith("." + stack.layers_path))
    ]
    if len(matches) != 1:
        raise InputError(f"{type(model).__name__}: expected one layer list named '*{stack.layers_path}', found {len(matches)}")
    return matches[0]


def layer_list_prefix(model: nn.Module, stack: Stack) -> str:
    """The full dotted name of a stack's layer list, as it appears in ``state_dict`` keys."""
    target = find_layer_list(model, stack)
    for name, module in model.named_modules():
        if module is target:
            return name
    raise AssertionError("unreachable: find_layer_list returned a module not in the model")


def self_attention_projections(model: nn.Module, stack: Stack, layer: int) -> tuple[nn.Module, ...]:
    """The query, key and value projections of one layer's self-attention (one module where they are fused)."""
    layer_module = find_layer_list(model, stack)[layer]
    try:
        if not stack.self_attention_projections:
            raise AttributeError
        return tuple(layer_module.get_submodule(path) for path in stack.self_attention_projections)
    except AttributeError:
        listed = ", ".join(stack.self_attention_projections) or "none are listed in families.py"
        raise InputError(
            f"{type(model).__name__}: no self-attention projections found in layer {layer} of the {stack.role} stack "
            f"({listed}); set relation_weight to 0"
        ) from None


def num_layers(config, stack: Stack) -> int:
    value = getattr(config, stack.num_layers_attr, None)
    if value is None and stack.num_layers_attr == "num_decoder_layers":  # T5 leaves it None when equal
        value = config.num_layers
    return int(value)
