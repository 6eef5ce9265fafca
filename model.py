"""The classifier: a BERT-family encoder, a sentence vector (pooling), Dropout and one Linear layer.

As seed 000 describes: by default the last layer's hidden state of the first token ([CLS]) is the sentence
vector. `pooling` picks another summary: BERT's pooler (dense + tanh over [CLS], what BertForSequenceClassification
uses), the mean or the max over real tokens, cls_last4 (the [CLS] vectors of the last four layers side by side,
the choice seed 000's comments discuss), or last (the last real token). `auto` (the default) is cls for encoders
pretrained with a summary token in front and last for XLNet and causal decoders (GPT-2, Llama, Qwen), where only
the last token has read the whole text (`choose_pooling`). The forward returns logits; the loss lives in the loop.
"""
import inspect
import pickle

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from config import InputError
from fast_encoder import FastDropout, first_token_only
from long_text import pool_window_logits


# No position table (XLNet's relative positions) and no tokenizer limit: this cap keeps attention's memory, which
# grows with the square of the length, within a laptop's.
UNBOUNDED_LENGTH_CAP = 4096
FIRST_TOKEN_POOLINGS = ("cls", "pooler", "cls_last4")


def is_causal(encoder: nn.Module) -> bool:
    """Whether each token sees only the tokens before it (GPT-2, Llama, Qwen...): its attention says so."""
    if getattr(encoder.config, "is_decoder", False):
        return True
    return any(getattr(m, "is_causal", False) is True for m in encoder.modules())


def choose_pooling(encoder: nn.Module) -> tuple:
    """(pooling, why) that --pooling auto resolves to for this encoder."""
    kind = getattr(encoder.config, "model_type", type(encoder).__name__)
    if is_causal(encoder):
        return "last", f"{kind} is a causal decoder: only its last real token has read the whole text"
    if getattr(encoder.config, "summary_type", None) == "last":  # XLNet: its <cls> comes at the end
        return "last", f"{kind} puts its summary token at the end of the text"
    return "cls", f"{kind} is an encoder pretrained with a summary token in front"


def check_pooling(encoder: nn.Module, pooling: str) -> None:
    """Poolings the encoder cannot give: one line that says why and what to use instead."""
    kind = type(encoder).__name__
    if pooling in FIRST_TOKEN_POOLINGS and is_causal(encoder):
        raise InputError(f"--pooling {pooling}: {kind} is a causal decoder, its first token sees only itself and "
                         "would give every text the same vector; use --pooling auto (= last), last or mean")
    if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
        raise InputError(f"--pooling pooler: the encoder {kind} has no pooler layer (use auto, cls, mean, max, last "
                         "or cls_last4)")
    n_layers = getattr(encoder.config, "num_hidden_layers", 0)
    if pooling == "cls_last4" and n_layers < 4:
        raise InputError(f"--pooling cls_last4: the encoder has {n_layers} layers, it needs at least 4")


def takes_token_types(encoder: nn.Module, tokenizer) -> bool:
    """Whether the tokenizer gives segment ids (BERT's token type ids: which text of a pair a token is from) and
    the encoder reads them; RoBERTa and DistilBERT have none."""
    if "token_type_ids" not in getattr(tokenizer, "model_input_names", ()):
        return False
    if "token_type_ids" not in inspect.signature(encoder.forward).parameters:
        return False
    types = getattr(encoder.config, "type_vocab_size", None)
    return not isinstance(types, int) or types > 1  # XLNet has no table (None); a table of 1 holds only zeros


class BertClassifier(nn.Module):
    """encoder -> sentence vector (`pooling`) -> dropout -> linear head -> logits; sizes from the encoder's config.
    With `read_out` set (--label_groups), evaluation turns the head's logits into their groups'."""

    def __init__(self, encoder: nn.Module, n_classes: int, pooling: str = "cls", dropout_p: float = 0.1,
                 window_pool: str = "mean"):
        super().__init__()
        self.window_pool = window_pool  # --long_text windows: how a document's window logits become one
        if pooling == "auto":
            pooling = choose_pooling(encoder)[0]
        check_pooling(encoder, pooling)
        if pooling in FIRST_TOKEN_POOLINGS:
            first_token_only(encoder)  # these poolings read only [CLS] of the last layer
        self.encoder = encoder
        self.pooling = pooling
        hidden = encoder.config.hidden_size
        self.dropout = FastDropout(dropout_p)  # nn.Dropout's result, with a cheaper mask on CPU
        self.classifier = nn.Linear(hidden * 4 if pooling == "cls_last4" else hidden, n_classes)
        self.read_out = None  # --label_groups: label_groups.GroupReadOut, applied in evaluation only

    @property
    def n_features(self) -> int:
        return self.classifier.in_features

    @property
    def n_classes(self) -> int:
        """Outputs in evaluation: the head's classes, or their groups with --label_groups."""
        return self.read_out.n_groups if self.read_out is not None else self.classifier.out_features

    def takes_token_types(self, tokenizer) -> bool:
        return takes_token_types(self.encoder, tokenizer)

    def length_limit(self, tokenizer) -> tuple:
        return max_supported_length(self.encoder, tokenizer)

    def sentence_vector(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        token_type_ids: torch.Tensor = None) -> torch.Tensor:
        """(batch, seq) token ids -> (batch, n_features) sentence vectors; token_type_ids only for pairs."""
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           output_hidden_states=self.pooling == "cls_last4", **extra)
        if self.pooling == "last":
            return out.last_hidden_state[torch.arange(len(input_ids), device=input_ids.device),
                                         last_real_token(attention_mask)]
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

    def forward(self, input_ids=None, attention_mask=None, features=None, token_type_ids=None,
                window_counts=None) -> torch.Tensor:
        """Logits (batch, n_classes), from tokens, or from cached sentence vectors (`--boost`). With
        `window_counts` (--long_text windows) the rows are windows, and each document's `window_counts[d]`
        consecutive rows are pooled into its logits (batch = documents)."""
        if features is None:
            features = self.sentence_vector(input_ids, attention_mask, token_type_ids)
        logits = self.classifier(self.dropout(features))
        if window_counts is not None:
            logits = pool_window_logits(logits, window_counts, self.window_pool)
        if self.read_out is not None and not self.training:  # the loss learns the fine classes; the rest sees groups
            logits = self.read_out(logits)
        return logits

    def freeze_encoder(self) -> None:
        for p in self.encoder.parameters():
            p.requires_grad_(False)


def layer_stack(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer layers: its longest ModuleList named like one (BERT's encoder.layer, GPT-2's
    h, Llama's layers); None when there is none (ALBERT's shared layer)."""
    stacks = [m for name, m in encoder.named_modules() if isinstance(m, nn.ModuleList)
              and name.rsplit(".", 1)[-1] in ("layer", "layers", "h", "block", "blocks")]
    return max(stacks, key=len, default=None)


@torch.no_grad()
def reinit_top_layers(encoder: nn.Module, n: int, pooler: bool) -> None:
    """--reinit_layers: the top `n` layers (and the pooler) back to the checkpoint's own random initialisation
    (Zhang et al. 2021: the top layers of a pretrained encoder are specialised to its pretraining task)."""
    stack = layer_stack(encoder)
    if stack is None or not hasattr(encoder, "_init_weights"):
        raise InputError(f"--reinit_layers {n}: {type(encoder).__name__} has no stack of layers to re-initialise")
    if n > len(stack):
        raise InputError(f"--reinit_layers {n}: the encoder has {len(stack)} layers")
    modules = [m for layer in list(stack)[len(stack) - n:] for m in layer.modules()]
    if pooler and getattr(encoder, "pooler", None) is not None:
        modules += list(encoder.pooler.modules())
    for module in modules:
        for param in module.parameters(recurse=False):
            # from_pretrained marks loaded tensors as initialised, and transformers' init functions skip those
            param.__dict__.pop("_is_hf_initialized", None)
        encoder._init_weights(module)


def last_real_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch,) position of each row's last real token, whichever side the padding is on."""
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return (attention_mask.to(torch.long) * positions).argmax(1)


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


def max_supported_length(encoder: nn.Module, tokenizer) -> tuple:
    """(longest input the checkpoint accepts, why): its position table, the tokenizer's limit if smaller, or, with
    neither, UNBOUNDED_LENGTH_CAP."""
    positions = getattr(encoder.config, "max_position_embeddings", None)
    padding_idx = getattr(getattr(encoder, "embeddings", None), "padding_idx", None)
    if isinstance(positions, int) and positions > 0 and isinstance(padding_idx, int):
        positions -= padding_idx + 1  # RoBERTa, XLM-R, MPNet: real positions start after padding_idx
    tok_limit = getattr(tokenizer, "model_max_length", None)
    tok_limit = tok_limit if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000 else None
    if isinstance(positions, int) and positions > 0 and (tok_limit is None or positions <= tok_limit):
        return positions, "its position table"
    if tok_limit is not None:
        return tok_limit, "its tokenizer's limit"
    return UNBOUNDED_LENGTH_CAP, "no position table: capped to bound attention's memory"
