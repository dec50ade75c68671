"""One byte-level BPE tokenizer for the whole world (English + Japanese), in Hugging Face format.

Japanese pre-tokens are script runs; digits are split one by one (arithmetic is learnt digit-wise); byte-level BPE round-trips any text
exactly. `<image>` is reserved from the start so the VLM and every text model share one vocabulary.
"""

from __future__ import annotations

from typing import Iterable

BOS, EOS, PAD, UNK, IMAGE = "<s>", "</s>", "<pad>", "<unk>", "<image>"
SPECIALS = [PAD, BOS, EOS, UNK, IMAGE]
JA_RUNS = r"\p{Han}+|\p{Hiragana}+|[\p{Katakana}ー]+|[、。「」？！（）・]"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """Train the world's tokenizer on `texts`; returns a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    from tokenizers import Regex
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # Japanese: a token never spans two scripts (kanji / hiragana / katakana runs stay apart)
        pre_tokenizers.Split(Regex(JA_RUNS), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, tok.token_to_id(BOS))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, additional_special_tokens=[IMAGE])
    fast.padding_side = "left"          # batched generation
    fast.model_max_length = 512
    return fast
