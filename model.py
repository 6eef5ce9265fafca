"""The classifier: a BERT-family encoder, a sentence vector (pooling), Dropout and one Linear layer.

As seed 000 describes: by default the last layer's hidden state of the first token ([CLS]) is the sentence
vector. `pooling` picks another summary: BERT's pooler (dense + tanh over [CLS], what BertForSequenceClassification
uses), the mean or the max over real tokens, or cls_last4 (the [CLS] vectors of the last four layers side by side,
the choice seed 000's comments discuss). The forward returns logits; the loss lives in the training loop.
"""
import functools
import pickle

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from config import InputError


def dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A dropout mask for x, already scaled by 1/(1-p), from 15 random bits per element.

    On CPU, torch's own dropout draws each element's Bernoulli sample on its own and took 15% of a training step
    here; one 64-bit draw per four elements costs a seventh of that. The drop probability is p rounded to a
    multiple of 2^-15 (0.1 -> 0.100006), and the scale uses that rounded value, so the output stays unbiased."""
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()  # [0, 2^63): 63 random bits
    lanes = bits.view(torch.int16)[:n].view(x.shape) & 0x7FFF  # the top lane's sign bit is always 0: keep 15 bits
    threshold = round(p * 32768)
    return (lanes >= threshold).to(x.dtype).mul_(32768 / (32768 - threshold))


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout with the cheaper mask on CPU; elsewhere (CUDA's fused kernel is fast) torch's own."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, True)
    return x * dropout_mask(x, p)


class FastDropout(nn.Dropout):
    """nn.Dropout (same p, same state dict: none) computed by fast_dropout."""
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


FAST_ATTENTION = "sdpa_fast_dropout"


def sdpa_fast_dropout(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Transformers' attention-function signature: SDPA when no dropout is asked for (evaluation), else the same
    softmax(q k^T * scaling + mask) v written out with fast_dropout on the weights. CPU SDPA falls back to this
    very computation when dropout_p > 0, with torch's slow Bernoulli draw for the mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if not module.training or dropout == 0.0 or query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (batch, heads, q, k)
    if attention_mask is not None:  # the boolean SDPA mask (True = attend) or an additive float one
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    # under autocast the scores are bf16 and so is the softmax (as in transformers' eager attention); the kernel
    # accumulates in float32 either way
    weights = fast_dropout(torch.softmax(scores, dim=-1), dropout, True)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """x in the autocast dtype when autocast is on and x is float32 (the cast every Linear would make), else x."""
    if x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
        return x.to(torch.get_autocast_dtype(x.device.type))
    return x


def cast_input_once(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of a self-attention block: under autocast, cast its float32 input to the autocast dtype
    once, instead of once in each of the query, key and value layers (and their three casts back in backward).
    LayerNorm's output, the block's input, is float32 under CPU autocast; these casts were 4% of a step."""
    if args and isinstance(args[0], torch.Tensor):
        return (autocast_input(args[0]), *args[1:]), kwargs
    return None


def first_token_layer_forward(layer: nn.Module, hidden_states: torch.Tensor, attention_mask=None, *args, **kwargs):
    """A BERT layer's forward computed for the first token only: its output is (batch, 1, hidden).

    Keys and values still come from every token, so the first token's vector is the one the full layer gives;
    what is skipped is every other token's query, attention, output projection and feed-forward block, which
    nothing reads when the sentence vector is [CLS] (cls, pooler, cls_last4). In the last of 6 layers that is 5/6
    of the layer's work, about 14% of the encoder's."""
    from transformers.models.bert.modeling_bert import eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    attention = layer.attention.self
    batch, length, _ = hidden_states.shape
    head_size = attention.attention_head_size
    first = hidden_states[:, :1]
    cast = autocast_input(hidden_states)
    query = attention.query(cast[:, :1]).view(batch, 1, -1, head_size).transpose(1, 2)
    key = attention.key(cast).view(batch, length, -1, head_size).transpose(1, 2)
    value = attention.value(cast).view(batch, length, -1, head_size).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.size(-2) > 1:
        attention_mask = attention_mask[:, :, :1]  # the first query's row: (batch, 1, 1, length)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
    context, _ = attend(attention, query, key, value, attention_mask, scaling=attention.scaling,
                        dropout=attention.dropout.p if attention.training else 0.0)
    attended = layer.attention.output(context.reshape(batch, 1, -1), first)
    return layer.output(layer.intermediate(attended), attended)


def first_token_only(encoder: nn.Module) -> bool:
    """Make the encoder's last layer compute the first token only (first_token_layer_forward), where the encoder
    is a BERT-style self-attention stack (BERT, RoBERTa, ELECTRA, ...) with one attention implementation that
    takes a 4-D or no mask. Returns whether it did; other encoders are left as they are."""
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    config = getattr(encoder, "config", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0 or config is None:
        return False
    last = layers[-1]
    attention = getattr(getattr(last, "attention", None), "self", None)
    parts_present = all(isinstance(getattr(attention, n, None), nn.Linear) for n in ("query", "key", "value")) and \
        all(hasattr(last, n) for n in ("intermediate", "output")) and hasattr(attention, "attention_head_size")
    plain_encoder = not getattr(config, "is_decoder", False) and not getattr(config, "add_cross_attention", False) \
        and not getattr(config, "chunk_size_feed_forward", 0)
    if not (parts_present and plain_encoder
            and getattr(config, "_attn_implementation", None) in ("sdpa", "eager", FAST_ATTENTION)):
        return False
    last.forward = functools.partial(first_token_layer_forward, last)
    return True


def fast_training_encoder(encoder: nn.Module) -> nn.Module:
    """Swap the encoder's dropout layers for FastDropout and, where it uses SDPA, its attention for
    sdpa_fast_dropout; self-attention blocks cast their input once (cast_input_once). Training only changes
    which random numbers are drawn and where bf16 rounding happens; evaluation runs the same kernels."""
    for block in encoder.modules():
        if all(isinstance(getattr(block, name, None), nn.Linear) for name in ("query", "key", "value")):
            block.register_forward_pre_hook(cast_input_once, with_kwargs=True)
    for parent in encoder.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace))
    config = getattr(encoder, "config", None)
    if getattr(config, "_attn_implementation", None) == "sdpa":
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
        AttentionInterface.register(FAST_ATTENTION, sdpa_fast_dropout)
        ALL_MASK_ATTENTION_FUNCTIONS.register(FAST_ATTENTION, sdpa_mask)  # the masks SDPA gets
        try:
            encoder.set_attn_implementation(FAST_ATTENTION)
        except (ValueError, AttributeError, KeyError):
            pass  # a model that cannot take a registered attention function keeps SDPA and torch's dropout
    return encoder


class BertClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, n_classes: int, pooling: str = "cls", dropout_p: float = 0.1):
        super().__init__()
        if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
            raise InputError(f"--pooling pooler: the encoder {type(encoder).__name__} has no pooler layer "
                             "(use cls, mean, max or cls_last4)")
        n_layers = getattr(encoder.config, "num_hidden_layers", 0)
        if pooling == "cls_last4" and n_layers < 4:
            raise InputError(f"--pooling cls_last4: the encoder has {n_layers} layers, it needs at least 4")
        if pooling in ("cls", "pooler", "cls_last4"):
            first_token_only(encoder)  # these poolings read only [CLS] of the last layer
        self.encoder = encoder
        self.pooling = pooling
        hidden = encoder.config.hidden_size
        self.dropout = FastDropout(dropout_p)
        self.classifier = nn.Linear(hidden * 4 if pooling == "cls_last4" else hidden, n_classes)

    @property
    def n_features(self) -> int:
        return self.classifier.in_features

    def sentence_vector(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) token ids -> (batch, n_features) sentence vectors."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           output_hidden_states=self.pooling == "cls_last4")
        if self.pooling == "cls":
            return out.last_hidden_state[:, 0]
        if self.pooling == "pooler":
            return out.pooler_output
        if self.pooling == "cls_last4":
            return torch.cat([h[:, 0] for h in out.hidden_states[-4:]], dim=-1)
        mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)  # (batch, seq, 1)
        if self.pooling == "mean":
            return (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)
        # max: padding must never win, so it is pushed to the dtype's lowest value
        return out.last_hidden_state.masked_fill(mask == 0, torch.finfo(mask.dtype).min).max(1).values

    def forward(self, input_ids=None, attention_mask=None, features=None) -> torch.Tensor:
        """Logits (batch, n_classes), from tokens, or from cached sentence vectors (`--boost`)."""
        if features is None:
            features = self.sentence_vector(input_ids, attention_mask)
        return self.classifier(self.dropout(features))

    def freeze_encoder(self) -> None:
        for p in self.encoder.parameters():
            p.requires_grad_(False)


def _quiet_transformers():
    # The weight-loading progress bar and the "newly initialized weights" notices are noise in a CLI.
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_pretrained_encoder(name_or_path: str) -> nn.Module:
    """Pretrained weights from a hub id or a local folder; never runs code shipped with the checkpoint."""
    _quiet_transformers()
    try:
        return AutoModel.from_pretrained(name_or_path, trust_remote_code=False)
    except pickle.UnpicklingError as e:  # a .bin/.pt holding more than tensors: nothing of it was run
        raise InputError(f"--bert_name {name_or_path}: refused by torch's weights-only loader, the weights file "
                         f"holds objects that are not tensors ({str(e).splitlines()[-1].strip()[:200]})")
    except (OSError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--bert_name {name_or_path}: cannot load an encoder ({first_line})")


def load_tokenizer(name_or_path: str):
    """The checkpoint's fast tokenizer, from a hub id or a local folder."""
    from transformers import AutoTokenizer
    _quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--bert_name {name_or_path}: cannot load its tokenizer ({first_line})")


def encoder_from_config(folder: str) -> nn.Module:
    """An encoder with the architecture saved in `folder`/config.json and no weights yet (predict loads them)."""
    _quiet_transformers()
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    return AutoModel.from_config(config, trust_remote_code=False)


def max_supported_length(encoder: nn.Module, tokenizer) -> int:
    """The longest input the checkpoint accepts: its position table, or the tokenizer's limit if smaller."""
    positions = getattr(encoder.config, "max_position_embeddings", None) or 512
    if getattr(encoder.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        positions -= 2  # these offset positions by padding_idx + 1
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 100_000:
        return min(positions, tok_limit)
    return positions
