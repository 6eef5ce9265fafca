"""The classifier: a BERT-family encoder, a sentence vector (pooling), Dropout and one Linear layer.

As seed 000 describes: by default the last layer's hidden state of the first token ([CLS]) is the sentence
vector. `pooling` picks another summary: BERT's pooler (dense + tanh over [CLS], what BertForSequenceClassification
uses), the mean or the max over real tokens, or cls_last4 (the [CLS] vectors of the last four layers side by side,
the choice seed 000's comments discuss). The forward returns logits; the loss lives in the training loop.
"""
import pickle

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from config import InputError
from fast_encoder import FastDropout, first_token_only


class BertClassifier(nn.Module):
    """encoder -> sentence vector (`pooling`) -> dropout -> linear head -> logits; sizes from the encoder's config."""

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
        self.dropout = FastDropout(dropout_p)  # nn.Dropout's result, with a cheaper mask on CPU
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
