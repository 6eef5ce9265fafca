"""CPU speed tricks that reach into a Hugging Face encoder, each proven equal to the plain forward by a test.

Measured on the 2-core CPU (bench/profile_train.py; tables in bench/README.md, design in docs/cpu_speed.md):
- Dropout masks from 15 random bits per element (`dropout_mask`, `FastDropout`): torch's CPU dropout draws one
  Bernoulli sample per element and took 15% of a training step; this costs a seventh of that. Training only:
  evaluation is untouched. Tests: test_fast_dropout_* (rate, unbiased scale, gradient mask, seeding).
- Attention dropout with that mask (`sdpa_fast_dropout`, registered as a transformers attention function): CPU
  SDPA with dropout falls back to the written-out softmax(q k^T) v with the slow mask. Evaluation, and causal
  attention (GPT-2, Llama), call SDPA itself. Tests: test_encoder_with_fast_dropout_computes_what_sdpa_does,
  test_attention_dropout_drops_weights_*, test_causal_attention_stays_causal_in_training (test_families.py).
- Self-attention input cast to bf16 once (`cast_input_once`), not in each of query, key and value: 4% of a
  step under autocast. Test: test_self_attention_input_is_cast_once_under_autocast.
- The last layer computes the first token only (`first_token_only`) when the pooling reads nothing else (cls,
  pooler, cls_last4): 5/6 of that layer's work, about 14% of a 6-layer encoder's. Train and predict both use it.
  Test: test_last_layer_computes_only_the_first_token_and_gives_the_full_layers_vectors_and_gradients
  (vectors and gradients equal within 1e-5 for sdpa, eager and the fast attention).
Each trick checks that the encoder has the parts it needs and leaves any other encoder as it is.
Tests named here are in tests/test_speed_parts.py unless another file is given.
"""
import functools

import torch
from torch import nn


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
    # a causal model may hand over no mask and let SDPA apply causality itself (is_causal): the written-out path
    # would attend to later tokens, so causal attention keeps SDPA and torch's dropout
    if not module.training or dropout == 0.0 or query.device.type != "cpu" or getattr(module, "is_causal", False):
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
